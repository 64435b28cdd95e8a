"""redis-servers of a test's own, on free ports: a plain one, a cluster node, a replica,
sentinels. Each is killed (SIGKILL) when its block ends; a test may kill one sooner."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.security.servers import redis_server_bin
from tests.support import free_port


@dataclass
class RedisProcess:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)


@contextmanager
def redis_server(directory: Path, *args: str, config: str = "") -> Iterator[RedisProcess]:
    """A redis-server with `args` (and a config file of `config`, if given)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [redis_server_bin()]
    if config:
        (directory / "redis.conf").write_text(config)
        command.append(str(directory / "redis.conf"))
    command += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    command += ["--dir", str(directory), *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield RedisProcess(port, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


async def answering(url: str) -> None:
    """Once the server at `url` answers PING (it is starting)."""
    client = Redis.from_url(url)
    try:
        for _ in range(500):
            try:
                await client.ping()
                return
            except RedisConnectionError:
                await asyncio.sleep(0.02)
        raise AssertionError(f"{url} never answered")
    finally:
        await client.aclose()
