"""The ``tsched`` commands that read and change tasks, their history and agents.

``list``, ``show``, ``runs``, ``history``, ``edit``, ``pause``, ``resume``, ``run``, ``delete``
and ``agents``: each is one API call (``edit`` with ``--env`` reads the task first), printed as an
aligned table (:mod:`.tables`) or, with ``--json``, as the API's JSON object and nothing else.
:data:`COMMANDS` is added to the ``tsched`` group by :mod:`.cli`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import click
from rich.table import Table

from taskscheduler_core import (
    ExecutionStatus,
    RunStatus,
    Task,
    TaskState,
    parse_time,
    unstructure,
)

from . import tables
from .cli_common import Session, echo_json, reported_client_errors
from .task_flags import label_pairs, task_option_flags, task_options

_F = TypeVar("_F", bound=Callable[..., Any])

_PAGE_LIMIT = click.IntRange(1, 1000)


# --- shared options and output -------------------------------------------------------------------


def json_flag(command: _F) -> _F:
    """``--json``: print the API's JSON object instead of a table."""
    return click.option(
        "--json", "as_json", is_flag=True, help="Print the API's JSON answer instead."
    )(command)


def _page_flags(what: str) -> Callable[[_F], _F]:
    def decorate(command: _F) -> _F:
        command = click.option(
            "--cursor",
            metavar="CURSOR",
            help=f"Continue a listing where the previous page of {what} ended.",
        )(command)
        return click.option(
            "--limit",
            type=_PAGE_LIMIT,
            metavar="N",
            help=f"At most N {what} (1-1000) [default: the server's page size].",
        )(command)

    return decorate


def _time(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An RFC 3339 time with its offset (``2026-11-28T03:00:00Z``)."""
    if value is None:
        return None
    try:
        return parse_time(value)
    except (ValueError, OverflowError) as error:  # overflow: year 1 with a positive offset
        raise click.BadParameter(str(error), ctx, param) from None


def use_color() -> bool:
    """Colour only for a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def echo_table(table: Table) -> None:
    color = use_color()
    click.echo(tables.render(table, color=color), nl=False, color=color)


def _more(next_cursor: str | None, command: str) -> None:
    # on stderr, so that stdout stays the table alone
    if next_cursor is not None:
        click.echo(f"more: tsched {command} --cursor {next_cursor}", err=True)


# --- tasks ---------------------------------------------------------------------------------------


@click.command("list")
@click.option(
    "--state",
    type=click.Choice([*(state.value for state in TaskState), "all"]),
    help="Only tasks in this state [default: active and paused].",
)
@click.option("--name", help="Only tasks whose name contains this (any case).")
@click.option("--agent", type=click.UUID, metavar="ID", help="Only tasks this agent runs.")
@_page_flags("tasks")
@json_flag
@click.pass_obj
def list_command(
    session: Session,
    state: str | None,
    name: str | None,
    agent: UUID | None,
    limit: int | None,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List tasks, oldest first (deleted ones only with --state deleted or all)."""
    with reported_client_errors():
        page = session.client.list_tasks(
            state=state, name=name, agent=agent, limit=limit, cursor=cursor
        )
    if as_json:
        echo_json(unstructure(page))
        return
    echo_table(tables.task_table(page.tasks))
    _more(page.next_cursor, "list")


@click.command()
@click.argument("task_id")
@json_flag
@click.pass_obj
def show(session: Session, task_id: str, as_json: bool) -> None:
    """Show every field of TASK_ID (deleted tasks too, until purged)."""
    with reported_client_errors():
        task = session.client.get_task(task_id)
    _echo_task(task, as_json)


def _echo_task(task: Task, as_json: bool) -> None:
    if as_json:
        echo_json(unstructure(task))
    else:
        echo_table(tables.task_detail(task))


def _echo_state(task: Task, as_json: bool) -> None:
    if as_json:
        echo_json(unstructure(task))
    else:
        click.echo(f"task {task.id}: {task.state.value}")


@click.command()
@click.argument("task_id")
@task_option_flags(edit=True)
@json_flag
@click.pass_obj
def edit(
    session: Session,
    /,
    task_id: str,
    env: Mapping[str, str],
    clear_env: bool,
    as_json: bool,
    **flags: Any,
) -> None:
    """Change the command, frequency or options of TASK_ID; prints the task as it is now.

    Options not given keep their value. --env adds to (or changes) the task's variables;
    --clear-env removes them first. A new --frequency or --timezone counts from now: no slot
    that passed is run.
    """
    changes = task_options(**flags)
    if not changes and not env and not clear_env:
        raise click.UsageError("nothing to change: give at least one option")
    with reported_client_errors():
        if env or clear_env:
            current = {} if clear_env else session.client.get_task(task_id).env
            changes["env"] = current | dict(env)
        task = session.client.edit_task(task_id, **changes)
    _echo_task(task, as_json)


@click.command()
@click.argument("task_id")
@json_flag
@click.pass_obj
def pause(session: Session, task_id: str, as_json: bool) -> None:
    """Stop firing TASK_ID until it is resumed (its agents keep it)."""
    with reported_client_errors():
        task = session.client.pause_task(task_id)
    _echo_state(task, as_json)


@click.command()
@click.argument("task_id")
@json_flag
@click.pass_obj
def resume(session: Session, task_id: str, as_json: bool) -> None:
    """Fire TASK_ID again from its next slot (the slots passed while paused are not run)."""
    with reported_client_errors():
        task = session.client.resume_task(task_id)
    _echo_state(task, as_json)


@click.command()
@click.argument("task_id")
@json_flag
@click.pass_obj
def run(session: Session, task_id: str, as_json: bool) -> None:
    """Run TASK_ID now on every agent it targets (even when paused), marked manual."""
    with reported_client_errors():
        started = session.client.run_task(task_id)
    if as_json:
        echo_json(unstructure(started))
    else:
        click.echo(tables.run_started_text(started))


@click.command()
@click.argument("task_id")
@click.option(
    "--purge", is_flag=True, help="Also erase its history at once: it is then gone for good."
)
@json_flag
@click.pass_obj
def delete(session: Session, task_id: str, purge: bool, as_json: bool) -> None:
    """Delete TASK_ID: its agents stop it; its history stays readable until pruned."""
    with reported_client_errors():
        task = session.client.delete_task(task_id, purge=purge)
    if task is not None:
        _echo_state(task, as_json)
    elif as_json:
        # a purge answers 204 with no body; say what happened in one object all the same
        echo_json({"id": task_id, "purged": True})
    else:
        click.echo(f"task {task_id}: purged")


# --- history -------------------------------------------------------------------------------------


@click.command()
@click.argument("task_id")
@click.option(
    "--status",
    type=click.Choice([status.value for status in RunStatus]),
    help="Only runs with this status.",
)
@_page_flags("runs")
@json_flag
@click.pass_obj
def runs(
    session: Session,
    task_id: str,
    status: str | None,
    limit: int | None,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List the runs of TASK_ID, newest first: one row per fire time, over all its agents."""
    with reported_client_errors():
        page = session.client.runs(task_id, status=status, limit=limit, cursor=cursor)
    if as_json:
        echo_json(unstructure(page))
        return
    echo_table(tables.run_table(page.runs))
    _more(page.next_cursor, f"runs {task_id}")


@click.command()
@click.argument("task_id")
@click.option("--agent", type=click.UUID, metavar="ID", help="Only this agent's executions.")
@click.option(
    "--status",
    type=click.Choice([status.value for status in ExecutionStatus]),
    help="Only executions with this status.",
)
@click.option(
    "--since", callback=_time, metavar="TIME", help="Only slots at or after TIME (RFC 3339)."
)
@click.option("--until", callback=_time, metavar="TIME", help="Only slots before TIME (RFC 3339).")
@_page_flags("executions")
@json_flag
@click.pass_obj
def history(
    session: Session,
    task_id: str,
    agent: UUID | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    cursor: str | None,
    as_json: bool,
) -> None:
    """List the executions of TASK_ID (every attempt on every agent), newest first.

    An attempt marked '+' will be retried. 'tsched output' shows what a run printed.
    """
    with reported_client_errors():
        page = session.client.executions(
            task_id,
            agent=agent,
            status=status,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
    if as_json:
        echo_json(unstructure(page))
        return
    echo_table(tables.execution_table(page.executions))
    _more(page.next_cursor, f"history {task_id}")


# --- agents --------------------------------------------------------------------------------------


@click.command()
@click.argument("agent_id", required=False, type=click.UUID)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    callback=label_pairs,
    help="Only agents with this label (repeatable: all must match).",
)
@json_flag
@click.pass_obj
def agents(
    session: Session, agent_id: UUID | None, labels: Mapping[str, str], as_json: bool
) -> None:
    """List the agents, or show AGENT_ID with its labels and the tasks it runs."""
    selector = dict(labels)
    if agent_id is not None and selector:
        raise click.UsageError("--label selects in the listing; give it without AGENT_ID")
    with reported_client_errors():
        if agent_id is not None:
            detail = session.client.agent(agent_id)
        else:
            listed = session.client.agents(labels=selector)
    if agent_id is not None:
        if as_json:
            echo_json(unstructure(detail))
        else:
            echo_table(tables.agent_detail(detail))
    elif as_json:
        # the API's AgentList object
        echo_json({"agents": [unstructure(agent) for agent in listed]})
    else:
        echo_table(tables.agent_table(listed))


#: Added to the ``tsched`` group, in this order.
COMMANDS: tuple[click.Command, ...] = (
    list_command,
    show,
    runs,
    history,
    edit,
    pause,
    resume,
    run,
    delete,
    agents,
)
