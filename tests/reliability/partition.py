"""A TCP proxy in front of Postgres that cuts the network right after a COMMIT got
through: the server commits, its answer never reaches the bot, and no new connection
gets through until the partition heals."""

from __future__ import annotations

import asyncio
import contextlib

HOST = "127.0.0.1"
# The simple-query message asyncpg sends for `execute("COMMIT")`: the warm write path's.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class Partition:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.armed = False  # cut after the next COMMIT
        self.cut = False
        self._healed = asyncio.Event()
        self._healed.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/{database}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.heal()
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

    def heal(self) -> None:
        self.cut = False
        self._healed.set()

    def _cut(self) -> None:
        self.armed, self.cut = False, True
        self._healed.clear()

    async def _serve(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        self._writers.add(client)
        try:
            await self._healed.wait()  # a connection made during the cut hangs
            server_in, server = await asyncio.open_connection(HOST, self.upstream_port)
            self._writers.add(server)
            try:
                await asyncio.gather(
                    self._pump(client_in, server, watch=True), self._pump(server_in, client)
                )
            finally:
                server.close()
                self._writers.discard(server)
        finally:
            client.close()
            self._writers.discard(client)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, watch: bool = False
    ) -> None:
        """Forward until either side closes; while cut, hold what comes (a lost packet)."""
        with contextlib.suppress(ConnectionError):
            while data := await source.read(65536):
                await self._healed.wait()
                sink.write(data)
                await sink.drain()
                if watch and self.armed and COMMIT in data:
                    self._cut()
        sink.close()
