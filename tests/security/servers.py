"""Servers the security tests own: Postgres with password auth and TLS, Redis with a
password and TLS, and the certificates they serve (a throwaway CA made by trustme).

The system's own binaries are used (Debian's PostgreSQL and redis-server): they are
built with OpenSSL, which the binaries of the `embedded` extra are not.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
import trustme

from tests.support import free_port, required_binary

HOST = "127.0.0.1"
TLS_ONLY = "tls_only"  # a group role: its members' connections must use TLS
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Certificates:
    """A CA, and a server certificate it signed for 127.0.0.1 and localhost."""

    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing of ours: verifying with it must fail


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    authority = trustme.CA()
    server = authority.issue_cert(HOST, "localhost")
    found = Certificates(
        directory / "ca.pem",
        directory / "server.pem",
        directory / "server.key",
        directory / "other-ca.pem",
    )
    authority.cert_pem.write_to_path(str(found.ca))
    server.cert_chain_pems[0].write_to_path(str(found.cert))
    server.private_key_pem.write_to_path(str(found.key))
    trustme.CA().cert_pem.write_to_path(str(found.other_ca))
    return found


# --- Postgres ------------------------------------------------------------------------------


def postgres_bin() -> Path:
    """The directory of an OpenSSL-enabled PostgreSQL's binaries, or skip."""
    candidates = [Path(p).parent for p in sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))]
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)
    for directory in reversed(candidates):
        config = directory / "pg_config"
        if (directory / "initdb").exists() and config.exists():
            flags = subprocess.run([config, "--configure"], capture_output=True, text=True).stdout
            if "with-openssl" in flags:
                return directory
    pytest.skip("no PostgreSQL built with OpenSSL on this machine")


def _server_user() -> str | None:
    """Postgres refuses to run as root; as root it runs as the system's postgres user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        pytest.skip("running as root and there is no postgres system user to run Postgres as")


@dataclass
class OwnPostgres:
    """A Postgres of the tests' own: superuser `postgres` trusted from 127.0.0.1, every
    other role by password (SCRAM), TLS on with the given certificate."""

    certificates: Certificates
    port: int = field(default_factory=free_port)
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bot-sec-pg-")))

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def url(self, user: str, password: str, database: str, query: str = "") -> str:
        from urllib.parse import quote

        url = f"postgresql://{user}:{quote(password, safe='')}@{HOST}:{self.port}/{database}"
        return f"{url}?{query}" if query else url

    def start(self) -> None:
        binaries, user = postgres_bin(), _server_user()
        self._own_the_root(user)
        self._run(
            user,
            binaries / "initdb",
            "-D",
            self.data,
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=utf8",
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all postgres {HOST}/32 trust\n"
            # Members of the role tls_only may connect over TLS only.
            f"hostnossl all +{TLS_ONLY} {HOST}/32 reject\n"
            f"host all all {HOST}/32 scram-sha-256\n"
        )
        tls = self.data / "tls"
        tls.mkdir()
        for source in (self.certificates.cert, self.certificates.key):
            shutil.copy(source, tls / source.name)
        self._own_the_root(user)
        (tls / self.certificates.key.name).chmod(0o600)
        options = (
            f"-c listen_addresses={HOST} -c port={self.port} -c unix_socket_directories={self.root}"
            f" -c ssl=on -c ssl_cert_file={tls / self.certificates.cert.name}"
            f" -c ssl_key_file={tls / self.certificates.key.name} -c fsync=off"
        )
        self._run(
            user,
            binaries / "pg_ctl",
            "-D",
            self.data,
            "-l",
            self.root / "log",
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-o",
            options,
            "start",
        )
        self._run(
            user,
            binaries / "psql",
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f"CREATE ROLE {TLS_ONLY} NOLOGIN",
        )

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run(
                _server_user(),
                postgres_bin() / "pg_ctl",
                "-D",
                self.data,
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        shutil.rmtree(self.root, ignore_errors=True)

    def _own_the_root(self, user: str | None) -> None:
        if user is None:
            return
        entry = pwd.getpwnam(user)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _run(self, user: str | None, *command: object) -> None:
        done = subprocess.run(
            [str(part) for part in command],
            capture_output=True,
            text=True,
            user=user,
            cwd=self.root,
            timeout=START_TIMEOUT + 30,
            check=False,
        )
        if done.returncode != 0:
            log = (self.root / "log").read_text() if (self.root / "log").exists() else ""
            raise RuntimeError(f"{command[0]} failed: {done.stdout}{done.stderr}\n{log}")


# --- Redis ---------------------------------------------------------------------------------


def redis_server_bin() -> str:
    return required_binary(shutil.which("redis-server"), "redis-server")


@dataclass
class OwnRedis:
    """A redis-server of the test's own, with a password, over TLS when given certificates."""

    directory: Path
    password: str
    certificates: Certificates | None = None
    port: int = field(default_factory=free_port)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def scheme(self) -> str:
        return "rediss" if self.certificates else "redis"

    def url(self, query: str = "") -> str:
        from urllib.parse import quote

        url = f"{self.scheme}://:{quote(self.password, safe='')}@{HOST}:{self.port}/0"
        return f"{url}?{query}" if query else url

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            redis_server_bin(),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            "--requirepass",
            self.password,
        ]
        if self.certificates is None:
            command += ["--port", str(self.port)]
        else:
            certs = self.certificates
            command += [
                "--port",
                "0",
                "--tls-port",
                str(self.port),
                "--tls-cert-file",
                str(certs.cert),
                "--tls-key-file",
                str(certs.key),
                "--tls-ca-cert-file",
                str(certs.ca),
                "--tls-auth-clients",
                "no",
            ]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        assert self._process is not None
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while True:
                if self._process.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    if "tls" in log.lower() and self.certificates is not None:
                        pytest.skip(f"this redis-server cannot serve TLS: {log[-300:]}")
                    raise RuntimeError(f"redis-server exited: {log[-1000:]}")
                with contextlib.suppress(redis.RedisError, OSError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer in time")
                time.sleep(0.05)
        finally:
            client.close()

    def client(self) -> redis.Redis:
        tls = {"ssl_ca_certs": str(self.certificates.ca)} if self.certificates else {}
        return redis.Redis(
            HOST,
            self.port,
            password=self.password,
            ssl=self.certificates is not None,
            socket_timeout=2,
            socket_connect_timeout=2,
            **tls,  # type: ignore[arg-type]
        )

    def stop(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None
