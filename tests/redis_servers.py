"""redis-servers of a test's own, on free ports: a plain one, a cluster node, a whole
cluster, a replica, sentinels. Each is killed (SIGKILL) when its block ends; a test may
kill one sooner."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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
def redis_server(
    directory: Path, *args: str, config: str = "", port: int | None = None
) -> Iterator[RedisProcess]:
    """A redis-server with `args` (and a config file of `config`, if given), on `port`
    (one that was another's, to restart it) or a free one. It loads the RDB file of
    `directory` (dump.rdb) if there is one, and writes one only when told (SAVE)."""
    directory.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
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


@dataclass
class RedisCluster:
    """A Redis Cluster of the test's own: `primaries`, each with `replicas` replicas."""

    nodes: list[RedisProcess]

    @property
    def url(self) -> str:
        """Any one node: the bot discovers the rest from it."""
        return self.nodes[0].url

    def seeds(self) -> str:
        """Every node, as REDIS_CLUSTER_NODES takes them."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)


@contextmanager
def redis_cluster(directory: Path, primaries: int = 3, replicas: int = 1) -> Iterator[RedisCluster]:
    """A real cluster, slots spread over the primaries by `redis-cli --cluster create`;
    every node killed when the block ends."""
    with ExitStack() as stack:
        nodes = [
            stack.enter_context(
                redis_server(
                    directory / f"node{number}",
                    *("--cluster-enabled", "yes", "--cluster-node-timeout", "2000"),
                    *("--repl-diskless-sync-delay", "0"),  # replicas in sync at once
                    # The bus port must be given: port + 10000 may be taken, or over 65535.
                    *("--cluster-port", str(free_port())),
                )
            )
            for number in range(primaries * (1 + replicas))
        ]
        for node in nodes:
            _wait_until(lambda n=node: _answers(n.port), f"node {node.port} to start")
        addresses = [f"127.0.0.1:{node.port}" for node in nodes]
        create = ["--cluster", "create", *addresses, "--cluster-replicas", str(replicas)]
        created = subprocess.run(
            [_redis_cli(), *create, "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stdout + created.stderr
        for node in nodes:
            _wait_until(lambda n=node: _cluster_ok(n.port), f"node {node.port} to join")
            _wait_until(lambda n=node: _in_sync(n.port), f"node {node.port} to sync")
        yield RedisCluster(nodes)


def _redis_cli() -> str:
    return str(Path(redis_server_bin()).with_name("redis-cli"))


def _cli(port: int, *command: str) -> str:
    done = subprocess.run(
        [_redis_cli(), "-p", str(port), *command], capture_output=True, text=True, timeout=10
    )
    return done.stdout


def _answers(port: int) -> bool:
    return _cli(port, "PING").strip() == "PONG"


def _cluster_ok(port: int) -> bool:
    return "cluster_state:ok" in _cli(port, "CLUSTER", "INFO")


def _in_sync(port: int) -> bool:
    """A primary, or a replica whose link to its primary is up (it can take over)."""
    info = _cli(port, "INFO", "replication")
    return "role:master" in info or "master_link_status:up" in info


def _wait_until(condition: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {within:g} s for {what}")
        time.sleep(0.05)
