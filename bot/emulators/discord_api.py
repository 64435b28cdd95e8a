"""A local Discord for discord.py to talk to: the REST API under /api/v10 and the gateway.

REST: what the adapter's client calls (login, application info, gateway discovery,
messages, typing, DM channels, a guild member), every call recorded, with switches that
answer the next message posts with 429 or a server error, refuse posts to a channel
for good (403 Missing Permissions, 404 Unknown Channel), and make the member fetch
fail or answer something malformed. The guild has the roles a test adds (with
their permissions), an owner, and overwrites on its text channel; each member the roles
a test gives them. Gateway: HELLO, IDENTIFY → READY + GUILD_CREATE,
heartbeat ACKs, RECONNECT → RESUME with a replay, and the MESSAGE_CREATE and
MESSAGE_REACTION_ADD/REMOVE dispatches the tests push (reactions only to a session whose
intents ask for them, as Discord does). Frames are zlib-stream compressed when the
client asks for it, as Discord does. Every request the SDK sends, every response and
every object pushed is checked against the vendored spec (bot/emulators/specs/discord);
mismatches collect in `violations`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
import uuid
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from bot.channels.live import CURSOR
from bot.emulators.limits import Window

SPEC_PATH = Path(__file__).resolve().parent / "specs" / "discord" / "openapi_subset.json"
API = "/api/v10"
MAX_CONTENT = 2000  # characters of a message's content
TOKEN = "MTA-fake.discord-bot.token"
DISCORD_EPOCH_MS = 1_420_070_400_000
INTENT_MESSAGE_CONTENT = 1 << 15
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
HEARTBEAT_INTERVAL_MS = 41_250
# Permission bits, as Discord documents them.
ADMINISTRATOR = 1 << 3
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
READ_MESSAGE_HISTORY = 1 << 16
SEND_MESSAGES_IN_THREADS = 1 << 38
EVERYONE = VIEW_CHANNEL | SEND_MESSAGES | READ_MESSAGE_HISTORY | SEND_MESSAGES_IN_THREADS
ERROR_UNKNOWN_CHANNEL, ERROR_UNKNOWN_GUILD, ERROR_UNKNOWN_MEMBER = 10003, 10004, 10007
NOT_SET: Any = object()
UNCHECKED = web.ResponseKey("unchecked", bool)  # served as it is, not checked
Json = dict[str, Any]

_ids = itertools.count(1)


def snowflake() -> str:
    return str(((int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22) | (next(_ids) & 0x3FFFFF))


def now() -> str:
    return datetime.now(UTC).isoformat()


def user(name: str, *, bot: bool = False, user_id: str | None = None) -> Json:
    """A UserResponse."""
    return {
        "id": user_id or snowflake(),
        "username": name,
        "avatar": None,
        "discriminator": "0",
        "public_flags": 0,
        "flags": 0,
        "global_name": None,
        "primary_guild": None,
        "bot": bot,
    }


class SpecChecker:
    """Just enough JSON Schema (the keywords the vendored subset uses) to check shapes.

    With `integer_ids`, a snowflake may be a JSON integer, as Discord takes it in a
    request (discord.py sends a message reference's ids so); it always answers strings.
    """

    def __init__(self, path: Path = SPEC_PATH, *, integer_ids: bool = False) -> None:
        self.spec: Json = json.loads(path.read_text(encoding="utf-8"))
        self.integer_ids = integer_ids
        self._routes = [
            (re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)) + "$"), t)
            for t in self.spec["paths"]
        ]

    def resolve(self, node: Json) -> Json:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def schema(self, name: str) -> Json:
        return self.resolve({"$ref": f"#/components/schemas/{name}"})

    def operation(self, method: str, path: str) -> Json | None:
        for pattern, template in self._routes:
            if pattern.match(path):
                found: Json | None = self.spec["paths"][template].get(method.lower())
                return found
        return None

    def body_schema(self, node: Json) -> Json | None:
        content = self.resolve(node).get("content", {}).get("application/json")
        return content["schema"] if content else None

    def errors(self, value: Any, schema: Json, where: str = "$") -> list[str]:
        schema = self.resolve(schema)
        if self.integer_ids and schema.get("format") == "snowflake" and _is_type(value, "integer"):
            return [] if 0 <= value < 2**64 else [f"{where}: {value} is no snowflake"]
        types = schema.get("type")
        if types is not None:
            allowed = [types] if isinstance(types, str) else types
            if not any(_is_type(value, t) for t in allowed):
                return [f"{where}: {type(value).__name__} is not {types}"]
        found = self._choices(value, schema, where)
        if "const" in schema and value != schema["const"]:
            found.append(f"{where}: {value!r} != {schema['const']!r}")
        if "enum" in schema and value not in schema["enum"]:
            found.append(f"{where}: {value!r} not in {schema['enum']}")
        if isinstance(value, dict):
            found += self._object(value, schema, where)
        elif isinstance(value, list):
            found += self._array(value, schema, where)
        elif isinstance(value, str):
            found += _string(value, schema, where)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found += _number(value, schema, where)
        return found

    def _choices(self, value: Any, schema: Json, where: str) -> list[str]:
        found = [e for part in schema.get("allOf", []) for e in self.errors(value, part, where)]
        if "oneOf" in schema:
            matches = sum(not self.errors(value, option, where) for option in schema["oneOf"])
            if matches != 1:
                found.append(f"{where}: matches {matches} of the oneOf options")
        if "anyOf" in schema and all(self.errors(value, o, where) for o in schema["anyOf"]):
            found.append(f"{where}: matches none of the anyOf options")
        return found

    def _object(self, value: Json, schema: Json, where: str) -> list[str]:
        found = [
            f"{where}: missing {key!r}" for key in schema.get("required", []) if key not in value
        ]
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                found += self.errors(item, properties[key], f"{where}.{key}")
            elif extra is False:
                found.append(f"{where}: unexpected {key!r}")
            elif isinstance(extra, dict):
                found += self.errors(item, extra, f"{where}.{key}")
        if len(value) > schema.get("maxProperties", len(value)):
            found.append(f"{where}: too many properties")
        return found

    def _array(self, value: list[Any], schema: Json, where: str) -> list[str]:
        found = []
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
            found.append(f"{where}: {len(value)} items out of bounds")
        if schema.get("uniqueItems") and len({json.dumps(v, sort_keys=True) for v in value}) < len(
            value
        ):
            found.append(f"{where}: items not unique")
        if "items" in schema:
            for index, item in enumerate(value):
                found += self.errors(item, schema["items"], f"{where}[{index}]")
        return found


def _is_type(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    kinds: dict[str, Any] = {
        "null": type(None),
        "boolean": bool,
        "integer": int,
        "number": (int, float),
        "string": str,
        "array": list,
        "object": dict,
    }
    return isinstance(value, kinds[name])


def _string(value: str, schema: Json, where: str) -> list[str]:
    found = []
    if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
        found.append(f"{where}: length {len(value)} out of bounds")
    if "pattern" in schema and not re.search(schema["pattern"], value):
        found.append(f"{where}: {value!r} does not match {schema['pattern']}")
    return found


def _number(value: float, schema: Json, where: str) -> list[str]:
    low, high = schema.get("minimum", value), schema.get("maximum", value)
    return [] if low <= value <= high else [f"{where}: {value} out of [{low}, {high}]"]


@dataclass
class Call:
    """One REST request the SDK made, and what it got."""

    method: str
    path: str
    body: Any
    status: int = 0
    at: float = field(default_factory=time.monotonic)  # when it arrived


@dataclass
class Session:
    """A gateway session: survives its connection, so that a RESUME can continue it."""

    session_id: str
    shard: list[int]
    seq: int = 0
    log: list[Json] = field(default_factory=list)  # the dispatches sent, for replays
    connection: Connection | None = None
    replay_from: int | None = None  # on the next RESUME, resend from this seq on
    intents: int = 0  # as IDENTIFY gave them


@dataclass
class Connection:
    ws: web.WebSocketResponse
    path: str
    query: dict[str, str]
    zlib: Any = None
    received: list[Json] = field(default_factory=list)
    session: Session | None = None

    async def send(self, payload: Json) -> None:
        data = json.dumps(payload)
        if self.zlib is None:
            await self.ws.send_str(data)
        else:  # zlib-stream: one shared context, each frame ends with a sync flush
            await self.ws.send_bytes(
                self.zlib.compress(data.encode()) + self.zlib.flush(zlib.Z_SYNC_FLUSH)
            )


class FakeDiscord:
    def __init__(self) -> None:
        self.spec = SpecChecker()
        self.request_spec = SpecChecker(integer_ids=True)
        self.bot = user("chatbot", bot=True)
        self.owner = user("owner")
        self.application_id = self.bot["id"]
        self.guild_id = snowflake()
        self.channel_id = snowflake()
        self.thread_id = snowflake()
        self.other_thread_id = snowflake()  # a second thread of the same channel
        self.calls: list[Call] = []
        self.violations: list[str] = []
        self.connections: list[Connection] = []
        self.sessions: dict[str, Session] = {}
        self.rate_limited_posts = 0  # the next N message posts get a 429
        self.rate_limited_edits = 0  # the next N message edits get a 429
        # The bot's messages by id: channel, the post's body, the content now (edits).
        self.bot_messages: dict[str, Json] = {}
        self.limits: Window | None = None  # per channel, once enforce_limits() is called
        self.limited = 0  # calls answered 429 for going over `limits`
        # Run before each REST call is answered (a test looking at the database then).
        self.before_answer: Callable[[Call], Awaitable[None]] | None = None
        self.rate_limit_via = True  # Discord's 429s carry Via; without it discord.py gives up
        self.failing_posts = 0  # the next N message posts get `failing_status`
        self.failing_status = 503
        self.message_content_allowed = True  # the privileged intent enabled in the portal
        self.forbidden_channels: set[str] = set()  # posting there: 403 Missing Permissions
        self.gone_channels: set[str] = set()  # deleted: 404 Unknown Channel
        # The guild (sent in GUILD_CREATE, so set before the bot connects): `owner` owns it,
        # `roles` besides @everyone (add_role), the text channel's `overwrites`.
        self.roles: list[Json] = []
        self.overwrites: list[Json] = []
        # GET /guilds/{guild_id}/members/{user_id}: whoever wrote in the guild (or owns it),
        # with the roles a test gave them (give_roles); with `member_error` set (status,
        # message, code) it fails so, with `member_answer` set it answers that, unchecked.
        self.member_roles: dict[str, list[str]] = {}
        self.member_error: tuple[int, str, int] | None = None
        self.member_answer: Any = NOT_SET
        self._members: dict[str, Json] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ---------------------------------------------------------------------

    def enforce_limits(self) -> None:
        """Limit message posts and edits as Discord does, 5 per 5 s per channel, saying
        what is left in the X-RateLimit headers (discord.py waits on them); a call over
        the limit is answered 429 and counted in `limited`."""
        self.limits = Window(limit=5, seconds=5.0)

    async def start(self) -> None:
        app = web.Application(middlewares=[self._api])
        routes = [
            ("GET", "/users/@me", self._me),
            ("GET", "/oauth2/applications/@me", self._application),
            ("GET", "/gateway/bot", self._gateway_bot),
            ("POST", "/channels/{channel_id}/messages", self._create_message),
            ("PATCH", "/channels/{channel_id}/messages/{message_id}", self._edit_message),
            ("POST", "/channels/{channel_id}/typing", self._typing),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/guilds/{guild_id}/members/{user_id}", self._member),
            ("*", "/{tail:.*}", self._not_found),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, API + path, handler)
        for path in ("/gateway", "/resume-gateway", "/proxied-gateway"):
            app.router.add_get(path, self._gateway)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        for connection in self.connections:
            if not connection.ws.closed:
                await connection.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}{API}"

    def ws_url(self, path: str = "/gateway") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    # -- what the tests use ------------------------------------------------------------

    def message(
        self,
        author: Json,
        content: str,
        *,
        channel_id: str | None = None,
        guild: bool = False,
        mentions: tuple[Json, ...] = (),
        reply_to: Json | None = None,
    ) -> Json:
        """A MESSAGE_CREATE payload; a DM unless `guild` (then in the server's text channel);
        a reply (type 19) to the message `reply_to` if given."""
        data: Json = {
            "id": snowflake(),
            "channel_id": channel_id or (self.channel_id if guild else snowflake()),
            "type": 0, "content": content, "author": author,
            "mentions": list(mentions), "mention_roles": [], "mention_everyone": False,
            "attachments": [], "embeds": [], "components": [], "pinned": False, "tts": False,
            "timestamp": now(), "edited_timestamp": None, "flags": 0,
        }  # fmt: skip
        if reply_to is not None:
            data["type"] = 19
            data["referenced_message"] = reply_to
            data["message_reference"] = {"type": 0, "channel_id": reply_to["channel_id"],
                                         "message_id": reply_to["id"]}  # fmt: skip
        if guild:
            data["guild_id"] = self.guild_id
            data["member"] = {"roles": [], "joined_at": now(), "deaf": False, "mute": False,
                              "flags": 0, "pending": False}  # fmt: skip
        return data

    def add_role(self, name: str, permissions: int) -> str:
        """A role of the guild with these permission bits; its id. Before the bot connects."""
        assert not self.sessions, "roles go out in GUILD_CREATE: add them before connecting"
        role_id = snowflake()
        self.roles.append(_role(role_id, name, permissions, position=len(self.roles) + 1))
        return role_id

    def overwrite(self, role_id: str, *, allow: int = 0, deny: int = 0) -> None:
        """In the text channel (and so its threads), the role gains `allow`, loses `deny`."""
        assert not self.sessions, "overwrites go out in GUILD_CREATE: set them before connecting"
        self.overwrites.append({"id": role_id, "type": 0, "allow": str(allow), "deny": str(deny)})

    def give_roles(self, person: Json, *role_ids: str) -> None:
        """What the member fetch says `person`'s roles are (none unless given)."""
        self.member_roles[person["id"]] = list(role_ids)

    def member(self, person: Json) -> Json:
        """`person` as a GuildMemberResponse of the guild, with the roles given them."""
        return {"user": person, "roles": self.member_roles.get(person["id"], []),
                "joined_at": now(), "deaf": False, "mute": False, "flags": 0, "pending": False,
                "nick": None, "avatar": None, "banner": None, "premium_since": None,
                "communication_disabled_until": None}  # fmt: skip

    def member_path(self, person: Json) -> str:
        return f"/guilds/{self.guild_id}/members/{person['id']}"

    async def push_message(self, data: Json, shard: int = 0) -> int:
        self._check(data, "MessageResponse", "MESSAGE_CREATE")
        if data.get("guild_id") == self.guild_id:  # the author is a member from now on
            self._members[data["author"]["id"]] = data["author"]
        return await self.dispatch("MESSAGE_CREATE", data, shard)

    def reaction(
        self,
        person: Json,
        post: Json,
        emoji: str,
        *,
        added: bool = True,
        guild: bool = False,
    ) -> Json:
        """A MESSAGE_REACTION_ADD (or, not `added`, _REMOVE) payload: `person` puts the
        unicode `emoji` on (or takes it off) the message `post` (a MESSAGE_CREATE payload,
        or a message of the bot's as `bot_message` gives it)."""
        data: Json = {
            "user_id": person["id"], "channel_id": post["channel_id"], "message_id": post["id"],
            "emoji": {"id": None, "name": emoji}, "type": 0, "burst": False,
        }  # fmt: skip
        if guild:
            data["guild_id"] = self.guild_id
        if added:
            data["burst_colors"] = []
            data["message_author_id"] = post["author"]["id"]
            if guild:
                data["member"] = {**self.member(person), "user": person}
        return data

    def bot_message(self, message_id: str) -> Json:
        """A message the bot posted, as a reaction payload names it."""
        found = self.bot_messages[message_id]
        return {"id": message_id, "channel_id": found["channel_id"], "author": self.bot}

    async def push_reaction(self, data: Json, shard: int = 0) -> int | None:
        """Dispatch a reaction payload (from `reaction`) if the session's intents ask
        for reactions of its kind (in a guild, in a DM); its seq, or None if not sent."""
        wanted = (
            INTENT_GUILD_MESSAGE_REACTIONS
            if "guild_id" in data
            else (INTENT_DIRECT_MESSAGE_REACTIONS)
        )
        if not self.session(shard).intents & wanted:
            return None
        event = "MESSAGE_REACTION_ADD" if "message_author_id" in data else "MESSAGE_REACTION_REMOVE"
        return await self.dispatch(event, data, shard)

    async def dispatch(self, event: str, data: Json, shard: int = 0) -> int:
        session = self.session(shard)
        session.seq += 1
        payload = {"op": 0, "t": event, "s": session.seq, "d": data}
        session.log.append(payload)
        assert session.connection is not None, "shard not connected"
        await session.connection.send(payload)
        return session.seq

    async def reconnect(self, shard: int = 0, *, replay_from: int | None = None) -> None:
        """Ask the client to reconnect (op 7); on its RESUME, resend from `replay_from` on,
        as Discord does for events whose delivery it is not sure of."""
        session = self.session(shard)
        session.replay_from = replay_from
        assert session.connection is not None
        await session.connection.send({"op": 7, "d": None, "s": None, "t": None})

    def session(self, shard: int = 0) -> Session:
        live = [s for s in self.sessions.values() if s.shard[0] == shard]
        assert live, f"no gateway session for shard {shard}"
        return live[-1]

    def received(self, op: int) -> list[Json]:
        return [p for c in self.connections for p in c.received if p.get("op") == op]

    def posts(self, channel_id: str | None = None) -> list[Json]:
        """Bodies of the bot's messages as they read now (the content as last edited),
        but those still being written (ending with the adapter's cursor)."""
        return [
            {**found["body"], "content": found["content"]}
            for found in self.bot_messages.values()
            if not found["content"].endswith(CURSOR)
            and (channel_id is None or found["channel_id"] == channel_id)
        ]

    def edits(self) -> list[Call]:
        return [c for c in self.calls if c.method == "PATCH" and c.status == 200]

    def calls_to(self, method: str, path: str) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.path == path]

    async def wait_for(self, condition: Callable[[], Any], within: float = 8.0) -> None:
        deadline = asyncio.get_running_loop().time() + within
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; calls so far: {self.calls}")
            await asyncio.sleep(0.02)

    # -- REST --------------------------------------------------------------------------

    @web.middleware
    async def _api(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if not request.path.startswith(API):
            response: web.StreamResponse = await handler(request)
            return response
        path = request.path.removeprefix(API)
        body = await request.json() if request.can_read_body else None
        call = Call(request.method, path, body)
        self.calls.append(call)
        operation = self.spec.operation(request.method, path)
        if operation is None:
            self.violations.append(f"{request.method} {path}: not in the spec")
        elif body is not None and "requestBody" in operation:
            schema = self.spec.body_schema(operation["requestBody"])
            self._check(body, schema, f"{path} request", self.request_spec)
        if request.headers.get("Authorization") != f"Bot {TOKEN}":
            response = _error(401, "401: Unauthorized")
        else:
            if self.before_answer is not None:
                await self.before_answer(call)
            response = await handler(request)
        call.status = response.status
        checked = isinstance(response, web.Response) and not response.get(UNCHECKED)
        if operation is not None and checked:
            self._check_response(operation, path, response)  # type: ignore[arg-type]
        return response

    def _check_response(self, operation: Json, path: str, response: web.Response) -> None:
        if response.status >= 500:
            return  # outages come from Discord's edge, not the API: the spec has no 5xx
        spec = operation["responses"].get(str(response.status)) or operation["responses"].get(
            f"{str(response.status)[0]}XX"
        )
        if spec is None:
            self.violations.append(f"{path}: status {response.status} not in the spec")
            return
        schema = self.spec.body_schema(spec)
        if schema is not None and isinstance(response.body, bytes):
            self._check(json.loads(response.body), schema, f"{path} response")

    def _check(
        self, value: Any, schema: Json | str | None, where: str, spec: SpecChecker | None = None
    ) -> None:
        if schema is None:
            return
        spec = spec or self.spec
        resolved = spec.schema(schema) if isinstance(schema, str) else schema
        self.violations += [f"{where}: {e}" for e in spec.errors(value, resolved)]

    async def _me(self, request: web.Request) -> web.Response:
        return _json({**self.bot, "mfa_enabled": False, "locale": "en-US", "verified": True})

    async def _application(self, request: web.Request) -> web.Response:
        return _json({
            "id": self.application_id, "name": "chatbot", "icon": None, "description": "",
            "type": None, "verify_key": "0" * 64, "flags": 0, "flags_new": "0",
            "redirect_uris": [], "interactions_endpoint_url": None,
            "role_connections_verification_url": None, "owner": self.owner,
            "approximate_guild_count": 1, "approximate_user_install_count": 0,
            "approximate_user_authorization_count": 0, "explicit_content_filter": 0,
            "team": None, "eligible_oauth2_scopes": ["bot"], "bot_public": True,
            "bot_require_code_grant": False, "bot": self.bot,
        })  # fmt: skip

    async def _gateway_bot(self, request: web.Request) -> web.Response:
        limit = {"total": 1000, "remaining": 999, "reset_after": 14_400_000, "max_concurrency": 1}
        return _json({"url": self.ws_url(), "shards": 1, "session_start_limit": limit})

    async def _create_message(self, request: web.Request) -> web.Response:
        if request.match_info["channel_id"] in self.gone_channels:
            return _error(404, "Unknown Channel", ERROR_UNKNOWN_CHANNEL)
        if request.match_info["channel_id"] in self.forbidden_channels:
            return _error(403, "Missing Permissions", 50013)
        if self.rate_limited_posts > 0:
            self.rate_limited_posts -= 1
            return self._rate_limited()
        if self.failing_posts > 0:
            self.failing_posts -= 1
            return web.Response(status=self.failing_status, text="upstream connect error")
        body = await request.json()
        if len(body.get("content") or "") > MAX_CONTENT:
            return _error(400, "Invalid Form Body", 50035)
        channel_id = request.match_info["channel_id"]
        headers = self._spend(channel_id)
        if isinstance(headers, web.Response):
            return headers
        message = self.message(self.bot, body.get("content") or "", channel_id=channel_id)
        found = {"channel_id": channel_id, "body": body, "content": message["content"]}
        self.bot_messages[message["id"]] = found
        return _json(message, headers=headers)

    async def _edit_message(self, request: web.Request) -> web.Response:
        if self.rate_limited_edits > 0:
            self.rate_limited_edits -= 1
            return self._rate_limited()
        found = self.bot_messages.get(request.match_info["message_id"])
        if found is None or found["channel_id"] != request.match_info["channel_id"]:
            return _error(404, "Unknown Message", 10008)
        body = await request.json()
        if len(body.get("content") or "") > MAX_CONTENT:
            return _error(400, "Invalid Form Body", 50035)
        headers = self._spend(found["channel_id"])
        if isinstance(headers, web.Response):
            return headers
        found["content"] = body.get("content", found["content"])
        message = self.message(self.bot, found["content"], channel_id=found["channel_id"])
        message.update(id=request.match_info["message_id"], edited_timestamp=now())
        return _json(message, headers=headers)

    def _spend(self, channel_id: str) -> dict[str, str] | web.Response:
        """One message write in the channel: the rate limit headers to answer with, or
        the 429 when it is over the limit (enforce_limits)."""
        if self.limits is None:
            return _limits()
        allowed, left, reset = self.limits.take(channel_id)
        headers = {
            "X-RateLimit-Limit": str(self.limits.limit), "X-RateLimit-Remaining": str(left),
            "X-RateLimit-Reset": f"{time.time() + reset:.3f}",
            "X-RateLimit-Reset-After": f"{reset:.3f}",
            "X-RateLimit-Bucket": f"messages-{channel_id}", "Via": "1.1 google",
        }  # fmt: skip
        if allowed:
            return headers
        self.limited += 1
        body = {"message": "You are being rate limited.", "retry_after": round(reset, 3),
                "global": False, "code": 0}  # fmt: skip
        return _json(body, status=429, headers={**headers, "Retry-After": f"{reset:.3f}"})

    def _rate_limited(self) -> web.Response:
        headers = {
            "Retry-After": "1", "X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{time.time() + 0.5:.3f}", "X-RateLimit-Reset-After": "0.500",
            "X-RateLimit-Bucket": "fake-bucket", "X-RateLimit-Scope": "user",
        }  # fmt: skip
        if self.rate_limit_via:
            headers["Via"] = "1.1 google"
        body = {"message": "You are being rate limited.", "retry_after": 0.5, "global": False,
                "code": 0}  # fmt: skip
        return _json(body, status=429, headers=headers)

    async def _typing(self, request: web.Request) -> web.Response:
        if request.match_info["channel_id"] in self.forbidden_channels:
            return _error(403, "Missing Permissions", 50013)
        return web.Response(status=204, headers=_limits())

    async def _create_dm(self, request: web.Request) -> web.Response:
        body = await request.json()
        recipient = user("someone", user_id=str(body.get("recipient_id")))
        return _json({"id": snowflake(), "type": 1, "flags": 0, "recipients": [recipient],
                      "last_message_id": None})  # fmt: skip

    async def _member(self, request: web.Request) -> web.Response:
        if self.member_error is not None:
            return _error(*self.member_error)
        if self.member_answer is not NOT_SET:
            response = _json(self.member_answer)
            response[UNCHECKED] = True
            return response
        if request.match_info["guild_id"] != self.guild_id:
            return _error(404, "Unknown Guild", ERROR_UNKNOWN_GUILD)
        members = {**self._members, self.owner["id"]: self.owner, self.bot["id"]: self.bot}
        person = members.get(request.match_info["user_id"])
        if person is None:
            return _error(404, "Unknown Member", ERROR_UNKNOWN_MEMBER)
        return _json(self.member(person))

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, "404: Not Found")

    # -- gateway -----------------------------------------------------------------------

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = Connection(ws, request.path, dict(request.query))
        if request.query.get("compress") == "zlib-stream":
            connection.zlib = zlib.compressobj()
        self.connections.append(connection)
        hello = {"heartbeat_interval": HEARTBEAT_INTERVAL_MS}
        await connection.send({"op": 10, "d": hello, "s": None, "t": None})
        async for frame in ws:
            if frame.type is WSMsgType.TEXT:
                payload = json.loads(frame.data)
                connection.received.append(payload)
                await self._on_frame(connection, payload)
        return ws

    async def _on_frame(self, connection: Connection, payload: Json) -> None:
        op, data = payload.get("op"), payload.get("d") or {}
        if op == 1:  # heartbeat
            await connection.send({"op": 11, "d": None, "s": None, "t": None})
        elif op == 2:  # identify
            await self._identify(connection, data)
        elif op == 6:  # resume
            await self._resume(connection, data)

    async def _identify(self, connection: Connection, data: Json) -> None:
        if data.get("token") != TOKEN:
            await connection.ws.close(code=4004, message=b"Authentication failed.")
            return
        wants_content = bool(data.get("intents", 0) & INTENT_MESSAGE_CONTENT)
        if wants_content and not self.message_content_allowed:
            await connection.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = list(data.get("shard") or [0, 1])
        session = Session(uuid.uuid4().hex, shard, connection=connection)
        session.intents = int(data.get("intents", 0))
        self.sessions[session.session_id] = session
        connection.session = session
        here = (int(self.guild_id) >> 22) % shard[1] == shard[0]
        await self.dispatch("READY", {
            "v": 10, "user": self.bot, "session_type": "normal", "session_id": session.session_id,
            "resume_gateway_url": self.ws_url("/resume-gateway"), "shard": shard,
            "guilds": [{"id": self.guild_id, "unavailable": True}] if here else [],
            "application": {"id": self.application_id, "flags": 0}, "private_channels": [],
        }, shard[0])  # fmt: skip
        if here:
            await self.dispatch("GUILD_CREATE", self._guild(), shard[0])

    async def _resume(self, connection: Connection, data: Json) -> None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or data.get("token") != TOKEN:
            await connection.send({"op": 9, "d": False, "s": None, "t": None})
            return
        session.connection, connection.session = connection, session
        start = session.replay_from if session.replay_from is not None else data["seq"] + 1
        session.replay_from = None
        for payload in [p for p in session.log if p["s"] >= start]:
            await connection.send(payload)
        await self.dispatch("RESUMED", {}, session.shard[0])

    def _guild(self) -> Json:
        guild_id = self.guild_id  # @everyone has the guild's id
        roles = [_role(guild_id, "@everyone", EVERYONE, position=0), *self.roles]
        guild = {
            "id": guild_id, "name": "Test server", "icon": None, "description": None,
            "home_header": None, "splash": None, "discovery_splash": None, "features": [],
            "banner": None, "owner_id": self.owner["id"], "application_id": None,
            "region": "deprecated", "afk_channel_id": None, "afk_timeout": 300,
            "system_channel_id": None, "system_channel_flags": 0, "widget_enabled": False,
            "widget_channel_id": None, "verification_level": 0, "roles": roles,
            "default_message_notifications": 0, "mfa_level": 0, "explicit_content_filter": 0,
            "max_presences": None, "max_members": 500000, "max_stage_video_channel_users": 50,
            "max_video_channel_users": 25, "vanity_url_code": None, "premium_tier": 0,
            "premium_subscription_count": 0, "preferred_locale": "en-US",
            "rules_channel_id": None, "safety_alerts_channel_id": None,
            "public_updates_channel_id": None, "premium_progress_bar_enabled": False,
            "nsfw": False, "nsfw_level": 0, "emojis": [], "stickers": [], "incidents_data": None,
        }  # fmt: skip
        self._check(guild, "GuildResponse", "GUILD_CREATE")
        channel = {"id": self.channel_id, "type": 0, "flags": 0, "guild_id": guild_id,
                   "name": "general", "position": 0,
                   "permission_overwrites": self.overwrites,
                   "topic": None, "nsfw": False, "last_message_id": None,
                   "rate_limit_per_user": 0, "parent_id": None}  # fmt: skip
        threads = [
            {"id": thread_id, "type": 11, "flags": 0, "guild_id": guild_id,
             "parent_id": self.channel_id, "name": name, "owner_id": self.owner["id"],
             "message_count": 0, "member_count": 1, "total_message_sent": 0,
             "last_message_id": None, "rate_limit_per_user": 0,
             "thread_metadata": {"archived": False, "archive_timestamp": now(),
                                 "auto_archive_duration": 1440, "locked": False,
                                 "create_timestamp": now()}}
            for thread_id, name in ((self.thread_id, "a thread"),
                                    (self.other_thread_id, "another thread"))
        ]  # fmt: skip
        member = self.member(self.bot)
        self._check(channel, "GuildChannelResponse", "GUILD_CREATE channel")
        for thread in threads:
            self._check(thread, "ThreadResponse", "GUILD_CREATE thread")
        self._check(member, "GuildMemberResponse", "GUILD_CREATE member")
        extra = {"joined_at": now(), "large": False, "unavailable": False, "member_count": 2,
                 "members": [member], "channels": [channel], "threads": threads,
                 "voice_states": [], "presences": [], "stage_instances": [],
                 "guild_scheduled_events": [], "soundboard_sounds": []}  # fmt: skip
        return {**guild, **extra}


def _role(role_id: str, name: str, permissions: int, position: int) -> Json:
    return {"id": role_id, "name": name, "permissions": str(permissions), "position": position,
            "color": 0, "hoist": False, "managed": False, "mentionable": False, "icon": None,
            "unicode_emoji": None, "flags": 0,
            "colors": {"primary_color": 0, "secondary_color": None,
                       "tertiary_color": None}}  # fmt: skip


def _limits() -> dict[str, str]:
    return {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "4",
            "X-RateLimit-Reset": f"{time.time() + 1:.3f}", "X-RateLimit-Reset-After": "1.000",
            "X-RateLimit-Bucket": "fake-bucket", "Via": "1.1 google"}  # fmt: skip


def _json(body: Json, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json", as Discord sends it: discord.py compares the whole header.
    headers = {**(headers or _limits()), "Content-Type": "application/json"}
    return web.Response(body=json.dumps(body).encode(), status=status, headers=headers)


def _error(status: int, message: str, code: int = 0) -> web.Response:
    return _json({"message": message, "code": code}, status=status)
