"""A local fake Slack: the Web API methods the SDK calls, and a Socket Mode websocket.

The bot's messages are kept as the user sees them (`messages`): posted, updated
(chat.update), or written as a stream (chat.startStream, chat.appendStream,
chat.stopStream); `posts` are those that are complete. Streams can be refused, as a
workspace without the feature refuses them.

users.info gives each user's display name and role (a workspace admin, owner or
member, as a test sets it) and can be made to fail or answer something malformed.

What the SDK sends to chat.postMessage and chat.update, what this server answers,
and every event envelope the tests deliver are checked against the published spec
subset vendored in bot/emulators/specs/slack; the stream methods, newer than that spec, against
the arguments slack_sdk's own methods take (STREAM_ARGUMENTS, compared with the SDK's
signatures by a test); mismatches are collected in `violations`, which the fixtures
assert empty. Nothing here is a mock of the SDK: the adapter's real slack_sdk /
slack_bolt code talks HTTP and websocket to this server.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import json
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bot.channels.live import CURSOR
from bot.channels.pacing import PacerBook
from bot.emulators.limits import over, retry_seconds

SPECS = Path(__file__).resolve().parent / "specs" / "slack"

BOT_TOKEN = "xoxb-1234-test-bot-token"
APP_TOKEN = "xapp-1-A0APP12345-test-app-token"
SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
BOT_USER_ID = "U0BOT12345"
BOT_ID = "B0BOT123456"
TEAM_ID = "T0TEAM1234"
APP_ID = "A0APP12345"
NOT_SET: Any = object()
MARKDOWN_LIMIT = 12_000  # characters of markdown_text in one stream call

# The stream methods' arguments as slack_sdk 3.48 takes them: (required, optional).
STREAM_ARGUMENTS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "chat.startStream": (
        frozenset({"channel", "thread_ts"}),
        frozenset({
            "markdown_text", "recipient_team_id", "recipient_user_id", "chunks",
            "task_display_mode", "icon_emoji", "icon_url", "username",
        }),
    ),
    "chat.appendStream": (frozenset({"channel", "ts"}), frozenset({"markdown_text", "chunks"})),
    "chat.stopStream": (
        frozenset({"channel", "ts"}),
        frozenset({"markdown_text", "blocks", "metadata", "chunks", "session_status"}),
    ),
}  # fmt: skip
WRITES = ("chat.postMessage", "chat.update", *STREAM_ARGUMENTS)  # calls that write a message
_ARRAYS = frozenset({"chunks", "blocks"})  # the stream arguments that are JSON arrays

_JSON_TYPES: dict[str, Callable[[Any], bool]] = {
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


class Spec:
    """The vendored spec subset, and a small JSON Schema check for the keywords it uses."""

    def __init__(self) -> None:
        self.web = json.loads((SPECS / "web_api_subset.json").read_text())
        self.event_wrapper = json.loads((SPECS / "event_wrapper_schema.json").read_text())

    def errors(self, schema: dict[str, Any], value: Any, at: str = "$") -> list[str]:
        if "$ref" in schema:
            return self.errors(self.web["definitions"][schema["$ref"].rsplit("/", 1)[1]], value, at)
        if isinstance(schema.get("items"), list) and not isinstance(value, list):
            return self._union_errors(schema["items"], value, at)  # the spec's "any of"
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind] if kind is not None else []
        if kinds and not any(_JSON_TYPES[k](value) for k in kinds):
            return [f"{at}: {value!r} is not of type {kind}"]
        found: list[str] = []
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{at}: {value!r} not in {schema['enum']}")
        if (
            isinstance(value, str)
            and "pattern" in schema
            and not re.search(schema["pattern"], value)
        ):
            found.append(f"{at}: {value!r} does not match {schema['pattern']}")
        if isinstance(value, dict):
            found += self._object_errors(schema, value, at)
        if isinstance(value, list):
            found += self._array_errors(schema, value, at)
        return found

    def _array_errors(self, schema: dict[str, Any], value: list[Any], at: str) -> list[str]:
        found: list[str] = []
        if len(value) < schema.get("minItems", 0):
            found.append(f"{at}: fewer than {schema['minItems']} items")
        if isinstance(schema.get("items"), dict):
            for i, item in enumerate(value):
                found += self.errors(schema["items"], item, f"{at}[{i}]")
        return found

    def _union_errors(self, choices: list[dict[str, Any]], value: Any, at: str) -> list[str]:
        found = [self.errors(choice, value, at) for choice in choices]
        if any(not errors for errors in found):
            return []
        return [f"{at}: matches none of {len(choices)} alternatives", *min(found, key=len)]

    def _object_errors(self, schema: dict[str, Any], value: dict[str, Any], at: str) -> list[str]:
        properties = schema.get("properties", {})
        found = [
            f"{at}: missing {name}" for name in schema.get("required", []) if name not in value
        ]
        for name, item in value.items():
            if name in properties:
                found += self.errors(properties[name], item, f"{at}.{name}")
            elif schema.get("additionalProperties") is False:
                found.append(f"{at}: unexpected property {name}")
        return found

    def operation(self, method: str) -> dict[str, Any]:
        path = self.web["paths"][f"/{method}"]
        return dict(path.get("post") or path["get"])

    def request_errors(self, method: str, params: dict[str, Any], authorization: str) -> list[str]:
        """Check a Web API call's parameters against the operation's parameter list.

        The token may go in the Authorization header whatever the spec's `in` says (Slack
        takes it there for every method, and the SDK always sends it there).
        """
        found: list[str] = []
        declared = {p["name"]: p for p in self.operation(method)["parameters"]}
        for name, param in declared.items():
            if name == "token":
                if not authorization.startswith("Bearer "):
                    found.append(f"{method}: no token in the Authorization header")
            elif param["in"] in _PARAMS_IN and param.get("required") and name not in params:
                found.append(f"{method}: required parameter {name} missing")
        for name, value in params.items():
            param = declared.get(name)
            if param is None or param["in"] not in _PARAMS_IN:
                found.append(f"{method}: parameter {name} is not in the spec")
            elif name == "blocks" and isinstance(value, list):  # a JSON body's array
                found += [f"{method}: {e}" for e in block_errors(value)]
            elif not _param_ok(param["type"], value):
                found.append(f"{method}: {name}={value!r} is not a {param['type']}")
        return found

    def response_errors(self, method: str, body: dict[str, Any]) -> list[str]:
        responses = self.operation(method)["responses"]
        schema = responses["200" if body.get("ok") else "default"]["schema"]
        return [f"{method} response: {e}" for e in self.errors(schema, body)]

    def envelope_errors(self, body: dict[str, Any]) -> list[str]:
        return [f"event envelope: {e}" for e in self.errors(self.event_wrapper, body)]


_PARAMS_IN = ("formData", "query")


def _param_ok(kind: str, value: Any) -> bool:
    if kind == "boolean":
        return isinstance(value, bool) or value in ("true", "false", "1", "0")
    return _JSON_TYPES[kind](value)


def block_errors(blocks: list[Any]) -> list[str]:
    """What is wrong with the Block Kit blocks the bot sends, by Slack's reference for
    the kinds it uses: markdown (text up to 12,000 characters), and context_actions
    holding feedback_buttons (action_id; each button's plain_text text up to 75
    characters and value up to 2,000)."""
    found: list[str] = []
    for i, block in enumerate(blocks):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "markdown":
            text = block.get("text")
            if not isinstance(text, str) or not 0 < len(text) <= MARKDOWN_LIMIT:
                found.append(f"blocks[{i}]: a markdown block's text must be 1-12000 characters")
        elif kind == "context_actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not 0 < len(elements) <= 5:
                found.append(f"blocks[{i}]: context_actions needs 1-5 elements")
                continue
            for element in elements:
                found += [f"blocks[{i}]: {e}" for e in _feedback_buttons_errors(element)]
        else:
            found.append(f"blocks[{i}]: a block of a kind the bot never sends: {kind!r}")
    return found


def _feedback_buttons_errors(element: Any) -> list[str]:
    if not isinstance(element, dict) or element.get("type") != "feedback_buttons":
        return [f"not a feedback_buttons element: {element!r}"]
    found = [] if isinstance(element.get("action_id"), str) else ["feedback_buttons: action_id"]
    for side in ("positive_button", "negative_button"):
        button = element.get(side)
        text = button.get("text") if isinstance(button, dict) else None
        label = text.get("text") if isinstance(text, dict) else None
        value = button.get("value") if isinstance(button, dict) else None
        if not (isinstance(text, dict) and text.get("type") == "plain_text"):
            found.append(f"{side}: text must be a plain_text object")
        if not isinstance(label, str) or not 0 < len(label) <= 75:
            found.append(f"{side}: text must be 1-75 characters")
        if not isinstance(value, str) or not 0 < len(value) <= 2000:
            found.append(f"{side}: value must be 1-2000 characters")
    return found


def interaction(user_id: str, message: BotMessage, value: str) -> dict[str, Any]:
    """The block_actions payload Slack sends when `user_id` clicks the feedback button
    of `message` whose value is `value` (as docs.slack.dev's block_actions payload and
    feedback_buttons element describe it)."""
    action_id = next(
        e["action_id"] for b in message.blocks if b["type"] == "context_actions"
        for e in b["elements"]
    )  # fmt: skip
    container = {"type": "message", "message_ts": message.ts, "channel_id": message.channel,
                 "is_ephemeral": False, "thread_ts": message.thread_ts}  # fmt: skip
    return {
        "type": "block_actions",
        "user": {"id": user_id, "username": f"handle.{user_id[-4:].lower()}", "team_id": TEAM_ID},
        "api_app_id": APP_ID, "token": "legacy-verification-token", "container": container,
        "trigger_id": f"{int(time.time())}.{uuid.uuid4().hex[:12]}",
        "team": {"id": TEAM_ID, "domain": "test-workspace"}, "enterprise": None,
        "is_enterprise_install": False, "channel": {"id": message.channel, "name": "chat"},
        "message": {"type": "message", "ts": message.ts, "text": message.text,
                    "user": BOT_USER_ID, "bot_id": BOT_ID, "blocks": message.blocks},
        "state": {"values": {}}, "response_url": "https://hooks.slack.test/actions/T/1/x",
        "actions": [{"type": "feedback_buttons", "action_id": action_id,
                     "block_id": "fb", "value": value, "action_ts": f"{time.time():.6f}"}],
    }  # fmt: skip


def sign(body: bytes, timestamp: int, secret: str = SIGNING_SECRET) -> str:
    """The v0 signature Slack sends in X-Slack-Signature."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    return "v0=" + hmac.new(secret.encode(), base, hashlib.sha256).hexdigest()


def event_envelope(event: dict[str, Any], event_id: str | None = None) -> dict[str, Any]:
    """An Events API `event_callback` body around one event, as Slack sends it."""
    now = int(time.time())
    return {
        "token": "legacy-verification-token",
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": {"event_ts": event.get("ts", f"{now}.000100"), **event},
        "type": "event_callback",
        "event_id": event_id or f"Ev{uuid.uuid4().hex[:10].upper()}",
        "event_time": now,
        "authed_users": [BOT_USER_ID],
        "authorizations": [
            {
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
                "enterprise_id": None,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{uuid.uuid4().hex}",
    }


class BotMessage:
    """One message of the bot's as the user sees it, and the calls that wrote it."""

    def __init__(self, channel: str, thread_ts: str | None, ts: str, streamed: bool) -> None:
        self.channel = channel
        self.thread_ts = thread_ts
        self.ts = ts
        self.streamed = streamed  # written by chat.*Stream (else posted and updated)
        self.text = ""
        self.blocks: list[dict[str, Any]] = []  # as last written (chat.stopStream adds them)
        self.streaming = streamed  # until chat.stopStream
        self.writes: list[tuple[str, float, str]] = []  # (method, monotonic time, text)

    @property
    def complete(self) -> bool:
        return not self.streaming and not self.text.endswith(CURSOR)

    def as_post(self) -> dict[str, Any]:
        return {"channel": self.channel, "thread_ts": self.thread_ts, "text": self.text}

    def feedback_value(self, positive: bool) -> str:
        """The value of the message's 👍 (positive) or 👎 feedback button."""
        side = "positive_button" if positive else "negative_button"
        found = [
            e[side]["value"] for b in self.blocks if b["type"] == "context_actions"
            for e in b["elements"]
        ]  # fmt: skip
        assert len(found) == 1, f"{len(found)} feedback buttons on message {self.ts}"
        return str(found[0])


class FakeSlack:
    """Start with `await start()`; `api_url` is what SLACK_API_BASE_URL should be."""

    def __init__(self) -> None:
        self.spec = Spec()
        self.calls: Counter[str] = Counter()  # Web API calls by method
        self.messages: dict[str, BotMessage] = {}  # the bot's, by ts, in the order written
        self.post_attempts = 0  # calls that write a message (WRITES), answered or not
        self.rate_limit_next = 0  # answer this many next writing calls with 429
        self.rate_limited_methods = WRITES  # the writing calls rate_limit_next applies to
        self.fail_next = 0  # answer this many next writing calls with 503
        self.streams_refused: str | None = None  # chat.startStream answers this error
        self.gone_channels: set[str] = set()  # chat.postMessage there: channel_not_found
        self.limited: list[tuple[str, float]] = []  # (method, time) of each 429 answered
        self.limits: dict[str, PacerBook] = {}  # by method, once enforce_limits() is called
        # Called with (method, params) before a writing call is answered.
        self.before_write: Callable[[str, dict[str, Any]], Any] | None = None
        self.connections_opened = 0
        self.refuse_connections = False  # apps.connections.open answers an error
        self.display_names: dict[str, str] = {}  # users.info: display name by user id
        self.unknown_users: set[str] = set()  # users.info answers user_not_found
        self.users_info_down = False  # users.info answers 503
        self.users_info_delay = 0.0  # seconds users.info takes to answer
        # users.info: the user ids asked about, in order; each user's role flags
        # (set_flags; a plain member otherwise); with `users_info_error` set (HTTP status,
        # error code) it fails so, `ok: false` when the status is 200; with
        # `users_info_answer` set it answers that body, unchecked (JSON, or bytes as sent).
        self.users_asked: list[str] = []
        self.user_flags: dict[str, dict[str, bool]] = {}
        self.users_info_error: tuple[int, str] | None = None
        self.users_info_answer: Any = NOT_SET
        self.acks: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.sockets: list[web.WebSocketResponse] = []
        self._ts = itertools.count(100)
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/api/auth.test", self._auth_test)
        app.router.add_post("/api/chat.postMessage", self._post_message)
        app.router.add_post("/api/chat.update", self._update)
        for method in STREAM_ARGUMENTS:
            app.router.add_post(f"/api/{method}", self._stream_call)
        app.router.add_post("/api/apps.connections.open", self._connections_open)
        app.router.add_route("*", "/api/users.info", self._users_info)
        app.router.add_get("/socket", self._socket)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        for ws in list(self.sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # Web API

    async def _params(self, request: web.Request) -> dict[str, Any]:
        self.calls[request.path.rsplit("/", 1)[1]] += 1
        if request.method == "GET":
            return dict(request.query)
        if request.content_type == "application/json":
            body = await request.json()
            return dict(body or {})
        return dict(await request.post())

    def _answer(self, method: str, body: dict[str, Any], **kwargs: Any) -> web.Response:
        self.violations += self.spec.response_errors(method, body)
        return web.json_response(body, **kwargs)

    async def _auth_test(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        authorization = request.headers.get("Authorization", "")
        self.violations += self.spec.request_errors("auth.test", params, authorization)
        if request.headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            return self._answer("auth.test", {"ok": False, "error": "invalid_auth"})
        return self._answer(
            "auth.test",
            {
                "ok": True,
                "url": "https://test-workspace.slack.com/",
                "team": "Test Workspace",
                "user": "chatbot",
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "bot_id": BOT_ID,
                "is_enterprise_install": False,
            },
        )

    def enforce_limits(self) -> None:
        """Answer 429 as Slack does: a message posted (or a stream started) about once a
        second per channel, briefly more; chat.appendStream at tier 4 (100 a minute) and
        chat.update at tier 3 (50 a minute) for the whole workspace. Slack publishes no
        limit of chat.stopStream, which ends a message rather than posting one: here it
        has the per-channel rate, on a budget of its own."""
        per_channel = PacerBook(per_second=1, burst=3)
        self.limits = {
            "chat.postMessage": per_channel,
            "chat.startStream": per_channel,
            "chat.stopStream": PacerBook(per_second=1, burst=3),
            "chat.appendStream": PacerBook(per_second=100 / 60, burst=20),
            "chat.update": PacerBook(per_second=50 / 60, burst=10),
        }

    @property
    def posts(self) -> list[dict[str, Any]]:
        """The bot's complete messages (channel, thread_ts, text), in the order written."""
        return [m.as_post() for m in self.messages.values() if m.complete]

    def writes(self, method: str | None = None) -> list[tuple[str, float, str]]:
        """Every write answered ok (of `method`, if given), in order: (method, time, text)."""
        found = [w for m in self.messages.values() for w in m.writes]
        return sorted((w for w in found if method in (None, w[0])), key=lambda w: w[1])

    async def _refused_write(self, method: str, params: dict[str, Any]) -> web.Response | None:
        """A 429 or 503 when a test asked for one; else None, and the write goes on."""
        self.post_attempts += 1
        wait = self._over_limit(method, params)
        if wait is not None or (self.rate_limit_next and method in self.rate_limited_methods):
            if wait is None:
                self.rate_limit_next -= 1
            self.limited.append((method, time.monotonic()))
            body = {"ok": False, "error": "ratelimited"}
            retry_after = str(retry_seconds(wait or 1))
            return web.json_response(body, status=429, headers={"Retry-After": retry_after})
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(status=503, text="upstream unavailable")
        if self.before_write is not None:
            await self.before_write(method, params)
        return None

    def _over_limit(self, method: str, params: dict[str, Any]) -> float | None:
        """Seconds to wait when the call is over Slack's limits (enforce_limits)."""
        budgets = self.limits.get(method)
        if budgets is None:
            return None
        per_workspace = method in ("chat.appendStream", "chat.update")
        return over(budgets, TEAM_ID if per_workspace else str(params.get("channel")))

    def _new_message(self, channel: str, thread_ts: str | None, streamed: bool) -> BotMessage:
        ts = f"{int(time.time())}.{next(self._ts):06d}"
        self.messages[ts] = found = BotMessage(channel, thread_ts, ts, streamed)
        return found

    async def _post_message(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        authorization = request.headers.get("Authorization", "")
        self.violations += self.spec.request_errors("chat.postMessage", params, authorization)
        refused = await self._refused_write("chat.postMessage", params)
        if refused is not None:
            return refused
        if authorization != f"Bearer {BOT_TOKEN}":
            return self._answer("chat.postMessage", {"ok": False, "error": "invalid_auth"})
        if params.get("channel") in self.gone_channels:
            return self._answer("chat.postMessage", {"ok": False, "error": "channel_not_found"})
        posted = self._new_message(str(params.get("channel")), params.get("thread_ts"), False)
        posted.text = str(params.get("text", ""))
        posted.blocks = list(params.get("blocks") or [])
        posted.writes.append(("chat.postMessage", time.monotonic(), posted.text))
        message = {
            "type": "message",
            "text": posted.text,
            "ts": posted.ts,
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "team": TEAM_ID,
        }
        if posted.thread_ts:
            message["thread_ts"] = posted.thread_ts
        body = {"ok": True, "channel": posted.channel, "ts": posted.ts, "message": message}
        return self._answer("chat.postMessage", body)

    async def _update(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        authorization = request.headers.get("Authorization", "")
        self.violations += self.spec.request_errors("chat.update", params, authorization)
        refused = await self._refused_write("chat.update", params)
        if refused is not None:
            return refused
        found = self.messages.get(str(params.get("ts")))
        if found is None or found.channel != params.get("channel") or found.streamed:
            return self._answer("chat.update", {"ok": False, "error": "message_not_found"})
        found.text = str(params.get("text", ""))
        found.blocks = list(params.get("blocks") or [])
        found.writes.append(("chat.update", time.monotonic(), found.text))
        body = {"ok": True, "channel": found.channel, "ts": found.ts, "text": found.text,
                "message": {"text": found.text}}  # fmt: skip
        return self._answer("chat.update", body)

    async def _stream_call(self, request: web.Request) -> web.Response:
        """chat.startStream, chat.appendStream, chat.stopStream: a message written in
        pieces, each appended to what it holds."""
        method = request.path.rsplit("/", 1)[1]
        params = await self._params(request)
        problems = self._stream_problems(method, params, request.headers)
        self.violations += problems
        refused = await self._refused_write(method, params)
        if refused is not None:
            return refused
        if problems:
            return web.json_response({"ok": False, "error": "invalid_arguments"})
        if method == "chat.startStream":
            if self.streams_refused is not None:
                return web.json_response({"ok": False, "error": self.streams_refused})
            found = self._new_message(params["channel"], params["thread_ts"], True)
        else:
            found = self.messages.get(params["ts"])  # type: ignore[assignment]
            if found is None or not found.streaming or found.channel != params["channel"]:
                return web.json_response({"ok": False, "error": "message_not_in_streaming_state"})
        found.text += params.get("markdown_text", "")
        found.blocks = list(params.get("blocks") or found.blocks)
        found.streaming = method != "chat.stopStream"
        found.writes.append((method, time.monotonic(), found.text))
        return web.json_response({"ok": True, "channel": found.channel, "ts": found.ts})

    def _stream_problems(self, method: str, params: dict[str, Any], headers: Any) -> list[str]:
        required, optional = STREAM_ARGUMENTS[method]
        found = [f"{method}: required argument {name} missing" for name in required - set(params)]
        found += [
            f"{method}: unknown argument {name}" for name in set(params) - required - optional
        ]
        if headers.get("Authorization") != f"Bearer {BOT_TOKEN}":
            found.append(f"{method}: no bot token in the Authorization header")
        if not all(isinstance(value, str) for key, value in params.items() if key not in _ARRAYS):
            found.append(f"{method}: an argument that is no string: {params}")
        if isinstance(params.get("blocks"), list):
            found += [f"{method}: {e}" for e in block_errors(params["blocks"])]
        if len(params.get("markdown_text", "")) > MARKDOWN_LIMIT:
            found.append(f"{method}: markdown_text over {MARKDOWN_LIMIT} characters")
        if method == "chat.appendStream" and not params.get("markdown_text"):
            found.append(f"{method}: nothing to append")
        in_channel = not str(params.get("channel", "")).startswith("D")
        recipients = {"recipient_team_id", "recipient_user_id"} & set(params)
        if method == "chat.startStream" and in_channel and len(recipients) < 2:
            found.append(f"{method}: a stream in a channel needs both recipient ids")
        return found

    def display_name(self, user_id: str) -> str:
        """The display name users.info gives for a user (every user has one by default)."""
        return self.display_names.get(user_id, f"Person {user_id[-4:]}")

    async def _users_info(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        authorization = request.headers.get("Authorization", "")
        self.violations += self.spec.request_errors("users.info", params, authorization)
        self.users_asked.append(str(params.get("user", "")))
        await asyncio.sleep(self.users_info_delay)
        if self.users_info_down:
            return web.Response(status=503, text="upstream unavailable")
        if self.users_info_error is not None:
            return self._users_info_error(*self.users_info_error)
        if isinstance(self.users_info_answer, bytes):
            return web.Response(body=self.users_info_answer, content_type="application/json")
        if self.users_info_answer is not NOT_SET:
            return web.json_response(self.users_info_answer)
        if authorization != f"Bearer {BOT_TOKEN}":
            return self._answer("users.info", {"ok": False, "error": "invalid_auth"})
        user_id = str(params.get("user", ""))
        if user_id in self.unknown_users or not re.match(r"^[UW][A-Z0-9]{2,}$", user_id):
            return self._answer("users.info", {"ok": False, "error": "user_not_found"})
        return self._answer("users.info", {"ok": True, "user": self.user_object(user_id)})

    def _users_info_error(self, status: int, code: str) -> web.Response:
        body = {"ok": False, "error": code}
        if status == 200:  # a refusal: what Slack answers is in the spec
            return self._answer("users.info", body)
        headers = {"Retry-After": "1"} if status == 429 else None
        return web.json_response(body, status=status, headers=headers)  # beyond the spec

    def set_flags(self, user_id: str, **flags: bool) -> None:
        """What users.info says of `user_id`'s role: is_admin, is_owner, deleted, …
        (a boolean property of the spec's user object)."""
        known = self.spec.web["definitions"]["objs_user"]["items"][0]["properties"]
        for name, value in flags.items():
            assert known.get(name, {}).get("type") == "boolean", name
            assert isinstance(value, bool), (name, value)
        self.user_flags.setdefault(user_id, {}).update(flags)

    def user_object(self, user_id: str) -> dict[str, Any]:
        """users.info's user: a member with a display name, unless a test set its flags."""
        display, real = self.display_name(user_id), f"Real Name {user_id[-4:]}"
        profile = {
            "avatar_hash": "ge3b51ca72de", "status_text": "", "status_emoji": "",
            "real_name": real, "display_name": display, "real_name_normalized": real,
            "display_name_normalized": display, "title": "", "phone": "", "skype": "",
            "fields": None, "team": TEAM_ID,
        }  # fmt: skip
        return {
            "id": user_id, "team_id": TEAM_ID, "name": f"handle.{user_id[-4:].lower()}",
            "deleted": False, "color": "9f69e7", "real_name": real, "tz": "Europe/Berlin",
            "tz_label": "Central European Time", "tz_offset": 3600, "profile": profile,
            "is_admin": False, "is_owner": False, "is_primary_owner": False,
            "is_restricted": False, "is_ultra_restricted": False, "is_bot": False,
            "is_app_user": False, "updated": 1_700_000_000, "has_2fa": False,
            **self.user_flags.get(user_id, {}),
        }  # fmt: skip

    async def _connections_open(self, request: web.Request) -> web.Response:
        await self._params(request)
        # Not in the pinned spec: shaped after docs.slack.dev's apps.connections.open page.
        if request.headers.get("Authorization") != f"Bearer {APP_TOKEN}":
            return web.json_response({"ok": False, "error": "invalid_auth"})
        if self.refuse_connections:
            return web.json_response({"ok": False, "error": "internal_error"}, status=500)
        self.connections_opened += 1
        ws_url = self.url.replace("http://", "ws://") + f"/socket?ticket={uuid.uuid4()}"
        return web.json_response({"ok": True, "url": ws_url})

    # Socket Mode

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": 1,
                "debug_info": {"host": "applink-test", "approximate_connection_time": 18060},
                "connection_info": {"app_id": APP_ID},
            }
        )
        async for frame in ws:
            if frame.type == WSMsgType.TEXT:
                self.acks.append(json.loads(frame.data))
        self.sockets.remove(ws)
        return ws

    @property
    def socket_open(self) -> bool:
        return any(not ws.closed for ws in self.sockets)

    async def push(self, body: dict[str, Any], retry_attempt: int = 0) -> str:
        """Deliver an events_api envelope over the open websocket; returns its envelope_id."""
        self.violations += self.spec.envelope_errors(body)
        envelope_id = str(uuid.uuid4())
        ws = next(ws for ws in reversed(self.sockets) if not ws.closed)
        await ws.send_json(
            {
                "envelope_id": envelope_id,
                "type": "events_api",
                "accepts_response_payload": False,
                "retry_attempt": retry_attempt,
                "retry_reason": "timeout" if retry_attempt else "",
                "payload": body,
            }
        )
        return envelope_id

    async def push_interactive(self, payload: dict[str, Any]) -> str:
        """Deliver an interaction (a block_actions payload) over the open websocket, as
        Socket Mode does; returns its envelope_id."""
        envelope_id = str(uuid.uuid4())
        ws = next(ws for ws in reversed(self.sockets) if not ws.closed)
        await ws.send_json({"envelope_id": envelope_id, "type": "interactive",
                            "accepts_response_payload": True, "payload": payload})  # fmt: skip
        return envelope_id

    async def drop_sockets(self) -> None:
        """Close every websocket, as Slack does when it moves a connection."""
        for ws in list(self.sockets):
            await ws.close()
