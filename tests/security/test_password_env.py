"""A password kept out of DATABASE_URL: libpq's PGPASSWORD, which asyncpg and pg_dump
read, so a password with `@`, `/` or `#` needs no URL-encoding (docker-compose.yml
passes POSTGRES_PASSWORD so). The password never shows in what the bot prints."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from tests.security.conftest import admin_execute, bot_env, run_bot, unique
from tests.security.servers import OwnPostgres

PASSWORD = "p@ss/w#rd:with&url?chars"


async def test_the_database_password_may_come_from_pgpassword(
    own_pg: OwnPostgres, scratch_database: str, tmp_path: Path
) -> None:
    role = unique("env_pw")
    await admin_execute(
        own_pg.admin_url,
        f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'",
        f'ALTER DATABASE "{scratch_database}" OWNER TO {role}',
    )
    url = f"postgresql://{role}@127.0.0.1:{own_pg.port}/{scratch_database}?sslmode=require"
    env = bot_env(tmp_path, DATABASE_URL=url, REDIS_URL="redis://127.0.0.1:6379/0")

    refused = await run_bot("migrate", cwd=tmp_path, env=env)
    migrated = await run_bot("migrate", cwd=tmp_path, env={**env, "PGPASSWORD": PASSWORD})

    assert refused.code == 1 and "password authentication failed" in refused.err
    assert migrated.code == 0, migrated.err
    assert "database at revision" in migrated.out
    for shown in (refused.out, refused.err, migrated.out, migrated.err):
        assert PASSWORD not in shown and quote(PASSWORD, safe="") not in shown
