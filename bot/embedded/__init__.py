"""Real local PostgreSQL and Redis servers, run from the binaries that pip packages ship.

Used when the operator configured no DATABASE_URL / REDIS_URL, and by tests that need a server
they own. Data lives under a data directory, so it survives restarts. A server already running
for a data directory is reused: whoever launched it stops it, and a run that finds one whose
launcher is gone adopts it and stops it at exit.
"""

from bot.embedded.postgres import EmbeddedPostgres
from bot.embedded.process import HOST
from bot.embedded.redis_server import EmbeddedRedis

__all__ = ["HOST", "EmbeddedPostgres", "EmbeddedRedis"]
