"""Server URLs: DATABASE_URL and REDIS_URL checked and turned into what the drivers take,
and the passwords a URL holds found or masked for logs and errors.

DATABASE_URL is written the libpq way (postgres://, sslmode=, sslrootcert=, ...), as
operators and hosting providers hand it out; asyncpg wants other names and takes
certificate files only inside an SSLContext, built here. REDIS_URL is checked so that a
typo in a TLS option fails at start-up, not at the first command.

Apart from bot/config.py, which calls it to validate the settings: the store, the runtime,
the bench and alembic use these functions on URLs that need no Settings. This module
imports nothing of the bot but its errors.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from bot.errors import ConfigError

_DATABASE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
# libpq's TLS parameters (docs/deployment.md). asyncpg takes the mode as `ssl`, and the
# certificate files only inside an SSLContext, which database_connect_args builds.
SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_CERTIFICATE_PARAMETERS = ("sslrootcert", "sslcert", "sslkey", "sslpassword")
_CERTIFICATE_MODES = ("require", "verify-ca", "verify-full")
# What DATABASE_URL's query may hold: SQLAlchemy hands each to asyncpg.connect as a
# keyword, so anything else would fail there, as a TypeError, on the first connection.
_DATABASE_PARAMETERS = ("host", "password", "sslmode", "ssl", "target_session_attrs")
# redis-py reads these from a rediss:// URL's query itself.
REDIS_TLS_OPTIONS = (
    "ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_cert_reqs", "ssl_check_hostname",
    "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_min_version", "ssl_ciphers",
    "ssl_include_verify_flags", "ssl_exclude_verify_flags",
)  # fmt: skip
_REDIS_CERT_REQS = ("none", "optional", "required")


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***, safe for logs and errors."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"  # not parseable, so not provably free of a password
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        # Keep the host exactly as written (an IPv6 host keeps its brackets).
        parts = parts._replace(netloc=f"{userinfo.partition(':')[0]}:***@{hostport}")
    if "password=" in parts.query.lower():
        query = [
            (key, "***" if _is_password(key) else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*/"))
    return urlunsplit(parts)


def _is_password(query_key: str) -> bool:
    """password=, or a TLS key's passphrase: sslpassword= (libpq), ssl_password= (redis-py)."""
    return query_key.lower().endswith("password")


def url_passwords(url: str) -> list[str]:
    """The passwords a URL holds: in the user part and as a `password=` query parameter."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    for raw in parts.query.split("&"):
        key, _, value = raw.partition("=")
        if _is_password(unquote_plus(key)) and value:
            found.append(value)
    # Both the form written in the URL and the decoded one a library may print.
    return list(dict.fromkeys(found + [unquote_plus(v) for v in found]))


def _check_port(url: str) -> None:
    try:
        urlsplit(url).port  # noqa: B018 - parsing is the check
    except ValueError:
        raise ValueError("port after the host must be a number from 0 to 65535") from None


def normalize_database_url(url: str) -> str:
    """Accept postgres://, postgresql:// and postgresql+asyncpg://; return the asyncpg form.
    libpq's several hosts (`u@h1:5432,h2:5432/db?target_session_attrs=read-write`, for
    failover) become SQLAlchemy's `u@/db?host=h1:5432&host=h2:5432&…`."""
    scheme, sep, rest = url.partition("://")
    driver = _DATABASE_SCHEMES.get(scheme.lower())
    if not sep or driver is None:
        raise ValueError("must start with postgresql://, postgres:// or postgresql+asyncpg://")
    if not rest.strip("/"):
        raise ValueError("has no host or database")
    before, mark, query = rest.partition("?")
    before, hosts = _several_hosts(before)
    _check_port(f"{scheme}://{before}")
    query = "&".join([*(f"host={host}" for host in hosts), *([query] if query else [])])
    return f"{driver}://{before}{'?' if query else mark}{_checked_query(query)}"


def _several_hosts(before: str) -> tuple[str, list[str]]:
    """libpq's `user@h1:p1,h2:p2/db` as (`user@/db`, ['h1:p1', 'h2:p2']); one host as is."""
    netloc, slash, path = before.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    if "," not in hostlist:
        return before, []
    hosts = hostlist.split(",")
    for host in hosts:
        name, colon, port = host.rpartition(":")
        if not colon or "]" in port:  # no port, or an IPv6 address without one
            name, port = host, ""
        if not name or (port and not (port.isdigit() and int(port) < 65536)):
            raise ValueError(f"{host!r} is not host or host:port")
    return f"{userinfo}{at}{slash}{path}", hosts


def _segments(query: str) -> list[tuple[str, str]]:
    """(decoded name, segment as written) of each `name=value` of a query."""
    return [(unquote_plus(seg.partition("=")[0]), seg) for seg in query.split("&") if seg]


def _checked_query(query: str) -> str:
    """The query with libpq's `sslmode=` as asyncpg's `ssl=`, the rest as written; a
    parameter asyncpg cannot honour is refused here, not by a TypeError later."""
    segments: list[str] = []
    mode: str | None = None
    found: set[str] = set()
    for name, segment in _segments(query):
        if name in ("ssl", "sslmode"):
            mode = unquote_plus(segment.partition("=")[2])
            if mode not in SSL_MODES:
                raise ValueError(f"{name} must be one of {', '.join(SSL_MODES)}")
            if found & {"ssl", "sslmode"}:
                raise ValueError("give sslmode or ssl, not both")
            segment = "ssl=" + segment.partition("=")[2]
        elif name.startswith("ssl") and name not in _CERTIFICATE_PARAMETERS:
            raise ValueError(
                f"{name} is not supported; the TLS parameters are sslmode, sslrootcert, "
                "sslcert, sslkey and sslpassword"
            )
        elif name not in (*_DATABASE_PARAMETERS, *_CERTIFICATE_PARAMETERS):
            raise ValueError(
                f"{name} is not supported; the parameters are sslmode, sslrootcert, sslcert, "
                "sslkey, sslpassword, password and target_session_attrs (behind PgBouncer, "
                "set DATABASE_POOLER=transaction)"
            )
        found.add(name)
        segments.append(segment)
    if found & set(_CERTIFICATE_PARAMETERS) and mode not in _CERTIFICATE_MODES:
        raise ValueError(
            "sslrootcert, sslcert and sslkey need sslmode=require, verify-ca or verify-full"
        )
    return "&".join(segments)


def database_connect_args(url: str) -> tuple[str, dict[str, Any]]:
    """The SQLAlchemy URL and extra asyncpg connect arguments of a DATABASE_URL: a mode
    alone stays in the URL (`ssl=require`); certificate files, which asyncpg has no
    keyword for, become one SSLContext in `ssl` (ConfigError if a file is unreadable)."""
    url = normalize_database_url(url)
    base, _, query = url.partition("?")
    values = {name: unquote_plus(seg.partition("=")[2]) for name, seg in _segments(query)}
    if not values.keys() & set(_CERTIFICATE_PARAMETERS):
        return url, {}
    kept = [seg for name, seg in _segments(query) if name not in ("ssl", *_CERTIFICATE_PARAMETERS)]
    return base + ("?" + "&".join(kept) if kept else ""), {"ssl": _ssl_context(values)}


def _ssl_context(values: dict[str, str]) -> ssl.SSLContext:
    """libpq's meaning: verify-full checks the CA and the host name, verify-ca the CA, and
    require only encrypts unless a root certificate is given (then it checks the CA)."""
    mode, rootcert = values["ssl"], values.get("sslrootcert")
    reading = "sslrootcert"
    try:
        context = ssl.create_default_context(cafile=rootcert)
        context.check_hostname = mode == "verify-full"
        if mode == "require" and rootcert is None:
            context.verify_mode = ssl.CERT_NONE
        if "sslcert" in values:
            reading = "sslcert"
            context.load_cert_chain(
                values["sslcert"], values.get("sslkey"), password=values.get("sslpassword")
            )
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        path = values.get(reading)
        raise ConfigError(f"DATABASE_URL: cannot read {reading} {path}: {reason}") from None
    return context


def asyncpg_dsn(url: str) -> str:
    """The DATABASE_URL as a DSN for asyncpg.connect (libpq's form: sslmode=, not ssl=,
    several hosts in the host part)."""
    base, _, query = normalize_database_url(url).partition("?")
    hosts = [seg.partition("=")[2] for name, seg in _segments(query) if name == "host"]
    segments = [
        "sslmode=" + seg.partition("=")[2] if name == "ssl" else seg
        for name, seg in _segments(query)
        if name != "host"
    ]
    base = base.replace("postgresql+asyncpg://", "postgresql://", 1)
    if hosts:
        scheme, _, rest = base.partition("://")
        netloc, slash, path = rest.partition("/")
        base = f"{scheme}://{netloc}{','.join(hosts)}{slash}{path}"
    return base + ("?" + "&".join(segments) if segments else "")


def check_redis_url(url: str) -> str:
    """The URL as given, once checked: a scheme, port, database number and TLS options
    that redis-py accepts (ValueError otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in _REDIS_SCHEMES:
        raise ValueError("must start with redis://, rediss:// or unix://")
    _check_port(url)
    # A unix:// URL's path is the socket; its database number, like any, may be ?db=N.
    db = "" if parts.scheme == "unix" else parts.path.strip("/")
    numbers = [v for k, v in parse_qsl(parts.query, keep_blank_values=True) if k == "db"]
    if (db and not db.isdigit()) or not all(n.isdigit() for n in numbers):
        raise ValueError(
            "database number after the host must be an integer, e.g. redis://host:6379/0"
        )
    _check_redis_tls(parts.scheme, parse_qsl(parts.query, keep_blank_values=True))
    return url


def _check_redis_tls(scheme: str, query: list[tuple[str, str]]) -> None:
    """redis-py passes unknown query options to its connection class: a typo would be a
    TypeError at the first command, and ssl_* on a plain URL is silently no TLS."""
    for name, value in query:
        if not name.startswith("ssl"):
            continue
        if name not in REDIS_TLS_OPTIONS:
            raise ValueError(
                f"{name} is not a TLS option of redis-py ({', '.join(REDIS_TLS_OPTIONS)})"
            )
        if scheme != "rediss":
            raise ValueError(f"{name} needs a rediss:// URL: redis:// never uses TLS")
        if name == "ssl_cert_reqs" and value not in _REDIS_CERT_REQS:
            raise ValueError("ssl_cert_reqs must be none, optional or required")
