"""The task option flags shared by ``tsched create`` and ``tsched edit``.

Each flag is one field of the API's create body (``--retry-delay`` is ``retry_delay``); a flag
not given is not sent, so the server's default (on create) or the task's current value (on edit)
stays. Values are checked as far as the command line can (numbers, ``key=value`` pairs, ids), so
that a typo is exit status 2 naming the flag; the server checks the rest (time zones, frequencies)
and names the field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar
from uuid import UUID

import click

from taskscheduler_core import Overlap, WireError, parse_label
from taskscheduler_core.options import MAX_RETRIES, MAX_RETRY_DELAY, MAX_SECONDS

_F = TypeVar("_F", bound=Callable[..., Any])

#: What ``--timeout none`` (and the like) parses to: reset the option to "none" on edit.
NONE = "none"


def _seconds(*, allow_none: bool, maximum: float = MAX_SECONDS) -> Callable[..., object]:
    """A callback reading a number of seconds > 0 (at most ``maximum``), or ``none``."""

    def convert(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
        if value is None:
            return None
        if allow_none and value.strip().lower() == NONE:
            return NONE
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not 0 < seconds <= maximum:  # also refuses nan
            expected = f"a number of seconds > 0 and at most {maximum:g}"
            raise click.BadParameter(
                f"{value!r} is not {expected}" + (", or 'none'" if allow_none else ""), ctx, param
            )
        return seconds

    return convert


def _bytes(ctx: click.Context, param: click.Parameter, value: str | None) -> object:
    """A number of bytes >= 1, or ``none`` (the agent's limit)."""
    if value is None:
        return None
    if value.strip().lower() == NONE:
        return NONE
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise click.BadParameter(f"{value!r} is not a number of bytes >= 1, or 'none'", ctx, param)
    return count


def _pairs(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` flags as a dict (a later key wins)."""
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", ctx, param)
        pairs[key] = text
    return pairs


def label_pairs(
    ctx: click.Context, param: click.Parameter, values: Sequence[str]
) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` label flags as a dict, each checked like an agent's label."""
    labels: dict[str, str] = {}
    for value in values:
        try:
            key, text = parse_label(value)
        except WireError as error:
            raise click.BadParameter(error.message, ctx, param) from None
        labels[key] = text
    return labels


def task_option_flags(*, edit: bool) -> Callable[[_F], _F]:
    """The option flags of ``create`` (``edit=False``) or ``edit`` (``edit=True``).

    The command receives them as the keyword arguments :func:`task_options` takes.
    """
    flags: list[Callable[[_F], _F]] = []
    if edit:
        flags += [
            click.option("--command", help="The new shell command."),
            click.option(
                "-f",
                "--frequency",
                help="The new frequency ('every 5 minutes', '0 3 * * *', '@daily'); counted "
                "from now on.",
            ),
        ]
    flags += [
        click.option("--name", help="A name for people (not unique)."),
        click.option(
            "--timezone",
            metavar="ZONE",
            help="IANA time zone a cron frequency is read in (default UTC).",
        ),
        click.option(
            "--timeout",
            callback=_seconds(allow_none=edit),
            metavar="SECONDS",
            help="Kill a run after SECONDS (status timed_out)"
            + ("; 'none' for no limit." if edit else " [default: none]"),
        ),
        click.option(
            "--overlap",
            type=click.Choice([overlap.value for overlap in Overlap]),
            help="When a slot comes while the previous run on that agent still runs "
            "[default: skip].",
        ),
        click.option(
            "--starting-deadline",
            callback=_seconds(allow_none=edit),
            metavar="SECONDS",
            help="How late a slot may still start, else it is missed"
            + ("; 'none' for the default." if edit else " [default: 10 s]"),
        ),
        click.option(
            "--retries",
            type=click.IntRange(0, MAX_RETRIES),
            metavar="N",
            help="Extra attempts after a failed run [default: 0].",
        ),
        click.option(
            "--retry-delay",
            callback=_seconds(allow_none=False, maximum=MAX_RETRY_DELAY),
            metavar="SECONDS",
            help="Wait before the first retry; doubles per attempt [default: 1].",
        ),
        click.option(
            "--env",
            multiple=True,
            metavar="KEY=VALUE",
            callback=_pairs,
            help="An environment variable for the command (repeatable)"
            + ("; added to the task's." if edit else "."),
        ),
        click.option(
            "--max-output-bytes",
            callback=_bytes,
            metavar="N",
            help="Bytes kept of each stream per run [default: the agent's limit]"
            + ("; 'none' for the agent's limit." if edit else "."),
        ),
        click.option(
            "--target-agent",
            "target_agents",
            multiple=True,
            type=click.UUID,
            metavar="ID",
            help="Run only on this agent (repeatable).",
        ),
        click.option(
            "--target-label",
            "target_labels",
            multiple=True,
            metavar="KEY=VALUE",
            callback=label_pairs,
            help="Run only on agents with this label (repeatable: all must match).",
        ),
        click.option(
            "--all-agents",
            is_flag=True,
            help="Run on every agent" + (" again." if edit else " [the default]."),
        ),
    ]
    if edit:
        flags.append(
            click.option(
                "--clear-env",
                is_flag=True,
                help="Remove the task's environment variables (before adding --env ones).",
            )
        )

    def decorate(command: _F) -> _F:
        for flag in reversed(flags):
            command = flag(command)
        return command

    return decorate


def task_options(
    *,
    name: str | None = None,
    timezone: str | None = None,
    timeout: float | str | None = None,
    overlap: str | None = None,
    starting_deadline: float | str | None = None,
    retries: int | None = None,
    retry_delay: float | None = None,
    max_output_bytes: int | str | None = None,
    target_agents: Sequence[UUID] = (),
    target_labels: Mapping[str, str] | None = None,
    all_agents: bool = False,
    command: str | None = None,
    frequency: str | None = None,
) -> dict[str, Any]:
    """The API fields the flags given set, as JSON values (``env`` is left to the command).

    Raises :class:`click.UsageError` for targets given more than one way.
    """
    targets = [
        flag
        for flag, given in (
            ("--target-agent", bool(target_agents)),
            ("--target-label", bool(target_labels)),
            ("--all-agents", all_agents),
        )
        if given
    ]
    if len(targets) > 1:
        raise click.UsageError(f"give only one of {', '.join(targets)}")
    fields: dict[str, Any] = {
        "command": command,
        "frequency": frequency,
        "name": name,
        "timezone": timezone,
        "timeout": timeout,
        "overlap": overlap,
        "starting_deadline": starting_deadline,
        "retries": retries,
        "retry_delay": retry_delay,
        "max_output_bytes": max_output_bytes,
    }
    options = {
        key: (None if value == NONE else value)
        for key, value in fields.items()
        if value is not None
    }
    if target_agents:
        options["targets"] = {"agents": [str(agent_id) for agent_id in target_agents]}
    elif target_labels:
        options["targets"] = {"labels": dict(target_labels)}
    elif all_agents:
        options["targets"] = {"agents": None, "labels": None}
    return options
