"""A fake Telegram Bot API on 127.0.0.1 that python-telegram-bot talks to for real.

It speaks /bot<TOKEN>/<method> for getMe, getUpdates (long polling with Telegram's
offset rules, serving only the kinds of update allowed_updates asked for, as Telegram
remembers them: reactions only when asked for by name), sendMessage, sendChatAction,
setWebhook, deleteWebhook and getChatMember (who administers which chat, as a test sets
it), and checks every request the SDK sends and every object it serves against the
vendored Bot API spec (bot/emulators/specs/telegram/api.json): unknown or missing
parameters, wrong types.
What it finds wrong is collected in `problems`; the fixtures assert it stays empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bot.channels.live import CURSOR
from bot.channels.pacing import PacerBook
from bot.emulators.limits import over, retry_seconds

SPEC_PATH = Path(__file__).resolve().parent / "specs" / "telegram" / "api.json"
TOKEN = "123456:TEST-fake-telegram-token"
MAX_TEXT = 4096  # characters of a message's text
BOT_ID = 4242
BOT_USERNAME = "test_chat_bot"
# getChatMember's statuses and the ChatMember kind each one is.
MEMBER_KINDS = {
    "creator": "ChatMemberOwner",
    "administrator": "ChatMemberAdministrator",
    "member": "ChatMemberMember",
    "restricted": "ChatMemberRestricted",
    "left": "ChatMemberLeft",
    "kicked": "ChatMemberBanned",
}
NOT_SET: Any = object()
# What Telegram sends when allowed_updates was never given (or given empty): every kind
# of update but these, which a bot must ask for by name.
ASKED_FOR_BY_NAME = frozenset({"chat_member", "message_reaction", "message_reaction_count"})


class Spec:
    """The Bot API's methods and types, with a checker for values against them."""

    def __init__(self, path: Path = SPEC_PATH) -> None:
        data = json.loads(path.read_text())
        self.methods: dict[str, Any] = data["methods"]
        self.types: dict[str, Any] = data["types"]

    def check_object(self, type_name: str, value: Any, where: str = "") -> list[str]:
        where = where or type_name
        if not isinstance(value, dict):
            return [f"{where}: {type_name} must be an object, got {value!r}"]
        kind = self.types[type_name]
        if "subtypes" in kind:  # one of several kinds (ChatMember)
            return self._check_one_of(kind["subtypes"], value, where)
        return self._check_fields(kind["fields"], value, where)

    def check_call(self, method: str, params: dict[str, Any]) -> list[str]:
        if method not in self.methods:
            return [f"{method}: not a Bot API method (or not in the vendored subset)"]
        return self._check_fields(self.methods[method].get("fields", []), params, method)

    def decode_form(self, method: str, form: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
        """Form values as the types the spec gives them (the SDK sends objects as JSON)."""
        fields = {f["name"]: f["types"] for f in self.methods.get(method, {}).get("fields", [])}
        params: dict[str, Any] = {}
        problems: list[str] = []
        for name, raw in form.items():
            try:
                params[name] = _decode(fields.get(name, ["String"]), raw)
            except ValueError:
                problems.append(f"{method}.{name}: {raw!r} does not decode as {fields[name]}")
                params[name] = raw
        return params, problems

    def _check_one_of(self, subtypes: list[str], value: dict[str, Any], where: str) -> list[str]:
        found = [self.check_object(kind, value, where) for kind in subtypes]
        if [] in found:
            return []
        return [f"{where}: none of {', '.join(subtypes)}", *min(found, key=len)]

    def _check_fields(
        self, fields: list[dict[str, Any]], value: dict[str, Any], where: str
    ) -> list[str]:
        known = {f["name"]: f for f in fields}
        problems = [f"{where}.{name}: unknown field" for name in value if name not in known]
        for name, field in known.items():
            fixed = _ALWAYS.search(field.get("description", ""))
            if name not in value:
                if field["required"]:
                    problems.append(f"{where}.{name}: required but missing")
            elif fixed and value[name] != fixed[1]:  # the tag of a kind: status "creator"
                problems.append(f"{where}.{name}: {value[name]!r} is not {fixed[1]!r}")
            elif not any(
                self._matches(t, value[name], f"{where}.{name}") == [] for t in field["types"]
            ):
                problems.append(
                    f"{where}.{name}: {value[name]!r} is not {' or '.join(field['types'])}"
                )
        return problems

    def _matches(self, type_name: str, value: Any, where: str) -> list[str]:
        if type_name.startswith("Array of "):
            inner = type_name.removeprefix("Array of ")
            if not isinstance(value, list):
                return [f"{where}: not an array"]
            return [
                p
                for i, item in enumerate(value)
                for p in self._matches(inner, item, f"{where}[{i}]")
            ]
        scalar = _SCALARS.get(type_name)
        if scalar is not None:
            return [] if scalar(value) else [f"{where}: not {type_name}"]
        if type_name in self.types:
            return self.check_object(type_name, value, where)
        # A type outside the vendored subset: its shape is not checked beyond "an object".
        return [] if isinstance(value, dict) else [f"{where}: not an object"]


_ALWAYS = re.compile(r'always "(\w+)"')  # how the spec gives the one value of a field
_SCALARS: dict[str, Callable[[Any], bool]] = {
    "Integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "Float": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "String": lambda v: isinstance(v, str),
    "Boolean": lambda v: isinstance(v, bool),
    "True": lambda v: v is True,
}


def _decode(types: list[str], raw: str) -> Any:
    if types == ["String"]:
        return raw
    if "Integer" in types:
        try:
            return int(raw)
        except ValueError:
            if "String" in types:
                return raw
            raise
    if types in (["Boolean"], ["True"]):
        if raw not in ("true", "false"):
            raise ValueError(raw)
        return raw == "true"
    return json.loads(raw)


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    at: float
    status: int = 200


class FakeBotApi:
    """One bot's Bot API endpoint; tests queue updates and read what the SDK sent."""

    def __init__(self, token: str = TOKEN, spec: Spec | None = None) -> None:
        self.token = token
        self.spec = spec or Spec()
        self.bot_user = {
            "id": BOT_ID, "is_bot": True, "first_name": "Test Bot", "username": BOT_USERNAME,
            "can_join_groups": True, "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }  # fmt: skip
        self.calls: list[Call] = []
        self.problems: list[str] = []
        self.confirmed = 0  # every update_id below this one has been confirmed
        self.served: list[int] = []  # update_ids returned by getUpdates, in order
        self.rate_limited = 0  # answer this many next sendMessage calls with 429
        self.gone_chats: set[int] = set()  # sendMessage there: 403, the bot was kicked out
        self.edits_rate_limited = 0  # the same for editMessageText and sendMessageDraft
        # The bot's messages by id, each with its sendMessage params and its text now
        # (edits change it); the drafts shown in private chats: (chat id, draft id, text).
        self.bot_messages: dict[int, dict[str, Any]] = {}
        self.drafts: list[tuple[int, int, str]] = []
        # Run before each call is answered (a test looking at the database then).
        self.before_answer: Callable[[str, dict[str, Any]], Awaitable[None]] | None = None
        self.updates_down = False  # answer getUpdates with 502 while set
        self.poll_cap = 1.0  # longest a getUpdates waits here, whatever it asked for
        self.webhook: dict[str, Any] = {}
        # The kinds of update asked for last (getUpdates or setWebhook); None: the default.
        self.allowed_updates: list[str] | None = None
        # getChatMember: each (chat id, user id)'s status, "member" unless a test says;
        # with `member_error` set (status, description) it fails so, with `member_answer`
        # set it answers that as the result, unchecked (a malformed answer).
        self.statuses: dict[tuple[int, int], str] = {}
        self.member_error: tuple[int, str] | None = None
        self.member_answer: Any = NOT_SET
        self._users: dict[int, dict[str, Any]] = {}
        self._updates: list[dict[str, Any]] = []
        self._replays: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()
        # Fresh ids per server: the tests share one database, which remembers them.
        self._ids = itertools.count(time.time_ns() // 1000 % 10**12)
        self._message_ids = itertools.count(500)
        self._chats: dict[int, dict[str, Any]] = {}
        self._runner: web.AppRunner | None = None
        self.limits: tuple[PacerBook, PacerBook] | None = None  # (per chat, the bot's)

    def enforce_limits(self) -> None:
        """Answer 429 as Telegram does: about one message a second per chat (briefly
        more), 30 a second in all. A draft is a preview, not a message of the chat: its
        updates have a budget of their own per chat (the same rate; Telegram publishes
        none for them), and count toward the 30 a second."""
        self.limits = (PacerBook(per_second=1, burst=3), PacerBook(per_second=30, burst=30))
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/bot{token}/{method}", self._endpoint)
        # A poll the SDK gave up on (stop() cancels it) ends here too, not at its timeout.
        self._runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=1, handler_cancellation=True
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = self._runner.addresses[0][1]

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- what tests use ---------------------------------------------------------------------

    def next_update_id(self) -> int:
        return next(self._ids)

    def next_message_id(self) -> int:
        return next(self._message_ids)

    async def push(self, update: dict[str, Any]) -> dict[str, Any]:
        """Queue an update for getUpdates, after checking it is a valid Update."""
        self._check("served Update", self.spec.check_object("Update", update))
        self._remember_chats(update)
        async with self._arrived:
            self._updates.append(update)
            self._arrived.notify_all()
        return update

    async def replay(self, update: dict[str, Any]) -> None:
        """Serve an update again although it was confirmed (a re-sent update)."""
        async with self._arrived:
            self._replays.append(update)
            self._arrived.notify_all()

    def delivers(self, update: dict[str, Any]) -> bool:
        """Whether Telegram would send this update to the bot, by the kinds it asked for
        (a webhook test posts only what this says Telegram would)."""
        kind = next(k for k in update if k != "update_id")
        if self.allowed_updates:
            return kind in self.allowed_updates
        return kind not in ASKED_FOR_BY_NAME

    def set_status(self, chat: dict[str, Any], person: dict[str, Any], status: str) -> None:
        """What getChatMember says `person` is in `chat`: one of MEMBER_KINDS."""
        assert status in MEMBER_KINDS, status
        self.statuses[chat["id"], person["id"]] = status

    def calls_of(self, method: str, status: int | None = 200) -> list[Call]:
        return [c for c in self.calls if c.method == method and status in (None, c.status)]

    @property
    def sent(self) -> list[dict[str, Any]]:
        """The bot's messages as they read now (sendMessage's params, the text as last
        edited), but those still being written (ending with the adapter's cursor)."""
        now = [{**m["params"], "text": m["text"]} for m in self.bot_messages.values()]
        return [m for m in now if not m["text"].endswith(CURSOR)]

    async def wait_for(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; calls so far: {[c.method for c in self.calls]}")
            await asyncio.sleep(0.02)

    def _remember_chats(self, update: dict[str, Any]) -> None:
        for kind in ("message", "edited_message"):
            if kind in update:
                chat = update[kind]["chat"]
                self._chats[chat["id"]] = chat
                if "from" in update[kind]:
                    self._users[update[kind]["from"]["id"]] = update[kind]["from"]

    def _check(self, where: str, problems: list[str]) -> None:
        self.problems += [f"{where}: {p}" for p in problems]

    # -- the Bot API ------------------------------------------------------------------------

    async def _endpoint(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(method, request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        self._check(f"{method} request", self.spec.check_call(method, params))
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found")
        if self.before_answer is not None:
            await self.before_answer(method, params)
        if len(str(params.get("text", ""))) > MAX_TEXT:  # as Telegram refuses one
            call.status = 400
            return _error(400, "Bad Request: message is too long")
        wait = self._over_limit(method, params)
        if wait is not None:
            call.status = 429
            return _too_many(retry_seconds(wait))
        response: web.Response = await handler(params)
        call.status = response.status
        return response

    def _over_limit(self, method: str, params: dict[str, Any]) -> float | None:
        """Seconds to wait when the call is over Telegram's limits (enforce_limits)."""
        if self.limits is None or method not in _WRITES:
            return None
        per_chat, overall = self.limits
        kind = "draft" if method == "sendMessageDraft" else "message"
        return over(per_chat, f"{kind}:{params.get('chat_id')}") or over(overall, "bot")

    async def _params(self, method: str, request: web.Request) -> dict[str, Any]:
        if request.content_type == "application/json":
            body = await request.json()
            return body if isinstance(body, dict) else {}
        form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
        params, problems = self.spec.decode_form(method, form)
        self._check(f"{method} request", problems)
        return params

    async def _api_getMe(self, params: dict[str, Any]) -> web.Response:
        return self._ok(self.bot_user, "User")

    async def _api_deleteWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = {}
        return _ok(True)

    async def _api_setWebhook(self, params: dict[str, Any]) -> web.Response:
        self.webhook = params
        self.allowed_updates = params.get("allowed_updates", self.allowed_updates)
        return _ok(True)

    async def _api_sendChatAction(self, params: dict[str, Any]) -> web.Response:
        return _ok(True)

    async def _api_getUpdates(self, params: dict[str, Any]) -> web.Response:
        if self.updates_down:
            return _error(502, "Bad Gateway")
        if self.webhook:
            return _error(409, "Conflict: can't use getUpdates method while webhook is active")
        offset = params.get("offset") or 0
        limit = params.get("limit") or 100
        wait = min(float(params.get("timeout") or 0), self.poll_cap)
        self.allowed_updates = params.get("allowed_updates", self.allowed_updates)
        async with self._arrived:
            self.confirmed = max(self.confirmed, offset)
            self._updates = [
                u for u in self._updates if u["update_id"] >= self.confirmed and self.delivers(u)
            ]
            if wait and not (self._updates or self._replays):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._arrived.wait_for(lambda: bool(self._updates or self._replays)), wait
                    )
            # What arrived while the poll waited is served by the same rule.
            self._updates = [u for u in self._updates if self.delivers(u)]
            batch = (self._replays + self._updates)[:limit]
            self._replays = []
        self.served += [u["update_id"] for u in batch]
        return _ok(batch)

    async def _api_sendMessage(self, params: dict[str, Any]) -> web.Response:
        if self.rate_limited > 0:
            self.rate_limited -= 1
            return _too_many()
        chat_id = params["chat_id"]
        if chat_id in self.gone_chats:
            return _error(403, "Forbidden: bot was kicked from the supergroup chat")
        chat = self._chats.get(chat_id, {"id": chat_id, "type": "private", "first_name": "User"})
        message = {
            "message_id": self.next_message_id(),
            "from": self.bot_user,
            "chat": chat,
            "date": int(time.time()),
            "text": params["text"],
        }
        if "message_thread_id" in params:
            message["message_thread_id"] = params["message_thread_id"]
        self.bot_messages[message["message_id"]] = {"params": params, "text": params["text"]}
        return self._ok(message, "Message")

    async def _api_editMessageText(self, params: dict[str, Any]) -> web.Response:
        if self.edits_rate_limited > 0:
            self.edits_rate_limited -= 1
            return _too_many()
        found = self.bot_messages.get(params.get("message_id", -1))
        if found is None or found["params"]["chat_id"] != params.get("chat_id"):
            return _error(400, "Bad Request: message to edit not found")
        if found["text"] == params["text"]:
            return _error(400, "Bad Request: message is not modified")
        found["text"] = params["text"]
        message = {
            "message_id": params["message_id"],
            "from": self.bot_user,
            "chat": self._chats.get(params["chat_id"], {"id": params["chat_id"], "type": "group"}),
            "date": int(time.time()),
            "edit_date": int(time.time()),
            "text": params["text"],
        }
        return self._ok(message, "Message")

    async def _api_sendMessageDraft(self, params: dict[str, Any]) -> web.Response:
        if self.edits_rate_limited > 0:
            self.edits_rate_limited -= 1
            return _too_many()
        chat = self._chats.get(params["chat_id"], {"type": "private"})
        if chat["type"] != "private":
            return _error(400, "Bad Request: drafts can be sent to private chats only")
        self.drafts.append((params["chat_id"], params["draft_id"], params.get("text", "")))
        return _ok(True)

    async def _api_getChatMember(self, params: dict[str, Any]) -> web.Response:
        if self.member_error is not None:
            return _error(*self.member_error)
        if self.member_answer is not NOT_SET:
            return _ok(self.member_answer)
        chat_id, user_id = params["chat_id"], params["user_id"]
        status = self.statuses.get((chat_id, user_id), "member")
        found = self._users.get(user_id) or user(user_id)
        return self._ok(chat_member(self.spec, status, found), "ChatMember")

    def _ok(self, result: dict[str, Any], type_name: str) -> web.Response:
        self._check(f"served {type_name}", self.spec.check_object(type_name, result))
        return _ok(result)


_WRITES = frozenset({"sendMessage", "editMessageText", "sendMessageDraft"})


def _too_many(retry_after: int = 1) -> web.Response:
    answer = {
        "ok": False,
        "error_code": 429,
        "description": f"Too Many Requests: retry after {retry_after}",
        "parameters": {"retry_after": retry_after},
    }
    return web.json_response(answer, status=429)


def _ok(result: Any) -> web.Response:
    return web.json_response({"ok": True, "result": result})


def _error(status: int, description: str) -> web.Response:
    return web.json_response(
        {"ok": False, "error_code": status, "description": description}, status=status
    )


# -- building updates -------------------------------------------------------------------------


def user(user_id: int, username: str | None = None, is_bot: bool = False) -> dict[str, Any]:
    found: dict[str, Any] = {"id": user_id, "is_bot": is_bot, "first_name": f"User{user_id}"}
    if username:
        found["username"] = username
    return found


def chat_member(spec: Spec, status: str, person: dict[str, Any]) -> dict[str, Any]:
    """`person` as the ChatMember of that status, with the kind's required fields only:
    no rights, no end date."""
    member: dict[str, Any] = {}
    for field in spec.types[MEMBER_KINDS[status]]["fields"]:
        if field["required"]:
            fixed = _ALWAYS.search(field["description"])
            by_type = {"User": person, "Boolean": False, "Integer": 0}
            member[field["name"]] = fixed[1] if fixed else by_type[field["types"][0]]
    return member


def private_chat(of: dict[str, Any]) -> dict[str, Any]:
    chat = {"id": of["id"], "type": "private", "first_name": of["first_name"]}
    if "username" in of:
        chat["username"] = of["username"]
    return chat


def group_chat(chat_id: int = -1001234567890, kind: str = "supergroup") -> dict[str, Any]:
    return {"id": chat_id, "type": kind, "title": "Test group"}


def utf16_len(text: str) -> int:
    """Telegram counts entity offsets and lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def entities(text: str, kind: str, word: str) -> list[dict[str, Any]]:
    """A `kind` entity (mention, bot_command) over each occurrence of `word` in `text`,
    ignoring case as Telegram does for usernames."""
    found, start = [], text.lower().find(word.lower())
    while start >= 0:
        found.append({"type": kind, "offset": utf16_len(text[:start]), "length": utf16_len(word)})
        start = text.lower().find(word.lower(), start + len(word))
    return found


def message(
    server: FakeBotApi,
    chat: dict[str, Any],
    sender: dict[str, Any],
    text: str | None,
    **extra: Any,
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "message_id": server.next_message_id(),
        "from": sender,
        "chat": chat,
        "date": int(time.time()),
    }
    if text is not None:
        found["text"] = text
    found.update(extra)
    return found


def update(server: FakeBotApi, body: dict[str, Any], kind: str = "message") -> dict[str, Any]:
    return {"update_id": server.next_update_id(), kind: body}


def reaction(
    server: FakeBotApi,
    chat: dict[str, Any],
    person: dict[str, Any],
    message_id: int,
    old: tuple[str, ...] = (),
    new: tuple[str, ...] = (),
) -> dict[str, Any]:
    """An update of `person` changing their reactions on a message from the emoji
    `old` to `new` (a MessageReactionUpdated)."""
    body = {
        "chat": chat, "message_id": message_id, "user": person, "date": int(time.time()),
        "old_reaction": [{"type": "emoji", "emoji": e} for e in old],
        "new_reaction": [{"type": "emoji", "emoji": e} for e in new],
    }  # fmt: skip
    return update(server, body, "message_reaction")


def private_update(server: FakeBotApi, sender: dict[str, Any], text: str) -> dict[str, Any]:
    """An update of `sender`'s message `text` in their private chat with the bot."""
    return update(server, message(server, private_chat(sender), sender, text))
