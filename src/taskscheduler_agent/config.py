"""The agent's configuration: one frozen object with defaults; durations are in seconds."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

import attrs

from taskscheduler_core import DEFAULT_MAX_OUTPUT_BYTES, WireError
from taskscheduler_core.options import check_labels, label_dict

from .errors import AgentConfigError
from .tls import check_ca, check_pair, client_ssl_context


def _port(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise AgentConfigError("must be an integer from 0 to 65535", field="port", value=value)


def _positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise AgentConfigError(
            f"must be > 0 seconds, got {value!r}", field=attribute.name, value=value
        )


def _non_negative(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:
        raise AgentConfigError(f"must be >= 0, got {value!r}", field=attribute.name, value=value)


def _byte_count(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise AgentConfigError(
            f"must be an integer >= 0, got {value!r}", field=attribute.name, value=value
        )


def _url(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise AgentConfigError(
            f"must be an http:// or https:// URL, got {value!r}", field=attribute.name, value=value
        )


def _labels(
    instance: object, attribute: attrs.Attribute[dict[str, str]], value: Mapping[str, str]
) -> None:
    try:
        check_labels(instance, attribute, value)
    except WireError as error:
        raise AgentConfigError(error.message, field="labels", value=dict(value)) from None


def _optional_path(value: str | Path | None) -> Path | None:
    return None if value is None or value == "" else Path(value)


def _base_url(value: str | None) -> str | None:
    # URLs are joined as f"{base}/api/v1/...": a trailing slash would double up.
    if value is None:
        return None
    value = value.strip().rstrip("/")
    return value or None


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Everything ``run_agent`` needs to know; see each field."""

    #: Where the agent keeps its state: its identity file and ``agent.sqlite3``.
    data_dir: Path = attrs.field(converter=Path)
    #: The address the HTTP endpoint binds to.
    host: str = "127.0.0.1"
    #: The port it binds to; 0 picks any free port (the bound URL is in ``AgentStarted``).
    port: int = attrs.field(default=8081, validator=_port)
    #: The server to register with and report executions to; ``None`` keeps reports local.
    server_url: str | None = attrs.field(default=None, converter=_base_url, validator=_url)
    #: The URL the server should reach this agent at; default the bound URL.
    advertise_url: str | None = attrs.field(default=None, converter=_base_url, validator=_url)
    #: Per-stream output cap; the tail is kept.
    max_output_bytes: int = attrs.field(default=DEFAULT_MAX_OUTPUT_BYTES, validator=_byte_count)
    #: First delay before a report (and a registration) is retried.
    report_backoff_initial: float = attrs.field(default=0.2, validator=_positive)
    #: Longest delay between two attempts of one report.
    report_backoff_max: float = attrs.field(default=30.0, validator=_positive)
    #: Longest delay between two registration attempts: registration is what lets the server
    #: push tasks here, so it is retried more eagerly than reports.
    register_backoff_max: float = attrs.field(default=10.0, validator=_positive)
    #: On a graceful shutdown, how long running commands may go on before their process
    #: groups are killed (and their executions recorded as ``error``).
    kill_grace: float = attrs.field(default=10.0, validator=_non_negative)
    #: How often the agent tells the server it is alive (``POST .../heartbeat``).
    heartbeat_interval: float = attrs.field(default=5.0, validator=_positive)
    #: How long one HTTP request to the server may take before it counts as failed.
    request_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: The server's join token: presented at the first registration, in exchange for this
    #: agent's own credentials (docs/security.md). With it, the scheduling endpoints accept
    #: the server alone. Never shown in a repr, so never logged.
    join_token: str | None = attrs.field(default=None, repr=False)
    #: Serve on a non-loopback host without a join token all the same.
    insecure: bool = False
    #: With both, the agent serves HTTPS with this certificate (PEM, chain included) and key.
    tls_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_key: Path | None = attrs.field(default=None, converter=_optional_path)
    #: The CA the agent verifies the server's HTTPS certificate with (default: the system's).
    ca_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    #: Mutual TLS: the client certificate and key the agent presents to the server.
    tls_client_cert: Path | None = attrs.field(default=None, converter=_optional_path)
    tls_client_key: Path | None = attrs.field(default=None, converter=_optional_path)
    #: What this agent declares about itself (``role=web``): sent at registration, shown in
    #: ``GET /api/v1/agent``; a task's ``targets`` may select agents by them.
    labels: dict[str, str] = attrs.field(
        factory=dict, converter=label_dict, validator=_labels, hash=False
    )

    def __attrs_post_init__(self) -> None:
        check_pair(self.tls_cert, self.tls_key, what="tls_cert/tls_key")
        check_pair(self.tls_client_cert, self.tls_client_key, what="tls_client_cert/tls_client_key")
        check_ca(self.ca_cert)

    def server_verify(self) -> ssl.SSLContext | bool:
        """httpx's ``verify=`` for calls to the server: its CA, and our client certificate."""
        return client_ssl_context(self.ca_cert, self.tls_client_cert, self.tls_client_key)
