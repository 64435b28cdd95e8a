"""Chats' settings: Postgres holds them (`chat_configs`), Redis caches them, each worker
keeps the ones it uses in memory.

A message in a group or thread is answered with its chat's settings (and its thread's)
laid over its platform's `channel_configs` row. The worker reads them before the
message's turn (the conversation mode decides which turn it takes): from memory, else
from Redis (one round trip, a chat without settings cached as 'none'), else from
Postgres. Ops change a row, drop its Redis key and announce the change on pub/sub;
every worker drops its copy at once, and copies live at most CHANNEL_CONFIG_TTL_SECONDS
in case an announcement is lost. Without Redis, Postgres answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bot.cache.chat_configs import ChatConfigCache, Place, place_of
from bot.cache.pubsub import Notice, follow
from bot.domain import ChannelSettings, ChatConfigRow, Scope
from bot.errors import CacheUnavailable
from bot.local import cancel_until_done
from bot.store.chat_configs import ChatConfigQueries

log = logging.getLogger(__name__)

NONE = ChannelSettings()
CAPACITY = 10_000  # chats a worker keeps in memory; the least recently used go first

Layer = ChannelSettings | None  # a row's settings; None: no row


class ChatConfigs:
    def __init__(
        self,
        cache: ChatConfigCache,
        store: ChatConfigQueries,
        lifetime: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cache = cache
        self.store = store
        self.lifetime = lifetime
        self._clock = clock
        self._memory: OrderedDict[Place, tuple[Layer, float]] = OrderedDict()
        self._listener: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # subscribed: changes are heard at once
        # Places being fetched: the members of a chat writing at once share one fetch.
        self._fetching: dict[tuple[Place, ...], asyncio.Future[dict[Place, Layer]]] = {}

    async def layer_for(self, channel: str, scope: Scope) -> ChannelSettings:
        """The settings of the chat (and thread) `scope` names, to lay over its platform's;
        nothing for a private chat."""
        if scope.private or scope.chat_id is None:
            return NONE
        places = [Place(channel, scope.chat_id)]
        if scope.thread_id is not None:
            places.append(Place(channel, scope.chat_id, scope.thread_id))
        result = NONE
        for layer in await self._layers(places):
            result = layer.over(result) if layer is not None else result
        return result

    async def _layers(self, places: Sequence[Place]) -> list[Layer]:
        now = self._clock()
        known: dict[Place, Layer] = {}
        for place in places:
            entry = self._memory.get(place)
            if entry is not None and entry[1] > now:
                self._memory.move_to_end(place)
                known[place] = entry[0]
        missing = tuple(place for place in places if place not in known)
        if missing:
            known.update(await self._fetch_once(missing))
        return [known[place] for place in places]

    async def _fetch_once(self, places: tuple[Place, ...]) -> dict[Place, Layer]:
        pending = self._fetching.get(places)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[dict[Place, Layer]] = asyncio.get_running_loop().create_future()
        self._fetching[places] = future
        try:
            found = await self._fetch(list(places))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a fetch nobody else awaited is no error left over
            raise
        finally:
            self._fetching.pop(places, None)
        future.set_result(found)
        return found

    async def _fetch(self, places: list[Place]) -> dict[Place, Layer]:
        found: dict[Place, Layer] = {}
        try:
            cached = await self.cache.read(places)
        except CacheUnavailable:
            cached = [None] * len(places)
        for place, hit in zip(places, cached, strict=True):
            if hit is not None:
                found[place] = hit.layer
        unknown = [place for place in places if place not in found]
        if unknown:
            loaded = await self._load(unknown)
            found.update(loaded)
            with contextlib.suppress(CacheUnavailable):
                await self.cache.write(list(loaded.items()))
        for place, layer in found.items():
            self._remember(place, layer)
        return found

    async def _load(self, places: list[Place]) -> dict[Place, Layer]:
        first = places[0]
        thread = next((p.thread_id for p in places if p.thread_id), None)
        chat, in_thread = await self.store.layers(first.channel, first.chat_id, thread)
        return {place: in_thread if place.thread_id else chat for place in places}

    def _remember(self, place: Place, layer: Layer) -> None:
        self._memory[place] = (layer, self._clock() + self.lifetime)
        self._memory.move_to_end(place)
        while len(self._memory) > CAPACITY:
            self._memory.popitem(last=False)

    async def change(
        self, channel: str, scope: Scope, patch: dict[str, Any], removed: Sequence[str]
    ) -> ChatConfigChange:
        """Change the settings of the chat (or thread) `scope` names, as `/config` does:
        in Postgres, then in Redis and in every worker, this one at once."""
        if scope.chat_id is None:
            raise ValueError("a private chat has no settings of its own")
        place = Place(channel, scope.chat_id, scope.thread_id)
        change = await change_chat_config(self.store, self.cache, place, patch, removed)
        self.forget(place)
        return change

    def forget(self, place: Place | None = None) -> None:
        """Drop one place's copy (all of them with None): the next message reads it again."""
        if place is None:
            self._memory.clear()
        else:
            self._memory.pop(place, None)

    # --- following ops' changes -------------------------------------------------------

    async def start(self) -> None:
        """Listen for changes until stop(); wait (briefly) until the subscription stands."""
        self._listener = asyncio.create_task(
            follow(
                lambda: self.cache.invalidations(poll=self.lifetime),
                self._on_notice,
                self._lost,
                self.lifetime,
            ),
            name="chat-configs-listener",
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.listening.wait(), self.cache.guard.op_timeout * 4)

    def _lost(self) -> None:
        self.listening.clear()
        self.forget()  # announcements may have been missed meanwhile

    async def stop(self) -> None:
        if self._listener is not None:
            await cancel_until_done(self._listener)
            self._listener = None

    async def _on_notice(self, notice: Notice) -> None:
        if notice.subscribed:
            self.listening.set()
            return
        place = place_of(notice)
        self.forget(place) if place is not None else self.forget()


@dataclass(frozen=True, slots=True)
class ChatConfigChange:
    row: ChatConfigRow | None  # the row after the change; None: nothing left set
    dropped: bool  # the Redis copy was dropped and the workers told
    notified: int | None  # workers that heard the announcement; None: not published
    error: str | None = None  # why Redis could not be told (workers follow within the TTL)


async def change_chat_config(
    store: ChatConfigQueries,
    cache: ChatConfigCache,
    place: Place,
    patch: dict[str, Any],
    removed: Sequence[str],
) -> ChatConfigChange:
    """Change a chat's row in Postgres, then drop its Redis copy and tell every worker.

    Postgres is the source of truth: a Redis that cannot be told leaves the old copies
    for at most CHANNEL_CONFIG_TTL_SECONDS, and the change stands.
    """
    thread = place.thread_id or ""
    row = await store.update(place.channel, place.chat_id, thread, patch, removed)
    try:
        heard = await cache.drop(place)
    except CacheUnavailable as exc:
        return ChatConfigChange(row, False, None, str(exc))
    return ChatConfigChange(row, True, heard)
