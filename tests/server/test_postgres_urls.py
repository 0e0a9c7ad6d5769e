"""Naming the database: paths, ``sqlite:///`` and PostgreSQL URLs; what is refused, and how (a
usage error, exit 2; an unreachable database at start, exit 1), and that a password never shows.

None of this needs a PostgreSQL server: a malformed URL is refused before any connection, and an
unreachable one is a port where nothing listens.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from processes import TSCHED, free_port
from taskscheduler_client.cli import tsched
from taskscheduler_server import ServerConfig
from taskscheduler_server.database import database_location, describe_database


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("server.sqlite3", Path("server.sqlite3")),
        (Path("/srv/x.db"), Path("/srv/x.db")),
        ("sqlite:///data/server.sqlite3", Path("data/server.sqlite3")),
        ("sqlite:////var/lib/tsched/server.sqlite3", Path("/var/lib/tsched/server.sqlite3")),
        ("SQLite:///:memory:", Path(":memory:")),
        ("postgresql://root@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test"),
        ("postgres://u:p@db/tsched?sslmode=require", "postgresql://u:p@db/tsched?sslmode=require"),
        (
            "postgresql://root@127.0.0.1/test?options=-csearch_path%3Dmyschema",
            "postgresql://root@127.0.0.1/test?options=-csearch_path%3Dmyschema",
        ),
        ("postgresql://h1:5432,h2:5433/db", "postgresql://h1:5432,h2:5433/db"),
    ],
)
def test_a_location_is_a_sqlite_path_or_a_postgresql_url(
    given: str | Path, expected: str | Path
) -> None:
    assert database_location(given) == expected
    assert type(ServerConfig(database=given).database) is type(expected)


@pytest.mark.parametrize(
    ("given", "complaint"),
    [
        ("mysql://root@db/x", "unknown database URL scheme 'mysql'"),
        ("postgresql+psycopg2://db/x", "unknown database URL scheme"),
        (
            "postgresql://db/x?bogus=1",
            'malformed database URL: invalid URI query parameter: "bogus"',
        ),
        ("postgresql://db:port/x", "port 'port' is not a TCP port"),
        ("postgresql://db:99999/x", "port '99999' is not a TCP port"),
        ("postgresql://u:secret@[::1/x", "malformed database URL"),
        ("sqlite://host/file", "names no file"),
        ("sqlite:///", "names no file"),
    ],
)
def test_a_malformed_location_is_refused_in_one_line(given: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=re.escape(complaint)) as caught:
        database_location(given)
    assert "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)


def test_a_password_never_shows() -> None:
    url = "postgresql://tsched:s3cr%3At@db:5432/tsched?sslmode=require"
    assert describe_database(url) == "postgresql://tsched:***@db:5432/tsched?sslmode=require"
    assert describe_database("postgresql://tsched@db/x") == "postgresql://tsched@db/x"
    assert describe_database(Path("/srv/server.sqlite3")) == "/srv/server.sqlite3"
    # libpq also takes it (and the client key's) as query parameters.
    in_query = "postgresql://tsched@db/x?sslmode=require&password=s3cr&sslpassword=k3y&port=1"
    assert describe_database(in_query) == (
        "postgresql://tsched@db/x?sslmode=require&password=***&sslpassword=***&port=1"
    )
    assert "s3cr" not in repr(ServerConfig(database=in_query))
    config = ServerConfig(database=url)
    assert config.database == url
    assert "s3cr" not in repr(config)
    assert "tsched:***@db" in repr(config)


@pytest.mark.parametrize(
    "given",
    ["mysql://root@db/x", "postgresql://db/x?bogus=1", "postgresql://db:nope/x", "sqlite://h/f"],
)
def test_tsched_server_refuses_a_malformed_database_as_a_usage_error(given: str) -> None:
    for args, env in (
        (["server", "--port", "0", "--database", given], {}),
        (["server", "--port", "0"], {"TSCHED_DATABASE": given}),
    ):
        result = CliRunner().invoke(tsched, args, env=env)
        assert result.exit_code == 2, result.output
        assert "--database" in result.output
        assert "Traceback" not in result.output


def test_tsched_server_names_its_unreachable_database_in_one_line_and_exits_1() -> None:
    # Nothing listens there; the password in both places libpq takes it.
    url = f"postgresql://tsched:hunter2@127.0.0.1:{free_port()}/tsched?sslpassword=hunter3"
    finished = subprocess.run(
        [TSCHED, "server", "--port", str(free_port()), "--database", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert finished.returncode == 1, finished
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert "cannot reach the database postgresql://tsched:***@127.0.0.1:" in lines[0]
    assert "hunter" not in finished.stderr + finished.stdout
