"""Task lifecycle rules: creating, editing, pausing, resuming and deleting a task.

The server stores what these functions return; they decide what changes and what does not:

- an edit is a JSON merge of the changed fields over the task's current options, validated as a
  whole like a create body, so an edit can never leave a task half changed;
- changing the frequency or the time zone re-anchors the task at the edit, so no slot before
  the edit is fired (agents also never fire a slot at or before a spec change);
- pausing keeps the task on its agents, resuming fires from the next slot after the resume.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from .errors import WireError
from .messages import CreateTask
from .models import Task
from .wire import structure, unstructure

#: The fields ``PATCH /api/v1/tasks/{id}`` may change: those of a create body.
EDITABLE_FIELDS = tuple(field.name for field in attrs.fields(CreateTask))


def parse_create(data: object) -> CreateTask:
    """A create body from JSON data; unknown fields are refused (a typo must not be ignored)."""
    if isinstance(data, dict):
        _check_editable(data)
    return structure(data, CreateTask)


def new_task(body: CreateTask, *, task_id: UUID, now: datetime) -> Task:
    """The task a create body describes, anchored at ``now``."""
    return Task(
        id=task_id,
        anchor=now,
        created_at=now,
        updated_at=now,
        **_create_fields(body),
    )


def task_body(task: Task) -> CreateTask:
    """The create body that would make ``task`` (its editable fields)."""
    return CreateTask(**{name: getattr(task, name) for name in EDITABLE_FIELDS})


def edit_task(task: Task, changes: Mapping[str, object], *, now: datetime) -> Task:
    """``task`` with ``changes`` (JSON values of editable fields) applied, validated as a whole.

    Raises :class:`WireError` naming the field for an unknown field or an invalid value.
    """
    _check_editable(changes)
    merged = unstructure(task_body(task)) | dict(changes)
    body = structure(merged, CreateTask)
    reanchor = body.frequency != task.frequency or body.timezone != task.timezone
    return attrs.evolve(
        task,
        anchor=now if reanchor else task.anchor,
        updated_at=now,
        **_create_fields(body),
    )


def pause_task(task: Task, *, now: datetime) -> Task:
    return task if task.paused else attrs.evolve(task, paused=True, updated_at=now)


def resume_task(task: Task, *, now: datetime) -> Task:
    return attrs.evolve(task, paused=False, updated_at=now) if task.paused else task


def delete_task(task: Task, *, now: datetime) -> Task:
    return (
        task if task.deleted_at is not None else attrs.evolve(task, deleted_at=now, updated_at=now)
    )


def _check_editable(data: Mapping[str, object]) -> None:
    for name in data:
        if name not in EDITABLE_FIELDS:
            raise WireError(
                f"is not a task field (known: {', '.join(EDITABLE_FIELDS)})", field=str(name)
            )


def _create_fields(body: CreateTask) -> dict[str, Any]:
    return body.policy_fields() | {
        "command": body.command,
        "frequency": body.frequency,
        "name": body.name,
        "targets": body.targets,
    }
