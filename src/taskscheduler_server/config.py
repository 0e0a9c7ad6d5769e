"""The server's configuration: one frozen object with defaults and units."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path

import attrs

from taskscheduler_core import DEFAULT_REPORT_GRACE

#: Request bodies larger than this are refused with 413 before they are parsed.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024

#: An agent not heard from (heartbeat, registration, report) for this long is ``lost``: three
#: missed heartbeats at the agent's default interval of 5 s.
DEFAULT_LOST_AFTER = timedelta(seconds=15)

#: How often the server compares what each alive agent has scheduled with what it should have.
DEFAULT_RECONCILE_INTERVAL = timedelta(seconds=30)


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

    database: Path = attrs.field(converter=Path)
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8080, validator=_port)
    available_agents: tuple[str, ...] = attrs.field(default=(), converter=_agent_urls)
    report_grace: timedelta = attrs.field(
        default=DEFAULT_REPORT_GRACE, validator=_positive_duration
    )
    max_body_bytes: int = attrs.field(default=DEFAULT_MAX_BODY_BYTES, validator=_positive_int)
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

    def __attrs_post_init__(self) -> None:
        if self.backoff_max < self.backoff_initial:
            raise ValueError(
                f"backoff_max ({self.backoff_max}) must be >= backoff_initial "
                f"({self.backoff_initial})"
            )
