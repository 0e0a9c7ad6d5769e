"""The server's configuration: one frozen object with defaults and units."""

from __future__ import annotations

import math
import os
import secrets
import socket
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import attrs

from taskscheduler_core import (
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_REPORT_GRACE,
    MAX_COMMAND_LENGTH,
    RetentionPolicy,
)

from .database import database_location, describe_database
from .tls import TlsConfigError, check_ca, check_pair

#: Request bodies larger than this are refused with 413 before they are parsed.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: The most items one page of a listing may hold: ``?limit=`` takes up to this, and more is
#: refused with 422. (``GET /api/v1/agents`` lists every agent, unpaged.)
MAX_PAGE_SIZE = 1000

#: History kept per task by default: its newest 1,000 runs, none older than 30 days.
DEFAULT_KEEP_RUNS = 1000
DEFAULT_KEEP_DAYS = 30.0
#: More is surely a typo (and "now minus that" must stay a date); 0 keeps history forever.
MAX_KEEP_DAYS = 36_500
#: Likewise for runs (and the pruning reads keep_runs + 1 fire times: that must fit SQLite).
MAX_KEEP_RUNS = 1_000_000_000
#: How often the history is pruned to that.
DEFAULT_PRUNE_INTERVAL = timedelta(seconds=60)

#: An agent not heard from (heartbeat, registration, report) for this long is ``lost``: three
#: missed heartbeats at the agent's default interval of 5 s.
DEFAULT_LOST_AFTER = timedelta(seconds=15)

#: How often the server compares what each alive agent has scheduled with what it should have.
DEFAULT_RECONCILE_INTERVAL = timedelta(seconds=30)

#: How long the lease of the work done once lasts without a renewal (see lease.py): a replica
#: that dies is replaced within this.
DEFAULT_LEASE_DURATION = timedelta(seconds=15)

#: The longest replica id (it is stored in the leases table and shown in metrics).
MAX_REPLICA_ID_LENGTH = 200


def default_replica_id(database: Path | str | None = None) -> str:
    """``<hostname>-<pid>-<4 random hex>``: unique among the live replicas, new at each start.

    On SQLite (``database`` a path) it is ``<hostname>`` instead: a SQLite file serves one
    server, so the same name at each start lets a server restarted after a crash renew its
    previous life's lease at once, instead of waiting for it to run out before dispatching.
    """
    if isinstance(database, Path):
        return socket.gethostname()[:MAX_REPLICA_ID_LENGTH]
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(2)}"


def _default_replica_id(config: ServerConfig) -> str:
    return default_replica_id(config.database)


def normalize_agent_url(url: str) -> str:
    """An agent base URL as the dispatcher uses it: with a scheme, without a trailing slash.

    ``AVAILABLE_SERVERS`` of the original design may name agents as ``host:port``; those are
    taken as plain HTTP.
    """
    url = url.strip()
    if not url:
        raise ValueError("an agent URL must not be empty")
    if "://" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"agent URL {url!r} must be http:// or https://")
    return url.rstrip("/")


def parse_available_servers(text: str) -> tuple[str, ...]:
    """Split ``AVAILABLE_SERVERS`` (comma-separated agent base URLs); blanks are ignored."""
    return tuple(normalize_agent_url(part) for part in text.split(",") if part.strip())


def _agent_urls(urls: Iterable[str]) -> tuple[str, ...]:
    if isinstance(urls, str):
        return parse_available_servers(urls)
    # Order kept, duplicates dropped: each agent is resolved once.
    return tuple(dict.fromkeys(normalize_agent_url(url) for url in urls))


def _positive_duration(
    instance: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if value <= timedelta(0):
        raise ValueError(f"{attribute.name} must be positive, got {value}")


def _positive_int(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


def _non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


def _keep_runs(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEEP_RUNS:
        raise ValueError(
            f"--keep-runs must be an integer from 0 (no limit) to {MAX_KEEP_RUNS}, got {value!r}"
        )


def _keep_days(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"--keep-days must be a number of days, got {value!r}")
    if not math.isfinite(value) or not 0 <= value <= MAX_KEEP_DAYS:
        raise ValueError(
            f"--keep-days must be a number of days from 0 (no limit) to {MAX_KEEP_DAYS}, "
            f"got {value!r}"
        )


def _prune_interval(
    instance: object, attribute: attrs.Attribute[timedelta], value: timedelta
) -> None:
    if value <= timedelta(0):
        raise ValueError(f"--prune-interval must be a positive number of seconds, got {value}")


def _command_length(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= MAX_COMMAND_LENGTH:
        raise ValueError(
            f"{attribute.name} must be between 1 and {MAX_COMMAND_LENGTH}, got {value}"
        )


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None or value == "" else Path(value)


def _token(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and (not value.strip() or value != value.strip()):
        raise ValueError(f"{attribute.name} must be non-empty, without surrounding blanks")


def _replica_id(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if (
        not isinstance(value, str)
        or not value.strip()
        or value != value.strip()
        or len(value) > MAX_REPLICA_ID_LENGTH
        or not value.isprintable()
    ):
        raise ValueError(
            f"--replica-id must be 1 to {MAX_REPLICA_ID_LENGTH} printable characters without "
            f"surrounding blanks, got {value!r}"
        )


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {value}")


@attrs.frozen(kw_only=True)
class ServerConfig:
    """Everything :func:`taskscheduler_server.serve` needs.

    ``port=0`` binds any free port; ``serve`` reports the real one. ``available_agents`` are the
    agent base URLs of ``AVAILABLE_SERVERS``: the dispatcher asks each for its id and then treats
    it as a registered agent.
    """

    #: A SQLite file (a ``Path``; given as a path or ``sqlite:///path``) or a PostgreSQL URL (a
    #: ``str``: ``postgresql://…``); see database.py. Its password is never shown in a repr.
    database: Path | str = attrs.field(converter=database_location, repr=describe_database)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    available_agents: tuple[str, ...] = attrs.field(default=(), converter=_agent_urls)
    report_grace: timedelta = attrs.field(
        default=DEFAULT_REPORT_GRACE, validator=_positive_duration
    )
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=_positive_int)
    #: Longer commands are refused (422) at creation. It may lower the core's hard cap
    #: (``MAX_COMMAND_LENGTH``, which agents enforce too), not raise it.
    max_command_length: int = attrs.field(default=MAX_COMMAND_LENGTH, validator=_command_length)
    #: A reported stream longer than this many UTF-8 bytes is cut to its tail, the cut counted
    #: in ``stdout_dropped`` / ``stderr_dropped``: the server does not trust agents' own caps.
    max_output_bytes: int = attrs.field(default=DEFAULT_MAX_OUTPUT_BYTES, validator=_non_negative)
    backoff_initial: timedelta = attrs.field(
        default=timedelta(seconds=0.5), validator=_positive_duration
    )
    backoff_max: timedelta = attrs.field(
        default=timedelta(seconds=30), validator=_positive_duration
    )
    agent_request_timeout: timedelta = attrs.field(
        default=timedelta(seconds=5), validator=_positive_duration
    )
    #: How long open requests may finish after shutdown starts before they are cut off.
    graceful_timeout: timedelta = attrs.field(
        default=timedelta(seconds=3), validator=_positive_duration
    )
    #: An agent silent for this long is marked ``lost``; the next contact marks it ``alive``.
    lost_after: timedelta = attrs.field(default=DEFAULT_LOST_AFTER, validator=_positive_duration)
    #: The period of the reconciliation of every alive agent's tasks (it also runs on every
    #: registration).
    reconcile_interval: timedelta = attrs.field(
        default=DEFAULT_RECONCILE_INTERVAL, validator=_positive_duration
    )
    #: With both, the server serves HTTPS with this certificate (PEM, chain included) and key.
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    #: The CA the server verifies agents' HTTPS certificates with (default: the system's).
    ca_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    #: Mutual TLS: every connection must present a client certificate signed by this CA (agents
    #: and API clients alike: hypercorn verifies at the handshake, before any route is known).
    client_ca: Path | None = attrs.field(default=None, converter=_optional_path)
    #: Bearer tokens (docs/security.md). Without ``admin_token`` the client endpoints are
    #: open; ``read_token`` may read but not write; ``join_token`` lets agents register and
    #: receive their own credentials (without it the agent endpoints are open). Never shown in
    #: a repr, so never logged.
    admin_token: str | None = attrs.field(default=None, repr=False, validator=_token)
    read_token: str | None = attrs.field(default=None, repr=False, validator=_token)
    join_token: str | None = attrs.field(default=None, repr=False, validator=_token)
    #: Serve on a non-loopback host without those tokens all the same.
    insecure: bool = False
    #: History retention (``--keep-runs``, ``--keep-days``): each task keeps its newest
    #: ``keep_runs`` runs, none older than ``keep_days`` days; 0 turns a rule off. Applied
    #: every ``prune_interval``; a deleted task is forgotten once its history is gone.
    keep_runs: int = attrs.field(default=DEFAULT_KEEP_RUNS, validator=_keep_runs)
    keep_days: float = attrs.field(default=DEFAULT_KEEP_DAYS, validator=_keep_days)
    prune_interval: timedelta = attrs.field(
        default=DEFAULT_PRUNE_INTERVAL, validator=_prune_interval
    )
    #: Replicas sharing one database (see lease.py): the work done once (dispatch,
    #: reconciliation, liveness, pruning) is done by the holder of a lease of this duration,
    #: renewed every third of it; ``replica_id`` names this replica in the leases table.
    lease_duration: timedelta = attrs.field(
        default=DEFAULT_LEASE_DURATION, validator=_positive_duration
    )
    replica_id: str = attrs.field(
        default=attrs.Factory(_default_replica_id, takes_self=True), validator=_replica_id
    )

    @property
    def retention(self) -> RetentionPolicy:
        """The retention policy of ``keep_runs`` and ``keep_days`` (0 is no limit: ``None``)."""
        return RetentionPolicy(keep_runs=self.keep_runs or None, keep_days=self.keep_days or None)

    def __attrs_post_init__(self) -> None:
        if self.read_token is not None and self.admin_token is None:
            raise ValueError("a read token needs an admin token (else the API is open anyway)")
        check_pair(self.tls_cert, self.tls_key, what="tls_cert/tls_key")
        check_ca(self.ca_cert)
        check_ca(self.client_ca)
        if self.client_ca is not None and self.tls_cert is None:
            raise TlsConfigError("client_ca (mutual TLS) needs tls_cert and tls_key (HTTPS)")
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )
