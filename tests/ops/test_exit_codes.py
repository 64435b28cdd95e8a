"""The exit-code rule of `bot ops` (bot/ops/handler.py, README "Operating the bot"),
command by command: 0 done; 1 not done (a store down, the thing named missing, a
deletion answered no); 2 bad input (an argument, a missing --yes, a setting). With
--json every run prints exactly one JSON object on standard output; a failure's is
{"error": …, "exit_code": …}, the error being the line printed on standard error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.service import ConversationService
from tests.ops.conftest import Ops, Ran, seed
from tests.support import free_port, new_user

pytestmark = pytest.mark.timeout(30)

# A store nothing listens for, with every Postgres wait bounded: "down" is told at once.
PG_DOWN = {
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:{port}/x",
    "DB_CONNECT_TIMEOUT_SECONDS": "1",
    "DB_RETRY_DEADLINE_SECONDS": "1",
}
REDIS_DOWN = {"REDIS_URL": "redis://127.0.0.1:{port}/0"}
OK, FAILED, BAD_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Case:
    argv: str  # split on spaces; {user}, {conversation}, {tmp}, {nobody}, {uuid} filled in
    code: int
    says: str = ""  # in the line on standard error
    env: dict[str, str] = field(default_factory=dict)
    report: bool = False  # a failure told by the command's own report ("ok": false)

    def __str__(self) -> str:
        down = " [postgres down]" if self.env is PG_DOWN else ""
        down = " [redis down]" if self.env is REDIS_DOWN else down
        return f"{self.argv} -> {self.code}{down}"


CASES = [
    # health
    Case("health", OK, report=True),
    Case("health --timeout -1", BAD_INPUT, "--timeout: must be from"),
    Case("health --timeout nan", BAD_INPUT, "--timeout: must be from"),
    Case("health --timeout 0", BAD_INPUT, "--timeout: must be from"),
    Case("health", FAILED, "", PG_DOWN, report=True),
    Case("health", FAILED, "", REDIS_DOWN, report=True),
    # stats
    Case("stats", OK),
    Case("stats", FAILED, "Postgres is unavailable", PG_DOWN),
    # user show | export | delete
    Case("user show console {user}", OK),
    Case("user show console {nobody}", FAILED, "no user"),
    Case("user show nosuchchan 1", BAD_INPUT, "unknown channel 'nosuchchan'"),
    Case("user show console {user}", FAILED, "Postgres is unavailable", PG_DOWN),
    Case("user export console {user}", OK),
    Case("user export console {nobody}", FAILED, "no user"),
    Case("user export nosuchchan 1", BAD_INPUT, "unknown channel"),
    Case("user export console {user} --output {tmp}", BAD_INPUT, "cannot write"),
    Case("user delete console {nobody} --yes", FAILED, "no user"),
    Case("user delete console {nobody} --dry-run", FAILED, "no user"),
    Case("user delete nosuchchan 1 --yes", BAD_INPUT, "unknown channel"),
    Case("user delete console {user}", BAD_INPUT, "pass --yes"),
    Case("user delete console {user} --yes", FAILED, "Postgres is unavailable", PG_DOWN),
    Case("user delete console {user} --yes", FAILED, "Redis is unavailable", REDIS_DOWN),
    # conversation show | search
    Case("conversation show {conversation}", OK),
    Case("conversation show {uuid}", FAILED, "no conversation"),
    Case("conversation show not-a-uuid", BAD_INPUT, "UUID"),
    Case("conversation show {conversation} --limit 0", BAD_INPUT, "--limit"),
    Case("conversation show {conversation}", FAILED, "Postgres is unavailable", PG_DOWN),
    Case("conversation search hello", OK),
    Case("conversation search hello --limit -1", BAD_INPUT, "--limit"),
    # event: an event found nowhere is an answer ("never handled"), not a missing thing
    Case("event console never-{uuid}", OK),
    Case("event nosuchchan 1", BAD_INPUT, "unknown channel"),
    Case("event console 1", FAILED, "Redis is unavailable", REDIS_DOWN),
    # flags
    Case("flags list", OK),
    Case("flags get maintenance --channel slack", OK),
    Case("flags get nosuchflag", BAD_INPUT, "invalid choice"),
    Case("flags set maintenance maybe", BAD_INPUT, "true or false"),
    Case("flags set maintenance on --channel nosuch", BAD_INPUT, "unknown channel"),
    Case("flags unset maintenance --channel nosuch", BAD_INPUT, "unknown channel"),
    Case("flags list", FAILED, "Postgres is unavailable", PG_DOWN),
    # config and chat
    Case("config show", OK),
    Case("config show nosuch", BAD_INPUT, "unknown channel"),
    Case("config set console colour=blue", BAD_INPUT, "valid keys"),
    Case("config show console", FAILED, "Postgres is unavailable", PG_DOWN),
    Case("chat list", OK),
    Case("chat show telegram -100", OK),
    Case("chat show nosuch 1", BAD_INPUT, "unknown channel"),
    Case("chat set telegram -100 colour=blue", BAD_INPUT, "valid keys"),
    Case("chat unset telegram -100 colour", BAD_INPUT, "unknown key"),
    Case("chat list", FAILED, "Postgres is unavailable", PG_DOWN),
    # cache
    Case("cache flush --conversation {uuid} --yes", OK),
    Case("cache flush --user console:{nobody} --yes", FAILED, "no user"),
    Case("cache flush --user nosuch:1 --yes", BAD_INPUT, "unknown channel"),
    Case("cache flush --user console:1 --include-state --yes", BAD_INPUT, "goes with --all"),
    Case("cache flush --all", BAD_INPUT, "pass --yes"),
    Case("cache flush --conversation {uuid} --yes", FAILED, "Redis is unavailable", REDIS_DOWN),
    Case("cache warm --since 1s", OK),
    Case("cache warm --since soon", BAD_INPUT, "not a duration"),
    # purge
    Case("purge --older-than 3000d --dry-run", OK),
    Case("purge --older-than 90 --dry-run", BAD_INPUT, "not a duration"),
    Case("purge --older-than 90d --lock-wait -1 --yes", BAD_INPUT, "--lock-wait"),
    Case("purge --older-than 90d", BAD_INPUT, "pass --yes"),
    Case("purge --older-than 3000d --dry-run", FAILED, "Postgres is unavailable", PG_DOWN),
    # partitions, backup, restore
    Case("partitions list", OK),
    Case("partitions create --ahead 999", BAD_INPUT, "months from 0 to 120"),
    Case("partitions list", FAILED, "Postgres is unavailable", PG_DOWN),
    Case("backup --output {tmp}", BAD_INPUT, "is a directory"),
    Case("restore {tmp}/missing.dump", FAILED, "no backup file"),
    # the command line itself
    Case("nosuchcommand", BAD_INPUT, "invalid choice"),
    Case("user", BAD_INPUT, "required"),
]


@pytest.fixture
async def seeded(service: ConversationService) -> dict[str, str]:
    user = new_user()
    conversation = await seed(service, user, "hello")
    return {"user": user, "conversation": str(conversation)}


def _argv(case: Case, seeded: dict[str, str], tmp: Path) -> list[str]:
    values = {**seeded, "tmp": str(tmp), "nobody": new_user(), "uuid": str(uuid.uuid4())}
    return [word.format(**values) for word in case.argv.split()]


def assert_one_failure_object(ran: Ran, code: int) -> None:
    """A failure with --json: the error object on stdout, the same error on stderr."""
    error = ran.json()
    assert set(error) == {"error", "exit_code"} and error["exit_code"] == code, ran
    told = ran.err.strip().splitlines()[-1]
    assert told.endswith(error["error"].split(": ", 1)[-1]), (told, error)


@pytest.mark.parametrize("case", CASES, ids=str)
async def test_exit_code(ops: Ops, seeded: dict[str, str], tmp_path: Path, case: Case) -> None:
    port = str(free_port())
    env = {name: value.format(port=port) for name, value in case.env.items()}

    ran = await ops(*_argv(case, seeded, tmp_path), "--json", **env)

    assert ran.code == case.code, ran
    assert "Traceback" not in ran.err
    assert case.says in ran.err, ran
    if case.report:
        assert ran.json()["ok"] is (case.code == OK)
    elif case.code == OK:
        assert "error" not in ran.json(), ran
    else:
        assert_one_failure_object(ran, case.code)


@pytest.mark.parametrize("case", [c for c in CASES if c.code != OK and not c.report], ids=str)
async def test_without_json_a_failure_prints_nothing_on_stdout(
    ops: Ops, seeded: dict[str, str], tmp_path: Path, case: Case
) -> None:
    port = str(free_port())
    env = {name: value.format(port=port) for name, value in case.env.items()}

    ran = await ops(*_argv(case, seeded, tmp_path), **env)

    assert ran.code == case.code, ran
    assert ran.out == "" and case.says in ran.err, ran


async def test_an_invalid_setting_with_json_is_an_error_object_and_exit_2(ops: Ops) -> None:
    ran = await ops("stats", "--json", DB_POOL_SIZE="abc")

    assert ran.code == BAD_INPUT
    error = ran.json()
    assert error["exit_code"] == BAD_INPUT and "DB_POOL_SIZE" in error["error"]
