"""``tsched``: the taskscheduler command line.

``tsched create`` and ``tsched output`` talk to a server through :class:`~.client.Client`, as
do the commands of :mod:`.manage` (``list``, ``show``, ``runs``, ``history``, ``edit``,
``pause``, ``resume``, ``run``, ``delete``, ``agents``); ``tsched server``, ``tsched agent`` and
``tsched up`` start the services in this process.

Errors are one line on stderr starting with ``error:``, never a traceback: exit status 2 for a
command line that does not parse, 1 for everything else (the server refused the request, it
cannot be reached, a port is taken).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from taskscheduler_core import (
    DEFAULT_MAX_OUTPUT_BYTES,
    MAX_COMMAND_LENGTH,
    LatestOutput,
    TaskCreated,
    __version__,
    format_time,
    parse_label,
    unstructure,
)

from . import manage
from ._base import DEFAULT_TIMEOUT, DEFAULT_URL
from .cli_common import CliError, OneLineGroup, echo_json, reported_client_errors
from .client import Client
from .layout import SERVER_DATABASE_NAME
from .logs import LOG_FORMATS, LOG_LEVELS, configure_logging
from .task_flags import task_option_flags, task_options

if TYPE_CHECKING:
    import trio

_F = TypeVar("_F", bound=Callable[..., Any])

DEFAULT_HOST = "127.0.0.1"
DEFAULT_SERVER_PORT = 8080
DEFAULT_AGENT_PORT = 8081
DEFAULT_AGENTS = 2
#: The server's liveness and reconciliation periods, in seconds (``ServerConfig``'s defaults).
DEFAULT_LOST_AFTER = 15.0
DEFAULT_RECONCILE_INTERVAL = 30.0
#: The server's history retention (``ServerConfig``'s defaults; docs/api.md#retention).
DEFAULT_KEEP_RUNS = 1000
DEFAULT_KEEP_DAYS = 30.0
MAX_KEEP_DAYS = 36_500
DEFAULT_PRUNE_INTERVAL = 60.0
#: The lease of the work done once among replicas, in seconds (``ServerConfig``'s default).
DEFAULT_LEASE_SECONDS = 15.0
#: The server's limits (``ServerConfig``'s defaults; docs/security.md).
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_KILL_GRACE = 10.0
#: How often ``tsched output --follow`` asks for the latest run, in seconds.
FOLLOW_POLL_INTERVAL = 0.5


# --- option values -------------------------------------------------------------------------------


def http_url(value: str) -> str:
    """``value`` as a base URL: ``http://`` is assumed when no scheme is given."""
    value = value.strip()
    if "://" not in value:
        value = f"http://{value}"
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(f"{value!r} is not an http:// or https:// URL")
    return value.rstrip("/")


def _url_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    return None if value is None else http_url(value)


def _seconds_option(ctx: click.Context, param: click.Parameter, value: float) -> timedelta:
    """A positive number of seconds as a duration; ``inf``, ``nan`` and the absurd are refused."""
    try:
        if math.isfinite(value):
            return timedelta(seconds=value)
    except OverflowError:
        pass
    raise click.BadParameter(f"{value} is not a usable number of seconds")


def _url_list_option(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str]:
    return [http_url(item) for item in (value or "").split(",") if item.strip()]


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/taskscheduler``, or ``~/.local/share/taskscheduler``."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    # the XDG spec says to ignore a relative path
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
    return base / "taskscheduler"


_DATA_DIR_HELP = "State directory [default: $XDG_DATA_HOME/taskscheduler]"
_PORT = click.IntRange(0, 65535)


# --- TLS options: kept in ctx.meta, per command, rather than in every signature ---------------

_TLS_META = "taskscheduler.tls"


def _tls_option(name: str, envvar: str, setting: str, help: str) -> Callable[[_F], _F]:
    """A PATH option whose value becomes ``setting=`` of the command's config (or client)."""

    def remember(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
        if value is not None:
            ctx.meta.setdefault(f"{_TLS_META}.{ctx.command.name}", {})[setting] = value

    return click.option(
        name,
        envvar=envvar,
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="PATH",
        expose_value=False,
        callback=remember,
        help=help,
    )


def _tls_settings(command: str | None = None) -> dict[str, Any]:
    """The TLS options given to ``command`` (default: the one running) as keyword arguments."""
    ctx = click.get_current_context()
    settings: dict[str, Any] = ctx.meta.get(f"{_TLS_META}.{command or ctx.command.name}", {})
    return dict(settings)


_CA_CERT_HELP = "Trust only this CA (PEM) for HTTPS"
_SERVE_CERT_HELP = "Serve HTTPS with this certificate (PEM, chain included); needs --tls-key."
_SERVE_KEY_HELP = "The private key (PEM) of --tls-cert."


# --- authentication options: kept in ctx.meta, per command, like the TLS ones -----------------

_AUTH_META = "taskscheduler.auth"


def _auth_option(
    name: str, envvar: str, setting: str, help: str, *, path: bool = False
) -> Callable[[_F], _F]:
    """A token (or token file) option whose value becomes ``setting=`` of the command's
    config (or client)."""

    def remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
        if value is not None:
            ctx.meta.setdefault(f"{_AUTH_META}.{ctx.command.name}", {})[setting] = value

    return click.option(
        name,
        envvar=envvar,
        type=click.Path(dir_okay=False, path_type=Path) if path else str,
        metavar="PATH" if path else "TOKEN",
        expose_value=False,
        callback=remember,
        help=help,
    )


def _insecure_option() -> Callable[[_F], _F]:
    def remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
        if value:
            ctx.meta.setdefault(f"{_AUTH_META}.{ctx.command.name}", {})["insecure"] = True

    return click.option(
        "--insecure",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="Listen on a non-loopback address even without tokens (anyone reaching it "
        "owns the fleet).",
    )


def _auth_settings(command: str | None = None) -> dict[str, Any]:
    """The authentication options given to ``command`` (default: the running one).

    A ``token_file`` is read (permissions checked) and gives the tokens not set otherwise.
    """
    ctx = click.get_current_context()
    settings = dict(ctx.meta.get(f"{_AUTH_META}.{command or ctx.command.name}", {}))
    token_file = settings.pop("token_file", None)
    if token_file is not None:
        from taskscheduler_server.auth import read_token_file

        tokens = read_token_file(token_file)
        for name in ("admin", "read", "join"):
            value = getattr(tokens, name)
            if value is not None:
                settings.setdefault(f"{name}_token", value)
    return settings


# --- logging options: kept in ctx.meta, like the TLS ones; applied when a service starts ------

_LOG_META = "taskscheduler.logging"


def _logging_options(command: _F) -> _F:
    """``--log-format`` and ``--log-level`` (:mod:`.logs`) of a command that runs services."""

    def remember(ctx: click.Context, param: click.Parameter, value: str) -> None:
        ctx.meta.setdefault(_LOG_META, {})[param.name] = value

    command = click.option(
        "--log-level",
        envvar="TSCHED_LOG_LEVEL",
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        expose_value=False,
        callback=remember,
        help="Log this and more severe messages of taskscheduler (other libraries: warning).",
    )(command)
    return click.option(
        "--log-format",
        envvar="TSCHED_LOG_FORMAT",
        type=click.Choice(LOG_FORMATS),
        default="text",
        show_default=True,
        expose_value=False,
        callback=remember,
        help="Logs on stderr as text lines, or as one JSON object per line.",
    )(command)


def _start_logging() -> str:
    """Configure logging as the running command's options say; the format."""
    settings = click.get_current_context().meta.get(_LOG_META, {})
    log_format: str = settings.get("log_format", "text")
    configure_logging(log_format, settings.get("log_level", "info"))
    return log_format


_TOKEN_HELP = "Present this bearer token to the server (its admin or read token)."
_JOIN_TOKEN_HELP = "The shared token agents register with; each then gets its own credential."


# --- the group -----------------------------------------------------------------------------------


class _Session:
    """``ctx.obj``: the server's URL, and a client made on first use (service commands never
    need one)."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url = url
        self.timeout = timeout
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(
                self.url,
                timeout=self.timeout,
                **_tls_settings("tsched"),
                **_auth_settings("tsched"),
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


@click.group(cls=OneLineGroup)
@click.option(
    "--url",
    envvar="TSCHED_URL",
    default=DEFAULT_URL,
    show_default=True,
    metavar="URL",
    callback=_url_option,
    help="The server's base URL.",
)
@click.option(
    "--timeout",
    envvar="TSCHED_TIMEOUT",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for the server to answer a request.",
)
@_tls_option("--ca-cert", "TSCHED_CA_CERT", "ca_cert", _CA_CERT_HELP + " (the server's).")
@_tls_option(
    "--tls-client-cert",
    "TSCHED_TLS_CLIENT_CERT",
    "client_cert",
    "Present this client certificate (PEM) to a server that requires mutual TLS.",
)
@_tls_option(
    "--tls-client-key",
    "TSCHED_TLS_CLIENT_KEY",
    "client_key",
    "The private key of --tls-client-cert.",
)
@_auth_option("--token", "TSCHED_TOKEN", "token", _TOKEN_HELP)
@click.version_option(__version__, "--version", prog_name="tsched")
@click.pass_context
def tsched(ctx: click.Context, url: str, timeout: float) -> None:
    """Run periodic shell commands on many hosts and collect what every run printed.

    Start everything locally with 'tsched up', then in another shell:

        tsched create 'echo hello world' --frequency 'every 30 seconds'

        tsched output TASK_ID --wait 60
    """
    session = _Session(url, timeout)
    ctx.obj = session
    ctx.call_on_close(session.close)


# --- talking to a server -------------------------------------------------------------------------


@tsched.command()
@click.argument("command")
@click.option(
    "-f",
    "--frequency",
    required=True,
    help="How often to run it: 'every <integer> (seconds|minutes|hours|days|weeks)', a cron "
    "expression ('*/5 * * * *') or @hourly, @daily, @weekly, @monthly.",
)
@task_option_flags(edit=False)
@click.option("--json", "as_json", is_flag=True, help="Print the created task as JSON.")
@click.pass_obj
def create(
    session: _Session,
    /,
    command: str,
    frequency: str,
    env: Mapping[str, str],
    as_json: bool,
    **flags: Any,
) -> None:
    """Create a task running COMMAND on every agent (or those --target-* picks); prints its id.

    Options not given take the server's defaults (see 'tsched show ID').
    """
    options = task_options(**flags)
    if env:
        options["env"] = dict(env)
    with reported_client_errors():
        task = session.client.create_task(command, frequency, **options)
    if as_json:
        echo_json(unstructure(TaskCreated(command_id=task.id, task=task)))
    else:
        click.echo(str(task.id))


@tsched.command()
@click.argument("task_id")
@click.option(
    "--wait",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Wait up to SECONDS for a complete run if there is none yet.",
)
@click.option(
    "--follow",
    is_flag=True,
    help="Print each new run as it completes, until Ctrl-C (or --count runs).",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    metavar="N",
    help="With --follow: stop after N runs.",
)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the answer as JSON (--follow: one per line)."
)
@click.pass_obj
def output(
    session: _Session,
    task_id: str,
    wait: float | None,
    follow: bool,
    count: int | None,
    as_json: bool,
) -> None:
    """Show what the latest run of TASK_ID printed on each agent."""
    if follow and wait is not None:
        raise click.UsageError("give --wait or --follow, not both")
    if count is not None and not follow:
        raise click.UsageError("--count goes with --follow")
    if follow:
        _follow_output(session.client, task_id, count=count, as_json=as_json)
        return
    with reported_client_errors():
        if wait is None:
            latest = session.client.latest_output(task_id)
        else:
            latest = session.client.wait_for_output(
                task_id, timeout=wait, poll_interval=min(0.5, wait / 4)
            )
    if as_json:
        echo_json(unstructure(latest))
    else:
        click.echo(format_latest_output(latest), nl=False)


def _follow_output(client: Client, task_id: str, *, count: int | None, as_json: bool) -> None:
    """Print each run of the task completing from now on; Ctrl-C ends it with exit status 0."""
    printed = 0
    try:
        with reported_client_errors():
            for latest in client.follow_output(task_id, poll_interval=FOLLOW_POLL_INTERVAL):
                if as_json:
                    echo_json(unstructure(latest), compact=True)
                else:
                    # a blank line between runs; each starts with its "completed at" line
                    click.echo(("\n" if printed else "") + format_latest_output(latest), nl=False)
                printed += 1
                if count is not None and printed >= count:
                    return
    except KeyboardInterrupt:
        # Ctrl-C is how a follow is meant to end: not a failure
        return


def format_latest_output(latest: LatestOutput) -> str:
    """The human form of a latest output: when it completed, then each agent's streams."""
    if latest.completion_time is None:
        return "no complete run yet\n"
    lines = [f"completed at {format_time(latest.completion_time)}"]
    if latest.scheduled_at is not None:
        lines.append(f"scheduled at {format_time(latest.scheduled_at)}")
    for agent in latest.outputs:
        lines.append(f"agent {agent.agent_id}")
        lines.extend(_stream("stdout", agent.stdout))
        lines.extend(_stream("stderr", agent.stderr))
    return "\n".join(lines) + "\n"


def _stream(name: str, text: str) -> list[str]:
    if not text:
        return [f"  {name}: (empty)"]
    # indented, so that a command's output can never pass for one of our own lines
    return [f"  {name}:", *(f"    {line}" for line in text.splitlines())]


# --- starting services ---------------------------------------------------------------------------


def _serve(start: Callable[[trio.Nursery], Awaitable[None]], *, what: str) -> None:
    """Run services until Ctrl-C (exit 0), turning failures the user can fix into one line."""
    # imported here, not at the top: the commands that only talk to a server start faster
    from .services import failure_message, run_until_stopped

    # Only now, once the command line is accepted: a refused one logs nothing.
    log_format = _start_logging()
    try:
        run_until_stopped(start)
    except BaseException as error:
        message = failure_message(error)
        if message is None:
            raise
        raise CliError(f"cannot run {what}: {message}") from None
    if log_format == "json":
        # every line of stderr an object, to the last
        logging.getLogger("taskscheduler.cli").info("stopped")
    else:
        click.echo("stopped", err=True)


@contextmanager
def _service_package(name: str) -> Iterator[None]:
    try:
        yield
    except ImportError as error:
        raise CliError(f"cannot start the {name}: {error}") from None


def _fail(message: str) -> NoReturn:
    raise CliError(message)


@tsched.command()
@click.option("--host", envvar="TSCHED_HOST", default=DEFAULT_HOST, show_default=True)
@click.option(
    "--port", envvar="TSCHED_PORT", type=_PORT, default=DEFAULT_SERVER_PORT, show_default=True
)
@click.option(
    "--database",
    envvar="TSCHED_DATABASE",
    metavar="PATH|URL",
    help="The SQLite file (a path, or sqlite:///path), or a PostgreSQL URL "
    "(postgresql://user@host:5432/db, shared by replicas) "
    f"[default: DATA_DIR/{SERVER_DATABASE_NAME}]",
)
@click.option(
    "--data-dir",
    envvar="TSCHED_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help=_DATA_DIR_HELP,
)
@click.option(
    "--available-servers",
    envvar="AVAILABLE_SERVERS",
    metavar="URLS",
    callback=_url_list_option,
    help="Comma-separated base URLs of agents to send tasks to (agents may also register).",
)
@click.option(
    "--lost-after",
    envvar="TSCHED_LOST_AFTER",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_LOST_AFTER,
    show_default=True,
    metavar="SECONDS",
    callback=_seconds_option,
    help="Mark an agent lost when not heard from (heartbeat, registration, report) this long.",
)
@click.option(
    "--reconcile-interval",
    envvar="TSCHED_RECONCILE_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_RECONCILE_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    callback=_seconds_option,
    help="How often to check that every alive agent has exactly its tasks.",
)
@click.option(
    "--keep-runs",
    envvar="TSCHED_KEEP_RUNS",
    type=click.IntRange(min=0),
    default=DEFAULT_KEEP_RUNS,
    show_default=True,
    help="Keep each task's newest N runs of history (0: no count limit).",
)
@click.option(
    "--keep-days",
    envvar="TSCHED_KEEP_DAYS",
    type=click.FloatRange(min=0, max=MAX_KEEP_DAYS),
    default=DEFAULT_KEEP_DAYS,
    show_default=True,
    metavar="DAYS",
    help="Keep no history older than this many days (0: no age limit).",
)
@click.option(
    "--prune-interval",
    envvar="TSCHED_PRUNE_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_PRUNE_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    callback=_seconds_option,
    help="How often to prune the history to --keep-runs and --keep-days.",
)
@click.option(
    "--lease-seconds",
    envvar="TSCHED_LEASE_SECONDS",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_LEASE_SECONDS,
    show_default=True,
    metavar="SECONDS",
    callback=_seconds_option,
    help="Replicas on one database: the lease of the work done once (dispatch, reconcile, "
    "liveness, pruning) lasts this long; a dead holder is replaced within it.",
)
@click.option(
    "--replica-id",
    envvar="TSCHED_REPLICA_ID",
    help="This replica's name in the lease [default: HOSTNAME-PID-RANDOM; HOSTNAME on SQLite]; "
    "unique per replica.",
)
@click.option(
    "--max-body-bytes",
    envvar="TSCHED_MAX_BODY_BYTES",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_BODY_BYTES,
    show_default=True,
    help="Refuse larger request bodies with 413.",
)
@click.option(
    "--max-command-length",
    envvar="TSCHED_MAX_COMMAND_LENGTH",
    type=click.IntRange(min=1, max=MAX_COMMAND_LENGTH),
    default=MAX_COMMAND_LENGTH,
    show_default=True,
    help="Refuse longer commands (characters) with 422 at creation.",
)
@click.option(
    "--max-output-bytes",
    envvar="TSCHED_MAX_OUTPUT_BYTES",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_OUTPUT_BYTES,
    show_default=True,
    help="Keep at most this many bytes (the tail) of each reported stream.",
)
@_tls_option("--tls-cert", "TSCHED_TLS_CERT", "tls_cert", _SERVE_CERT_HELP)
@_tls_option("--tls-key", "TSCHED_TLS_KEY", "tls_key", _SERVE_KEY_HELP)
@_tls_option("--ca-cert", "TSCHED_CA_CERT", "ca_cert", _CA_CERT_HELP + " (agents').")
@_tls_option(
    "--client-ca",
    "TSCHED_CLIENT_CA",
    "client_ca",
    "Mutual TLS: refuse connections without a client certificate signed by this CA (PEM).",
)
@_auth_option(
    "--admin-token",
    "TSCHED_ADMIN_TOKEN",
    "admin_token",
    "Require this bearer token for everything (else the API is open; loopback only).",
)
@_auth_option(
    "--read-token",
    "TSCHED_READ_TOKEN",
    "read_token",
    "Also accept this bearer token for reading tasks, outputs and agents.",
)
@_auth_option("--join-token", "TSCHED_JOIN_TOKEN", "join_token", _JOIN_TOKEN_HELP)
@_auth_option(
    "--token-file",
    "TSCHED_TOKEN_FILE",
    "token_file",
    "Read 'admin = …', 'read = …', 'join = …' lines from this file (mode 600).",
    path=True,
)
@_insecure_option()
@_logging_options
@click.pass_context
def server(
    ctx: click.Context,
    host: str,
    port: int,
    database: str | None,
    data_dir: Path | None,
    available_servers: Sequence[str],
    lost_after: timedelta,
    reconcile_interval: timedelta,
    keep_runs: int,
    keep_days: float,
    prune_interval: timedelta,
    lease_seconds: timedelta,
    replica_id: str | None,
    max_body_bytes: int,
    max_command_length: int,
    max_output_bytes: int,
) -> None:
    """Run the server (REST API, task store, dispatch to agents).

    It marks agents lost when they fall silent, reconciles every alive agent's tasks on
    its registration and every --reconcile-interval, and prunes the history of each task to
    --keep-runs and --keep-days. Ctrl-C or SIGTERM lets open requests finish, then stops it.
    """
    command_line = click.core.ParameterSource.COMMANDLINE
    if (
        ctx.get_parameter_source("database") == command_line
        and ctx.get_parameter_source("data_dir") == command_line
    ):
        raise click.UsageError("give --database or --data-dir, not both", ctx)
    with _service_package("server"):
        from taskscheduler_server import ServerConfig
        from taskscheduler_server.database import database_location, describe_database

    if database is None:
        location: Path | str = (data_dir or default_data_dir()) / SERVER_DATABASE_NAME
    else:
        try:
            location = database_location(database)
        except ValueError as error:
            raise click.BadParameter(str(error), ctx, param_hint="'--database'") from None
        if isinstance(location, Path) and location.is_dir():
            raise click.BadParameter(f"{location} is a directory", ctx, param_hint="'--database'")
    try:
        config = ServerConfig(
            host=host,
            port=port,
            database=location,
            available_agents=tuple(available_servers),
            lost_after=lost_after,
            reconcile_interval=reconcile_interval,
            keep_runs=keep_runs,
            keep_days=keep_days,
            prune_interval=prune_interval,
            lease_duration=lease_seconds,
            **_replica_setting(replica_id),
            **_tls_settings(),
            **_auth_settings(),
            max_body_bytes=max_body_bytes,
            max_command_length=max_command_length,
            max_output_bytes=max_output_bytes,
        )
    except (TypeError, ValueError) as error:
        _fail(str(error))

    from .services import start_server

    async def start(nursery: trio.Nursery) -> None:
        url = await start_server(nursery, config)
        where = describe_database(config.database)
        click.echo(f"server listening on {url} (database {where}); Ctrl-C to stop")

    _serve(start, what=f"the server on {host}:{port}")


def _replica_setting(replica_id: str | None) -> dict[str, Any]:
    """``--replica-id`` for ``ServerConfig``: absent, the config makes a fresh one."""
    return {} if replica_id is None else {"replica_id": replica_id}


def _label_option(
    ctx: click.Context, param: click.Parameter, value: Sequence[str]
) -> dict[str, str]:
    """``--label k=v`` (repeatable) as a dict; the environment variable's value is split at
    commas (click splits it at whitespace first)."""
    labels: dict[str, str] = {}
    for item in value:
        for text in item.split(","):
            if not text.strip():
                continue
            try:
                key, label = parse_label(text)
            except ValueError as error:
                raise click.BadParameter(str(error).removeprefix("labels: ")) from None
            labels[key] = label
    return labels


@tsched.command()
@click.option("--host", envvar="TSCHED_AGENT_HOST", default=DEFAULT_HOST, show_default=True)
@click.option(
    "--port", envvar="TSCHED_AGENT_PORT", type=_PORT, default=DEFAULT_AGENT_PORT, show_default=True
)
@click.option(
    "--data-dir",
    envvar="TSCHED_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help="State directory: the agent's id and agent.sqlite3 "
    "[default: $XDG_DATA_HOME/taskscheduler/agent]",
)
@click.option(
    "--server",
    "server_url",
    envvar="TSCHED_SERVER",
    callback=_url_option,
    metavar="URL",
    help="The server to register with and report to.",
)
@click.option(
    "--advertise-url",
    envvar="TSCHED_ADVERTISE_URL",
    callback=_url_option,
    metavar="URL",
    help="The URL the server should reach this agent at [default: the one it listens on]",
)
@click.option(
    "--max-output-bytes",
    envvar="TSCHED_MAX_OUTPUT_BYTES",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_OUTPUT_BYTES,
    show_default=True,
    help="Bytes of stdout and of stderr kept per execution (the tail is kept).",
)
@click.option(
    "--heartbeat-interval",
    envvar="TSCHED_HEARTBEAT_INTERVAL",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_HEARTBEAT_INTERVAL,
    show_default=True,
    metavar="SECONDS",
    help="How often to tell the server this agent is alive.",
)
@click.option(
    "--kill-grace",
    envvar="TSCHED_KILL_GRACE",
    type=click.FloatRange(min=0),
    default=DEFAULT_KILL_GRACE,
    show_default=True,
    metavar="SECONDS",
    help="On Ctrl-C or SIGTERM, how long running commands may finish before they are killed.",
)
@_tls_option("--tls-cert", "TSCHED_TLS_CERT", "tls_cert", _SERVE_CERT_HELP)
@_tls_option("--tls-key", "TSCHED_TLS_KEY", "tls_key", _SERVE_KEY_HELP)
@_tls_option("--ca-cert", "TSCHED_CA_CERT", "ca_cert", _CA_CERT_HELP + " (the server's).")
@_tls_option(
    "--tls-client-cert",
    "TSCHED_TLS_CLIENT_CERT",
    "tls_client_cert",
    "Present this client certificate (PEM) to a server that requires mutual TLS.",
)
@_tls_option(
    "--tls-client-key",
    "TSCHED_TLS_CLIENT_KEY",
    "tls_client_key",
    "The private key of --tls-client-cert.",
)
@_auth_option(
    "--join-token", "TSCHED_JOIN_TOKEN", "join_token", "The server's join token: register with it."
)
@_insecure_option()
@click.option(
    "--label",
    "labels",
    envvar="TSCHED_LABELS",
    multiple=True,
    callback=_label_option,
    metavar="KEY=VALUE",
    help="A label of this agent, which task targets can select (repeatable; "
    "TSCHED_LABELS takes KEY=VALUE,KEY2=VALUE2).",
)
@_logging_options
def agent(
    host: str,
    port: int,
    data_dir: Path | None,
    server_url: str | None,
    advertise_url: str | None,
    max_output_bytes: int,
    heartbeat_interval: float,
    kill_grace: float,
    labels: dict[str, str],
) -> None:
    """Run an agent, which runs the tasks it is given on this host.

    Its schedules and undelivered reports are kept in DATA_DIR/agent.sqlite3. Ctrl-C or SIGTERM
    stops it gracefully (running commands get --kill-grace seconds); a second one, at once.
    """
    with _service_package("agent"):
        from taskscheduler_agent import AgentConfig

    try:
        config = AgentConfig(
            host=host,
            port=port,
            data_dir=data_dir or default_data_dir() / "agent",
            server_url=server_url,
            advertise_url=advertise_url,
            max_output_bytes=max_output_bytes,
            heartbeat_interval=heartbeat_interval,
            kill_grace=kill_grace,
            labels=labels,
            **_tls_settings(),
            **_auth_settings(),
        )
    except (TypeError, ValueError) as error:
        _fail(str(error))

    from .services import start_agent

    async def start(nursery: trio.Nursery) -> None:
        started = await start_agent(nursery, config)
        click.echo(f"agent {started.agent_id} listening on {started.url}; Ctrl-C to stop")

    _serve(start, what=f"the agent on {host}:{port}")


@tsched.command()
@click.option("--host", envvar="TSCHED_HOST", default=DEFAULT_HOST, show_default=True)
@click.option(
    "--port",
    envvar="TSCHED_PORT",
    type=_PORT,
    default=DEFAULT_SERVER_PORT,
    show_default=True,
    help="The server's port; agents take free ports.",
)
@click.option(
    "--agents",
    type=click.IntRange(1, 64),
    default=DEFAULT_AGENTS,
    show_default=True,
    help="How many local agents to start.",
)
@click.option(
    "--data-dir",
    envvar="TSCHED_DATA_DIR",
    type=click.Path(file_okay=False, path_type=Path),
    help=_DATA_DIR_HELP,
)
@_logging_options
def up(host: str, port: int, agents: int, data_dir: Path | None) -> None:
    """Run a server and local agents in one process."""
    directory = data_dir or default_data_dir()
    with _service_package("server and agents"):
        import taskscheduler_agent  # noqa: F401
        import taskscheduler_server  # noqa: F401

    from .services import start_local_stack

    async def start(nursery: trio.Nursery) -> None:
        stack = await start_local_stack(
            nursery, host=host, port=port, agents=agents, data_dir=directory
        )
        click.echo(f"server    {stack.server_url}")
        click.echo(f"database  {stack.database}")
        for n, (started, agent_dir) in enumerate(zip(stack.agents, stack.agent_dirs, strict=True)):
            click.echo(f"agent {n + 1}   {started.agent_id}  {started.url}  (state {agent_dir})")
        url_option = "" if stack.server_url == DEFAULT_URL else f" --url {stack.server_url}"
        click.echo(f"try:      tsched{url_option} create 'echo hello' -f 'every 5 seconds'")
        click.echo("Ctrl-C to stop")

    _serve(start, what=f"taskscheduler (server on {host}:{port}, state in {directory})")


for _command in manage.COMMANDS:
    tsched.add_command(_command)


def main() -> None:
    """The ``tsched`` console script."""
    tsched(prog_name="tsched")
