"""The databases tests run the server's store on: a SQLite file, or a PostgreSQL schema of its own.

PostgreSQL tests need a server: ``TSCHED_TEST_DATABASE_URL`` names it (a libpq URL, e.g.
``postgresql://root@127.0.0.1:5432/test``; ``.ci/run`` sets it). Without it they are skipped,
with the reason. Each test gets a fresh schema (``tsched_t_<random>``) and a URL whose
``options`` put it first on the ``search_path``, so that every table the store makes lands there;
the schema is dropped with everything in it when the test ends.

Fixtures (conftest.py): ``database_url`` (a fresh PostgreSQL schema's URL), and in
``tests/server``, ``database_location`` / ``store`` on each database a test module asks for with
``pytestmark = pytest.mark.databases("sqlite", "postgresql")``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg2
import psycopg2.extensions
import pytest

#: The environment variable naming the PostgreSQL server the tests may use.
DATABASE_URL_ENV = "TSCHED_TEST_DATABASE_URL"

#: The databases a store test can run on (``pytest.mark.databases``).
KINDS = ("sqlite", "postgresql")


def postgres_server_url() -> str:
    """The URL of ``TSCHED_TEST_DATABASE_URL``; skips the test when it is not set."""
    url = os.environ.get(DATABASE_URL_ENV, "").strip()
    if not url:
        pytest.skip(
            f"{DATABASE_URL_ENV} is not set: the PostgreSQL tests need a server "
            f"(e.g. {DATABASE_URL_ENV}=postgresql://root@127.0.0.1:5432/test)"
        )
    return url


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``schema`` as its search path (kept with any other ``options`` it has)."""
    return with_option(url, f"-csearch_path={schema}")


def with_option(url: str, option: str) -> str:
    """``url`` with ``option`` (``-cname=value``: a server setting) added to its ``options``."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query["options"] = f"{query.get('options', '')} {option}".strip()
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


def schema_of(url: str) -> str:
    """The schema :func:`with_search_path` put in ``url``."""
    options = dict(parse_qsl(urlsplit(url).query)).get("options", "")
    return options.rsplit("-csearch_path=", 1)[1].split()[0]


@contextlib.contextmanager
def postgres_schema(server_url: str | None = None) -> Iterator[str]:
    """A new, empty schema on the test server; yields a URL whose search path is it, and drops
    it (``CASCADE``) afterwards. Skips the test without ``TSCHED_TEST_DATABASE_URL``."""
    server = server_url or postgres_server_url()
    schema = f"tsched_t_{secrets.token_hex(6)}"
    _admin(server, f'CREATE SCHEMA "{schema}"')
    try:
        yield with_search_path(server, schema)
    finally:
        # A store a test left open holds no lock while idle; one that does is a bug to see.
        _admin(server, "SET lock_timeout = '10s'", f'DROP SCHEMA "{schema}" CASCADE')


def _admin(url: str, *statements: str) -> None:
    connection = psycopg2.connect(url)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
    finally:
        connection.close()


def query(location: Path | str, sql: str, parameters: tuple[Any, ...] = ()) -> list[Any]:
    """The rows of ``sql`` (``?`` placeholders) read with a connection of the test's own, not the
    store's: what is committed in the SQLite file, or the PostgreSQL schema of ``location``."""
    if isinstance(location, str):
        connection = psycopg2.connect(location)
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), parameters)
                return list(cursor.fetchall())
        finally:
            connection.close()
    reader = sqlite3.connect(f"{Path(location).as_uri()}?mode=ro", uri=True)
    try:
        return list(reader.execute(sql, parameters).fetchall())
    finally:
        reader.close()


def count_rows(location: Path | str, table: str) -> int:
    """How many rows ``table`` holds in the database at ``location`` (committed ones)."""
    [(count,)] = query(location, f'SELECT count(*) FROM "{table}"')
    return int(count)


def execute(location: Path | str, sql: str, parameters: tuple[Any, ...] = ()) -> None:
    """Run and commit ``sql`` (``?`` placeholders) on a connection of the test's own."""
    if isinstance(location, str):
        connection = psycopg2.connect(location)
        try:
            with connection, connection.cursor() as cursor:
                cursor.execute(sql.replace("?", "%s"), parameters)
        finally:
            connection.close()
        return
    writer = sqlite3.connect(location)
    try:
        with writer:
            writer.execute(sql, parameters)
    finally:
        writer.close()


def server_address(url: str) -> tuple[str, int]:
    """The host and port of the PostgreSQL server of ``url`` (for a TcpProxy in front of it)."""
    settings = psycopg2.extensions.parse_dsn(url)
    return settings.get("host") or "127.0.0.1", int(settings.get("port") or 5432)


def through_port(url: str, port: int, host: str = "127.0.0.1") -> str:
    """``url`` with its server at ``host:port`` instead (a TcpProxy's), the rest unchanged."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))
