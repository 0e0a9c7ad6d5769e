"""Task options: how each execution of a task runs, and where.

Every option is optional on the wire, with a default chosen to be what a user of cron expects
(no surprise runs, nothing killed unless asked):

==================  ================  ======================================================
option              default           meaning
==================  ================  ======================================================
timezone            ``"UTC"``         IANA zone the cron expression is read in
timeout             ``null`` (none)   seconds; the process group is killed, status timed_out
overlap             ``"skip"``        a slot that comes while the previous execution on that
                                      agent still runs: skip it, ``allow`` both, or
                                      ``replace`` (kill the old one, status cancelled)
starting_deadline   ``null``          seconds a slot may start late, else ``missed``; null =
                                      10 s
retries             ``0``             extra attempts after a failed / timed-out execution
retry_delay         ``1.0``           seconds before the first retry; doubles each attempt
env                 ``{}``            extra environment variables for the command
max_output_bytes    ``null``          per stream; null = the agent's cap (1 MiB by default)
targets             all agents        ``{"agents": [ids]}`` or ``{"labels": {"role": "web"}}``
name                ``null``          a label for people; not unique
==================  ================  ======================================================
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import attrs

from .errors import WireError

#: Longest timeout / starting deadline / retry delay accepted: a year, like frequencies.
MAX_SECONDS = 366 * 86_400.0
MAX_RETRIES = 10
#: Retry delays double per attempt but never wait longer than this.
MAX_RETRY_DELAY = 3600.0
MAX_NAME_LENGTH = 200
MAX_ENV_VARIABLES = 100
MAX_ENV_BYTES = 65_536
MAX_LABELS = 32
MAX_TARGET_AGENTS = 1000

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
#: Label keys and values: like Kubernetes labels, so selectors read the same.
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?")
#: The agent sets these itself; a task may not override them.
RESERVED_ENV_PREFIX = "TSCHED_"


class Overlap(enum.Enum):
    """What an agent does when a slot comes while the task's previous execution still runs."""

    SKIP = "skip"  #: record the new slot as skipped (default: never two at once)
    ALLOW = "allow"  #: start it anyway: several executions may run at once
    REPLACE = "replace"  #: kill the running one (status cancelled) and start the new one


def seconds(instance: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    """A duration in seconds: a finite number > 0 and at most a year (``None`` passes)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(
            f"must be a number of seconds, got {type(value).__name__}", field=attribute.name
        )
    if not math.isfinite(value) or value <= 0 or value > MAX_SECONDS:
        raise WireError(
            f"must be a number of seconds > 0 and at most {MAX_SECONDS:.0f}, got {value}",
            field=attribute.name,
        )


def _float(value: float) -> float:
    # ints become floats (30 → 30.0) so that equal options compare equal; anything else is
    # left for the validator to refuse with a message
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _optional_float(value: float | None) -> float | None:
    return None if value is None else _float(value)


def _retries(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_RETRIES:
        raise WireError(f"must be between 0 and {MAX_RETRIES}, got {value}", field=attribute.name)


def _retry_delay(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    seconds(instance, attribute, value)
    if value > MAX_RETRY_DELAY:
        raise WireError(f"must be at most {MAX_RETRY_DELAY:.0f} seconds", field=attribute.name)


def _max_output_bytes(
    instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value < 1:
        raise WireError(f"must be >= 1, got {value}", field=attribute.name)


def _frozen_env(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


def check_env(instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, str]) -> None:
    """Environment variables: shell-safe names, no ``TSCHED_`` overrides, no NUL, bounded size."""
    name = attribute.name
    if len(value) > MAX_ENV_VARIABLES:
        raise WireError(f"has {len(value)} variables, at most {MAX_ENV_VARIABLES}", field=name)
    total = 0
    for key, text in value.items():
        if not isinstance(key, str) or _ENV_NAME.fullmatch(key) is None:
            raise WireError(f"invalid variable name {key!r}: letters, digits, _", field=name)
        if key.upper().startswith(RESERVED_ENV_PREFIX):
            raise WireError(f"{key!r}: names starting with TSCHED_ are reserved", field=name)
        if not isinstance(text, str) or "\x00" in text:
            raise WireError(f"the value of {key!r} must be a string without NUL", field=name)
        total += len(key.encode()) + len(text.encode())
    if total > MAX_ENV_BYTES:
        raise WireError(f"is too large ({total} bytes, at most {MAX_ENV_BYTES})", field=name)


def check_labels(
    instance: object, attribute: attrs.Attribute[Any], value: Mapping[str, str] | None
) -> None:
    """Labels: at most 32 ``key=value`` pairs, each part like a Kubernetes label."""
    if value is None:
        return
    name = attribute.name
    if len(value) > MAX_LABELS:
        raise WireError(f"has {len(value)} labels, at most {MAX_LABELS}", field=name)
    for key, text in value.items():
        if not isinstance(key, str) or _LABEL_KEY.fullmatch(key) is None:
            raise WireError(
                f"invalid label key {key!r}: letters, digits and . _ / - (at most 63)", field=name
            )
        if not isinstance(text, str) or _LABEL_VALUE.fullmatch(text) is None:
            raise WireError(
                f"invalid value {text!r} for label {key!r}: letters, digits and . _ - (at most 63)",
                field=name,
            )


def label_dict(value: Mapping[str, str]) -> dict[str, str]:
    """The converter of a labels field (``converter=dict`` would leave mypy unable to type it)."""
    return dict(value)


def _optional_labels(value: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if value is None else dict(value)


def _optional_ids(value: Iterable[UUID] | None) -> tuple[UUID, ...] | None:
    return None if value is None else tuple(dict.fromkeys(value))


def parse_label(text: str) -> tuple[str, str]:
    """Parse ``key=value`` (the ``--label`` flag); raises :class:`WireError` naming the problem."""
    key, sep, value = text.partition("=")
    if not sep:
        raise WireError(f"invalid label {text!r}: expected key=value", field="labels")
    check_labels(None, attrs.fields(Targets).labels, {key.strip(): value.strip()})
    return key.strip(), value.strip()


def _targets_valid(instance: Targets, attribute: attrs.Attribute[Any], value: object) -> None:
    # Fields relative to Targets: the converter prefixes the path of the enclosing body
    # ("targets.agents" in a create body), as it does for every nested field.
    if instance.agents is not None and instance.labels is not None:
        raise WireError("give either agents or labels, not both")
    if instance.agents is not None and not 1 <= len(instance.agents) <= MAX_TARGET_AGENTS:
        raise WireError(f"must list between 1 and {MAX_TARGET_AGENTS} agent ids", field="agents")
    if instance.labels is not None and not instance.labels:
        raise WireError("must hold at least one label", field="labels")


@attrs.frozen(kw_only=True)
class Targets:
    """Which agents run a task: all of them (both fields null), a list of ids, or a selector.

    A label selector matches an agent that has every label of the selector with that value.
    """

    agents: tuple[UUID, ...] | None = attrs.field(default=None, converter=_optional_ids)
    labels: dict[str, str] | None = attrs.field(
        default=None,
        converter=_optional_labels,
        validator=[check_labels, _targets_valid],
        hash=False,
    )

    @property
    def all(self) -> bool:
        return self.agents is None and self.labels is None

    def matches(self, agent_id: UUID, labels: Mapping[str, str]) -> bool:
        """Whether the agent ``agent_id`` with ``labels`` should run the task."""
        if self.agents is not None:
            return agent_id in self.agents
        if self.labels is not None:
            return all(labels.get(key) == value for key, value in self.labels.items())
        return True

    def __str__(self) -> str:
        if self.agents is not None:
            return ",".join(str(agent_id) for agent_id in self.agents)
        if self.labels is not None:
            return ",".join(f"{key}={value}" for key, value in sorted(self.labels.items()))
        return "all"


def _check_timezone(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    from .cron import check_timezone  # the cron module owns zone lookups (and their cache)

    try:
        check_timezone(value)
    except ValueError as error:
        raise WireError(str(error), field=attribute.name) from None


@attrs.frozen(kw_only=True)
class RunPolicy:
    """The options an agent needs to run a task; shared by create bodies, tasks and specs."""

    timezone: str = attrs.field(default="UTC", validator=_check_timezone)
    timeout: float | None = attrs.field(default=None, converter=_optional_float, validator=seconds)
    overlap: Overlap = Overlap.SKIP
    starting_deadline: float | None = attrs.field(
        default=None, converter=_optional_float, validator=seconds
    )
    retries: int = attrs.field(default=0, validator=_retries)
    retry_delay: float = attrs.field(default=1.0, converter=_float, validator=_retry_delay)
    env: dict[str, str] = attrs.field(factory=dict, converter=_frozen_env, validator=check_env)
    max_output_bytes: int | None = attrs.field(default=None, validator=_max_output_bytes)

    def retry_delay_for(self, attempt: int) -> float:
        """Seconds to wait after attempt number ``attempt`` (1 = the first) failed."""
        return float(min(self.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))

    def policy_fields(self) -> dict[str, Any]:
        """The run-policy fields of this object (often a subclass), to copy into another model."""
        return {name: getattr(self, name) for name in POLICY_FIELD_NAMES}

    def policy(self) -> RunPolicy:
        """Just the run policy of this object (which may be a subclass with more fields)."""
        return RunPolicy(**self.policy_fields())


def check_name(instance: object, attribute: attrs.Attribute[str | None], value: str | None) -> None:
    if value is None:
        return
    if not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise WireError(
            f"must be non-blank and at most {MAX_NAME_LENGTH} characters", field=attribute.name
        )
    if any(ord(char) < 32 for char in value):
        raise WireError("must not contain control characters", field=attribute.name)


#: Names of the run-policy fields.
POLICY_FIELD_NAMES = tuple(field.name for field in attrs.fields(RunPolicy))
