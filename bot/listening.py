"""Listening on a TCP port an operator chose: a port that cannot be had (in use, not
allowed, no such address) is one line naming the setting, not a traceback."""

from __future__ import annotations

import os

from aiohttp import web

from bot.errors import ConfigError


async def start_site(runner: web.AppRunner, host: str, port: int, setting: str) -> None:
    """Serve `runner` on host:port, or ConfigError naming `setting` (e.g. HTTP_PORT)."""
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise ConfigError(
            f"cannot listen on {host}:{port} ({setting}={port}): {reason}; "
            f"set {setting} to a free port (another bot already running?)"
        ) from None
