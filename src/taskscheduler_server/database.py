"""Which database the server's store opens, and how it connects to it: SQLite or PostgreSQL.

A location is a SQLite file (a path, or ``sqlite:///path``) or a PostgreSQL libpq URL
(``postgresql://user@host:5432/db?options=-csearch_path%3Dmyschema``; ``postgres://`` too).
:func:`database_location` tells them apart, checks a URL the way libpq will read it, and
returns a :class:`~pathlib.Path` for SQLite and the URL (a ``str``) for PostgreSQL: that is how
the rest of the server tells the two apart too.

The store (store.py) writes one SQL text for both: everything here is what cannot be the same
on both (how to connect, which errors mean "the database is gone", the few SQL words that
differ). See docs/database.md for why the tables look the same on both.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import peewee
import psycopg2
import psycopg2.extensions
from playhouse.pool import MaxConnectionsExceeded, PooledPostgresqlDatabase

__all__ = [
    "POSTGRES_CONCURRENCY",
    "connection_failure",
    "database_location",
    "describe_database",
    "first_line",
    "open_postgresql",
    "open_sqlite",
]

#: How many store calls may run at once on PostgreSQL (one pooled connection each); SQLite
#: runs one at a time (one writer, one shared connection).
POSTGRES_CONCURRENCY = 8

_URL = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://")
_POSTGRES_SCHEMES = ("postgresql", "postgres")
_PASSWORD = re.compile(r"(?P<head>://[^/?#@:]*:)[^/?#@]*@")
#: A password given as a query parameter of the URL (``?password=…``, ``&sslpassword=…``).
_PASSWORD_PARAMETER = re.compile(r"(?P<head>[?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)

_SQLITE_PRAGMAS = {
    "journal_mode": "wal",
    # In WAL mode a commit with synchronous=NORMAL already survives the process being killed
    # (the WAL is in the OS page cache when COMMIT returns), but not an OS crash or a power
    # cut. FULL fsyncs the WAL on every commit, so a report we acknowledged is on disk: the
    # agent deletes its copy once we say 200, and nothing else would keep it.
    "synchronous": "full",
    # Other processes (a backup, the sqlite3 shell) may hold the lock briefly; wait, not fail.
    "busy_timeout": 5000,
    "foreign_keys": 1,
}

#: Connection settings the server gives libpq unless the URL sets them: a bounded wait for a
#: connection, and TCP keepalives and a user timeout, so that a connection to a database that
#: vanished from the network (no reset, no answer) fails in about half a minute instead of the
#: kernel's quarter of an hour, and its call is answered 503 rather than hanging.
_POSTGRES_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "15",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
    "application_name": "tsched-server",
}

#: Server settings every connection asks for (in libpq's ``options``) unless the URL's own
#: ``options`` set them. A transaction of the store is never idle for more than moments
#: between its statements; one that is has a stalled server behind it (paused, or its host
#: gone without a word), and would hold its locks, the assignments' advisory lock among them,
#: until it ends: PostgreSQL ends it after this long.
_POSTGRES_SESSION_DEFAULTS = {"idle_in_transaction_session_timeout": "30000"}

#: PostgreSQL error codes (and classes) that mean the database cannot serve now, rather than
#: that the statement or a value was wrong, and that a retry later may succeed: connection
#: exceptions (08), insufficient resources (53: disk full, out of memory, too many
#: connections), operator intervention (57: the server shutting down or starting, a statement
#: cancelled by statement_timeout or pg_cancel_backend), a lock not available in time (55P03:
#: lock_timeout), a read-only transaction (25006: a standby, or a primary mid-failover) and
#: system errors (58: I/O). They are answered 503, not 500, and never stop the server.
_CONNECTION_SQLSTATES = ("08", "53", "57", "55P03", "25006", "58")


def database_location(location: str | os.PathLike[str]) -> Path | str:
    """``location`` as the store opens it: a ``Path`` (SQLite) or a PostgreSQL URL (``str``).

    Raises ``ValueError`` (one line, naming what is wrong) for a URL of another scheme, a
    ``sqlite://`` URL with a host, or a PostgreSQL URL libpq cannot read.
    """
    if isinstance(location, os.PathLike):
        return Path(location)
    match = _URL.match(location)
    if match is None:
        return Path(location)
    scheme = match["scheme"].lower()
    if scheme == "sqlite":
        # sqlite:///relative/file and sqlite:////absolute/file, as SQLAlchemy and peewee read them.
        rest = location[match.end() :]
        if not rest.startswith("/") or len(rest) == 1:
            raise ValueError(
                f"database URL {location!r} names no file: use sqlite:///relative/path or "
                "sqlite:////absolute/path"
            )
        return Path(rest[1:])
    if scheme not in _POSTGRES_SCHEMES:
        raise ValueError(
            f"unknown database URL scheme {match['scheme']!r}: give a SQLite file (a path or "
            "sqlite:///path) or a PostgreSQL URL (postgresql://…)"
        )
    # libpq accepts both schemes; peewee's connector only recognises the long one.
    url = "postgresql://" + location[match.end() :]
    try:
        settings = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError as error:
        reason = first_line(error).removeprefix("invalid dsn: ")
        raise ValueError(f"malformed database URL: {_redact(reason)}") from None
    for port in (settings.get("port") or "5432").split(","):
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"malformed database URL: port {port!r} is not a TCP port")
    return url


def describe_database(location: Path | str) -> str:
    """``location`` fit to print or log: a PostgreSQL URL without its password."""
    return str(location) if isinstance(location, Path) else _redact(location)


def _redact(text: str) -> str:
    text = _PASSWORD.sub(r"\g<head>***@", text)
    return _PASSWORD_PARAMETER.sub(r"\g<head>***", text)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (libpq's go on with hints on further lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def open_sqlite(path: Path) -> peewee.SqliteDatabase:
    """The SQLite database at ``path``, not connected yet."""
    return peewee.SqliteDatabase(
        str(path),
        pragmas=_SQLITE_PRAGMAS,
        # One connection shared by whichever worker thread runs the call: AsyncStore's
        # limiter serialises them, and a per-thread connection would defeat "one writer".
        thread_safe=False,
        check_same_thread=False,
        # Open from __init__ to close(); a call after close() is a bug, not a reconnect.
        autoconnect=False,
    )


def open_postgresql(url: str) -> PooledPostgresqlDatabase:
    """A pool of connections to the PostgreSQL database of ``url`` (none opened yet).

    Each thread checks a connection out for one store call and back in after it
    (``thread_safe``: the state is per thread). peewee's pool checks an idle connection with a
    round trip before handing it out and throws away one that is broken, so that after the
    database comes back, calls work again without a restart.

    Tables get the representation SQLite gives them (docs/database.md): UUIDs as 32 hex digits
    (``TEXT`` compared byte by byte, so that the keyset pages order as on SQLite), every
    integer 64 bits wide.
    """
    given = psycopg2.extensions.parse_dsn(url)
    defaults = {key: value for key, value in _POSTGRES_DEFAULTS.items() if key not in given}
    options = given.get("options", "")
    for name, value in _POSTGRES_SESSION_DEFAULTS.items():
        if name not in options:
            options = f"{options} -c {name}={value}".strip()
    defaults["options"] = options  # given as a keyword, it replaces the URL's: the URL's kept
    return PooledPostgresqlDatabase(
        url,
        max_connections=4 * POSTGRES_CONCURRENCY,
        # Recycled now and then: a firewall or pgbouncer may drop long-idle connections.
        stale_timeout=300,
        timeout=30,
        # Store._guarded checks a connection out for each call: a query outside one is a bug.
        autoconnect=False,
        field_types={"UUID": 'TEXT COLLATE "C"', "INT": "BIGINT", "AUTO": "BIGSERIAL"},
        **defaults,
    )


def connection_failure(error: BaseException, database: peewee.Database) -> bool:
    """Whether ``error`` (raised by a call on the PostgreSQL ``database``) means the database
    cannot be reached, rather than that a statement or a value was wrong.

    peewee wraps the driver's exception (its first argument); libpq's own failures (refused,
    connection lost, timed out) carry no SQLSTATE, the server's carry one of
    :data:`_CONNECTION_SQLSTATES`; and any error that left this thread's connection closed is
    one too.
    """
    if isinstance(error, MaxConnectionsExceeded):
        return True  # every connection busy for the pool's whole timeout: overloaded
    cause: Any = error.args[0] if error.args else None
    if not isinstance(cause, psycopg2.Error):
        cause = error.__context__
    if isinstance(cause, psycopg2.InterfaceError):
        return True
    if isinstance(cause, psycopg2.Error):
        code = cause.pgcode
        if code is None and isinstance(cause, psycopg2.OperationalError):
            return True  # libpq's own: refused, lost, timed out
        if code is not None and code.startswith(_CONNECTION_SQLSTATES):
            return True
    connection = getattr(getattr(database, "_state", None), "conn", None)
    return bool(getattr(connection, "closed", 0))
