"""Reporting many executions in one request: ``POST /api/v1/executions``.

An agent with several reports queued sends them together: one request and one commit on the
server instead of one each. The body is ``{"executions": [item, …]}``, each item the body of
``POST /api/v1/tasks/{task_id}/complete`` plus its ``task_id``. The answer (``200``, after the
commit) has one result per item, in order: acknowledged (stored now, or a ``duplicate`` of one
stored before) or refused with the error the single endpoint would have answered. A refused
item does not refuse the others: one bad report must not hold back the good ones.

Only the envelope can refuse the whole request (not a JSON object, no ``executions`` list, an
empty one or one over :data:`MAX_BATCH_EXECUTIONS`): :func:`batch_items` checks it, and
:func:`parse_batch_item` reads each item on its own so that its error names it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import attrs

from .errors import WireError
from .messages import ExecutionReport
from .models import Execution, ExecutionStatus, Trigger
from .wire import json_type, parse_time, structure, unstructure

#: The most executions one batch may carry.
MAX_BATCH_EXECUTIONS = 1000


@attrs.frozen(kw_only=True)
class BatchedReport(ExecutionReport):
    """One item of a batch: the report of one execution of task ``task_id``."""

    task_id: UUID

    @classmethod
    def of(cls, execution: Execution) -> BatchedReport:
        report = ExecutionReport.of(execution)
        return cls(task_id=execution.task_id, **attrs.asdict(report, recurse=False))


@attrs.frozen(kw_only=True)
class ItemError:
    """Why one item was refused: the ``error`` object of the single endpoint's 4xx answer."""

    code: str
    message: str
    field: str | None = None


@attrs.frozen(kw_only=True)
class BatchItemResult:
    """What became of one item: ``acknowledged`` (and whether it was a ``duplicate``), or
    refused with ``error``. Like a 4xx of the single endpoint, a refusal is final: sending the
    same item again is refused again."""

    acknowledged: bool
    duplicate: bool = False
    error: ItemError | None = None


def _results(results: Iterable[BatchItemResult]) -> tuple[BatchItemResult, ...]:
    return tuple(results)


@attrs.frozen(kw_only=True)
class BatchResult:
    """Answer of ``POST /api/v1/executions``: one result per item, in the request's order."""

    results: tuple[BatchItemResult, ...] = attrs.field(converter=_results)


def batch_items(data: object) -> list[Any]:
    """The items of a batch body, still raw; :class:`WireError` if the envelope is wrong."""
    if not isinstance(data, dict):
        raise WireError(f"the body must be a JSON object, got {json_type(data)}")
    unknown = sorted(set(data) - {"executions"})
    if unknown:
        raise WireError("is not a field of a batch of executions", field=unknown[0])
    items = data.get("executions")
    if not isinstance(items, list):
        raise WireError(f"must be a list, got {json_type(items)}", field="executions")
    if not 1 <= len(items) <= MAX_BATCH_EXECUTIONS:
        raise WireError(
            f"must hold 1 to {MAX_BATCH_EXECUTIONS} executions, got {len(items)}",
            field="executions",
        )
    return items


def parse_batch_item(item: object, index: int) -> BatchedReport:
    """Item ``index`` of a batch, or :class:`WireError` naming ``executions.<index>.<field>``."""
    fast = _plain_item(item)
    if fast is not None:
        return fast
    try:
        return structure(item, BatchedReport)
    except WireError as error:
        field = f"executions.{index}" + (f".{error.field}" if error.field else "")
        raise WireError(error.message, field=field) from None


_TIMES = ("scheduled_at", "started_at", "finished_at")
_COUNTS = ("stdout_dropped", "stderr_dropped", "attempt")


def _plain_item(item: object) -> BatchedReport | None:
    """The item, read without cattrs when it is plainly well formed; ``None`` for anything
    else, which :func:`structure` then reads (and refuses with its usual message).

    Reading a thousand reports a request, cattrs' generic path was most of the server's work;
    this one accepts exactly what it does (same types, unknown keys ignored, the class's own
    validators), only sooner. A test holds the two to the same answers.
    """
    if not isinstance(item, dict):
        return None
    try:
        task_id, server_id = item["task_id"], item["server_id"]
        if type(task_id) is not str or type(server_id) is not str:
            return None
        fields: dict[str, Any] = {"task_id": UUID(task_id), "server_id": UUID(server_id)}
        for name in ("stdout", "stderr"):
            if name in item:
                if type(item[name]) is not str:
                    return None
                fields[name] = item[name]
        for name in _TIMES:
            if item.get(name) is not None:
                fields[name] = parse_time(item[name])
        for name in _COUNTS:
            if name in item:
                if type(item[name]) is not int:
                    return None
                fields[name] = item[name]
        if "exit_code" in item:
            if item["exit_code"] is not None and type(item["exit_code"]) is not int:
                return None
            fields["exit_code"] = item["exit_code"]
        if "status" in item:
            fields["status"] = ExecutionStatus(item["status"])
        if "trigger" in item:
            fields["trigger"] = Trigger(item["trigger"])
        if "final" in item:
            if type(item["final"]) is not bool:
                return None
            fields["final"] = item["final"]
        return BatchedReport(**fields)
    except (KeyError, ValueError, TypeError):
        return None


def batch_body(executions: Sequence[Execution]) -> dict[str, Any]:
    """The JSON body that reports ``executions`` in one request."""
    return {"executions": [unstructure(BatchedReport.of(execution)) for execution in executions]}
