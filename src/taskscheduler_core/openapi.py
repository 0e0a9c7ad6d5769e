"""The OpenAPI 3.1 documents of the server's and the agent's REST APIs, as plain data.

Body schemas are derived from the attrs models and messages (field names, types, which fields
are required), so that a field added to a model shows up in the document; what the types alone
do not say (length limits, minimums, the flattened ``TaskCreated``) is added here. The server
serves :func:`server_openapi` and the agent :func:`agent_openapi` at ``GET /api/v1/openapi.json``;
a test keeps both in sync with the routes of the apps, another fuzzes the server from it.

Every server endpoint that reads the database may answer ``503 database_unavailable`` (with
``Retry-After``) while the database cannot be reached. ``/healthz`` (liveness), ``/readyz``
(readiness: the database answers) and ``/metrics`` (Prometheus text, not JSON) are described
here too, so that the documents list every route.

Security: every endpoint but ``/healthz``, ``/readyz``, the agent's ``/metrics`` and the
documents themselves takes a bearer token (``bearerAuth``). The OpenAPI 3.1 "role names" of a
security requirement say which kind of token an endpoint accepts: ``admin``, ``read`` (the
read-only token), ``agent`` (the credential an agent receives at registration), ``join`` (the
join token agents register with) and ``server`` (the credential the server presents to agents).
A server started without an admin token (loopback only) asks for none.
"""

from __future__ import annotations

import enum
import types
import typing
from datetime import datetime
from typing import Any
from uuid import UUID

import attrs

from .batch import MAX_BATCH_EXECUTIONS, BatchedReport, BatchItemResult, ItemError
from .capture import DEFAULT_MAX_OUTPUT_BYTES
from .cron import Cron
from .frequency import MAX_FREQUENCY_LENGTH, Frequency
from .messages import (
    MAX_TOKEN_LENGTH,
    MAX_URL_LENGTH,
    MIN_TOKEN_LENGTH,
    AgentIdentity,
    AgentList,
    CreateTask,
    ExecutionReport,
    ProposedCredentials,
    RegisterAgent,
    RunStarted,
    RunTaskNow,
    ScheduleTask,
)
from .models import (
    MAX_COMMAND_LENGTH,
    Agent,
    AgentDetail,
    AgentOutput,
    Execution,
    ExecutionStatus,
    LatestOutput,
    Task,
    TaskSpec,
    TaskState,
)
from .options import MAX_NAME_LENGTH, Targets
from .runs import AgentOutcome, RunStatus, RunSummary

#: The OpenAPI version of the documents.
OPENAPI_VERSION = "3.1.0"

#: The largest ``?limit=`` of a listing (the server's ``MAX_PAGE_SIZE``).
MAX_PAGE_SIZE = 1000

_INT64_MAX = 2**63 - 1
_SPACE = "[ \\t\\n\\r\\f\\v]"
#: Any letter case, singular or plural; the interval must also be at most 366 days.
_FREQUENCY_PATTERN = (
    f"^{_SPACE}*[Ee][Vv][Ee][Rr][Yy]{_SPACE}+0*[1-9][0-9]*{_SPACE}+"
    f"([Ss][Ee][Cc][Oo][Nn][Dd]|[Mm][Ii][Nn][Uu][Tt][Ee]|[Hh][Oo][Uu][Rr]|[Dd][Aa][Yy]"
    f"|[Ww][Ee][Ee][Kk])[Ss]?{_SPACE}*$"
)
#: Five fields of cron's characters, or an ``@`` alias; which values each field takes is for
#: the cron parser to say (422 naming ``frequency``).
_CRON_FIELD = "[0-9A-Za-z*,/#-]+"
_CRON_PATTERN = f"^{_SPACE}*(@[A-Za-z]+|{_CRON_FIELD}({_SPACE}+{_CRON_FIELD}){{4}}){_SPACE}*$"
_REF = "#/components/schemas/"
#: A token an agent proposes (RFC 6750's b64token, at least 192 bits' worth of characters).
_TOKEN_SCHEMA: dict[str, Any] = {
    "minLength": MIN_TOKEN_LENGTH,
    "maxLength": MAX_TOKEN_LENGTH,
    "pattern": "^[A-Za-z0-9._~+/-]+=*$",
}

#: What the types of the models do not say: limits and formats, by field name (a name means
#: the same in every model).
_FIELD_EXTRAS: dict[str, dict[str, Any]] = {
    "command": {"minLength": 1, "maxLength": MAX_COMMAND_LENGTH},
    "url": {"maxLength": MAX_URL_LENGTH, "pattern": "^https?://[^/?#]"},
    "agent_token": _TOKEN_SCHEMA,
    "server_token": _TOKEN_SCHEMA,
    "stdout_dropped": {"minimum": 0, "maximum": _INT64_MAX},
    "stderr_dropped": {"minimum": 0, "maximum": _INT64_MAX},
}

_FIELD_DOCS: dict[str, str] = {
    "frequency": "'every <integer> (seconds|minutes|hours|days|weeks)' (at most 366 days), or a "
    "cron expression: 5 fields or @hourly, @daily, @weekly, @monthly, @yearly, read in timezone",
    "anchor": "an interval fires at anchor + k × frequency (k ≥ 1); cron after the anchor",
    "timezone": "IANA time zone the cron expression is read in (default UTC)",
    "timeout": "seconds; the process group is killed and the execution is timed_out (null: none)",
    "overlap": "when a slot comes while the previous execution on that agent still runs",
    "starting_deadline": "seconds a slot may start late, else it is missed (null: 10 s)",
    "retries": "extra attempts of a failed, timed-out or error execution (0 to 10)",
    "retry_delay": "seconds before the first retry; doubles each attempt, at most 3600",
    "env": "extra environment variables for the command (names starting TSCHED_ refused)",
    "max_output_bytes": "per stream (null: the agent's cap)",
    "targets": "which agents run it: all (both null), a list of ids, or a label selector",
    "paused": "kept on its agents, fired by no slot until resumed",
    "deleted_at": "when it was deleted (its history stays until pruned)",
    "state": "active, paused or deleted",
    "attempt": "1 for the first try of a fire time, 2 for its first retry, …",
    "trigger": "schedule, or manual (POST /api/v1/tasks/{task_id}/run)",
    "final": "false while the agent will retry this fire time",
    "labels": "key=value pairs; task targets select agents on them",
    "credentials": "with the join token: the credentials the agent proposes for itself (made "
    "and saved before sending); the same ones again are accepted, others for an id that has a "
    "credential are 403",
    "agent_token": "what the agent presents from now on",
    "server_token": "what the server presents to the agent; differs from agent_token",
    "server_id": "the reporting agent's id (agents are 'servers' in the original design)",
    "stdout": f"the tail of the stream; the server keeps at most --max-output-bytes "
    f"(default {DEFAULT_MAX_OUTPUT_BYTES}) UTF-8 bytes of it",
    "stdout_dropped": "bytes dropped from the head of stdout",
    "stderr_dropped": "bytes dropped from the head of stderr",
}


def _type_schema(kind: Any) -> dict[str, Any]:
    """The JSON schema of one annotated type of the wire format."""
    if kind is str:
        return {"type": "string"}
    if kind is bool:
        return {"type": "boolean"}
    if kind is int:
        return {"type": "integer", "minimum": -(2**63), "maximum": _INT64_MAX}
    if kind is float:
        return {"type": "number"}
    if kind is UUID:
        return {"type": "string", "format": "uuid"}
    if kind is datetime:
        return {"type": "string", "format": "date-time"}
    if kind is Frequency:
        return {
            "type": "string",
            "maxLength": MAX_FREQUENCY_LENGTH,
            "pattern": _FREQUENCY_PATTERN,
            "examples": ["every 30 seconds", "every 1 hour"],
        }
    if kind is Cron:
        return {
            "type": "string",
            "maxLength": MAX_FREQUENCY_LENGTH,
            "pattern": _CRON_PATTERN,
            "examples": ["*/5 * * * *", "30 2 * * 1-5", "@daily"],
        }
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return {"type": "string", "enum": [member.value for member in kind]}
    if isinstance(kind, type) and attrs.has(kind):
        return {"$ref": _REF + kind.__name__}
    origin = typing.get_origin(kind)
    arguments = typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [_type_schema(argument) for argument in arguments]}
    if kind is type(None):
        return {"type": "null"}
    if origin in (tuple, list) and arguments:
        return {"type": "array", "items": _type_schema(arguments[0])}
    if origin is dict and arguments == (str, str):
        return {"type": "object", "additionalProperties": {"type": "string"}}
    raise TypeError(f"no JSON schema for {kind!r}")


def model_schema(
    model: type[Any], *, all_required: bool = False, none_required: bool = False
) -> dict[str, Any]:
    """The JSON schema of an attrs ``model`` as the wire format writes and reads it.

    Fields without a default are required; ``all_required`` makes every field required (for
    answers, which always carry every field), ``none_required`` none (for a partial update).
    """
    fields = attrs.fields(attrs.resolve_types(model))
    properties: dict[str, Any] = {}
    required: list[str] = []
    for field in fields:
        schema = _type_schema(field.type) | _FIELD_EXTRAS.get(field.name, {})
        if field.name in _FIELD_DOCS:
            schema["description"] = _FIELD_DOCS[field.name]
        properties[field.name] = schema
        if all_required or (field.default is attrs.NOTHING and not none_required):
            required.append(field.name)
    schema = {"type": "object", "properties": properties, "required": required}
    if model.__doc__:
        schema["description"] = model.__doc__.strip().splitlines()[0]
    return schema


def _object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "required": list(properties),
    }
    if description:
        schema["description"] = description
    return schema


def _error_schema() -> dict[str, Any]:
    return _object(
        {
            "error": _object(
                {
                    "code": {"type": "string", "description": "stable, e.g. validation_error"},
                    "message": {"type": "string"},
                    "field": {
                        "type": ["string", "null"],
                        "description": "the dotted path of the field at fault, if any",
                    },
                }
            )
        },
        "every refusal, with a 4xx status; 503 database_unavailable while the server's "
        "database cannot be reached (a 500 is a bug)",
    )


_ERRORS = {
    "400": "not JSON, empty, or the client went away mid-body (invalid_json, client_disconnected)",
    "401": "no or a wrong bearer token (unauthorized)",
    "403": "a valid token that may not do this (forbidden)",
    "404": "no such task / agent / endpoint",
    "405": "the method is not allowed on this path (method_not_allowed)",
    "409": "the task is deleted (task_deleted); its history stays readable",
    "413": "the body is larger than --max-body-bytes (body_too_large)",
    "422": "JSON, but not a valid body, or a bad query parameter (invalid_body, invalid_string, "
    "validation_error: field names the body field or the parameter)",
    "500": "a bug: internal_error, never a traceback",
    "503": "the database cannot be reached now (database_unavailable): retry after Retry-After "
    "seconds",
}

#: ``Retry-After`` of a 503, in seconds.
_RETRY_AFTER = {
    "Retry-After": {"required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"}}
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(
    summary: str,
    ok: tuple[str, dict[str, Any]],
    *,
    roles: tuple[str, ...] | None,
    body: dict[str, Any] | None = None,
    path_parameter: str | None = None,
    query: tuple[dict[str, Any], ...] = (),
    errors: tuple[str, ...] = (),
    no_content: str | None = None,
) -> dict[str, Any]:
    """One operation: ``ok`` is its success status and schema; ``no_content`` describes a
    ``204`` it may answer instead."""
    status, schema = ok
    responses: dict[str, Any] = {status: _json(schema, "success")}
    if no_content is not None:
        responses["204"] = {"description": no_content}
    codes = set(errors) | {"405", "500"}
    if roles is not None:
        codes |= {"401", "403"}
    if body is not None:
        codes |= {"400", "413", "422"}
    if query:
        codes |= {"422"}
    for code in sorted(codes):
        responses[code] = _json({"$ref": _REF + "Error"}, _ERRORS[code])
    if "401" in responses:
        responses["401"]["headers"] = {
            "WWW-Authenticate": {"required": True, "schema": {"type": "string"}}
        }
    operation: dict[str, Any] = {"summary": summary, "responses": responses}
    if roles is None:
        operation["security"] = []
    else:
        operation["security"] = [{"bearerAuth": [role]} for role in roles]
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body}},
        }
    parameters = list(query)
    if path_parameter is not None:
        parameters.insert(
            0,
            {
                "name": path_parameter,
                "in": "path",
                "required": True,
                "schema": {"type": "string", "format": "uuid"},
            },
        )
    if parameters:
        operation["parameters"] = parameters
    return operation


def _parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional query parameter."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def _limit(default: int) -> dict[str, Any]:
    return _parameter(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE, "default": default},
        "the most items on the page",
    )


_CURSOR = _parameter(
    "cursor", {"type": "string"}, "next_cursor of the previous page (absent: the first page)"
)
_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": "string", "format": "date-time"}


def _page(name: str, item: str) -> dict[str, Any]:
    """A page of a listing: its items and the cursor of the next page (``null``: the last)."""
    return _object(
        {
            name: {"type": "array", "items": {"$ref": _REF + item}},
            "next_cursor": {"type": ["string", "null"]},
        }
    )


def _base(title: str, description: str) -> dict[str, Any]:
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": "1", "description": description},
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <token>; the roles of an "
                    "operation's security say which tokens it takes (docs/security.md)",
                }
            },
            "schemas": {"Error": _error_schema()},
        },
    }


def _registered() -> dict[str, Any]:
    schema = _object({"agent_id": {"type": "string", "format": "uuid"}, "url": {"type": "string"}})
    schema["properties"]["credentials"] = _object(
        {
            "agent_token": {"type": "string", "description": "the agent presents it from now on"},
            "server_token": {
                "type": "string",
                "description": "the server presents it to the agent",
            },
        },
        "issued when the server has a join token and the agent proposed none: the agent "
        "keeps them (mode 0600); sent in this answer only",
    )
    schema["properties"]["credentials_accepted"] = {
        "type": "boolean",
        "description": "present when the body proposed credentials: whether the server holds "
        "them now (false only on a server without a join token, which takes none)",
    }
    return schema


_OK = {"type": "object", "properties": {"status": {"const": "ok"}}, "required": ["status"]}

#: The Prometheus text format (``GET /metrics``).
_PROMETHEUS_TEXT = {
    "description": "success: the metrics in the Prometheus text format (docs/observability.md)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


def _metrics(roles: tuple[str, ...] | None) -> dict[str, Any]:
    operation = _operation("Prometheus metrics", ("200", {"type": "string"}), roles=roles)
    operation["responses"]["200"] = _PROMETHEUS_TEXT
    return operation


def _server_readyz() -> dict[str, Any]:
    lease = _object(
        {
            "replica": {"type": ["string", "null"], "description": "this replica (null: no lease)"},
            "held": {"type": "boolean", "description": "this replica holds the lease"},
            "holder": {
                "type": ["string", "null"],
                "description": "the replica last seen holding it (null: nobody, or no lease)",
            },
        },
        "the lease of the work done once, as this replica sees it",
    )
    ready = _object(
        {"status": {"const": "ready"}, "database": {"const": "ok"}, "lease": lease},
    )
    unready = _object(
        {
            "status": {"const": "unready"},
            "database": {"const": "unavailable"},
            "reason": {"type": "string"},
            "lease": lease,
        }
    )
    operation = _operation(
        "The server can serve: its database answers (and the lease state)",
        ("200", ready),
        roles=None,
    )
    operation["responses"]["503"] = _json(unready, "the database does not answer") | {
        "headers": _RETRY_AFTER
    }
    return operation


def _agent_readyz() -> dict[str, Any]:
    ready = _object(
        {
            "status": {"const": "ready"},
            "state": {"const": "ok"},
            "reports_queued": {"type": "integer", "minimum": 0},
        }
    )
    unready = _object(
        {
            "status": {"const": "unready"},
            "state": {"const": "unavailable"},
            "reason": {"type": "string"},
        }
    )
    operation = _operation(
        "The agent can serve: its state file can be read", ("200", ready), roles=None
    )
    operation["responses"]["503"] = _json(unready, "the state file cannot be read")
    return operation


def _database_errors(paths: dict[str, Any], *, exempt: tuple[str, ...]) -> None:
    """Add the 503 of an unreachable database to every operation of ``paths`` but those of
    ``exempt`` (which never touch the database, or say it their own way)."""
    for path, item in paths.items():
        if path in exempt:
            continue
        for operation in item.values():
            operation["responses"]["503"] = _json({"$ref": _REF + "Error"}, _ERRORS["503"]) | {
                "headers": _RETRY_AFTER
            }


_DOCUMENT = {"type": "object", "description": "an OpenAPI 3.1 document"}


def _task_schema() -> dict[str, Any]:
    schema = model_schema(Task, all_required=True)
    schema["properties"]["state"] = _type_schema(TaskState) | {"description": _FIELD_DOCS["state"]}
    schema["required"].append("state")
    return schema


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """A request body that refuses unknown fields (a typo must not be silently ignored)."""
    return schema | {"additionalProperties": False}


def _batched_report() -> dict[str, Any]:
    schema = model_schema(BatchedReport)
    schema["properties"]["task_id"]["description"] = "the task that ran (in the path of /complete)"
    return schema


def _batch_body() -> dict[str, Any]:
    """Body of ``POST /api/v1/executions``; only ``executions`` is a field of it."""
    executions = {
        "type": "array",
        "items": {"$ref": _REF + "BatchedReport"},
        "minItems": 1,
        "maxItems": MAX_BATCH_EXECUTIONS,
        "description": "each the body of POST /api/v1/tasks/{task_id}/complete plus its task_id",
    }
    return _closed(_object({"executions": executions}))


def _batch_result() -> dict[str, Any]:
    results = {
        "type": "array",
        "items": {"$ref": _REF + "BatchItemResult"},
        "description": "one per report, in the request's order: acknowledged (duplicate: "
        "stored before) or refused with the error POST .../complete would have answered",
    }
    return _object({"results": results}, "sent once every acknowledged report is committed")


def server_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the server's REST API (v1)."""
    document = _base(
        "taskscheduler server",
        "Create periodic tasks, manage their lifecycle, read their runs, executions and latest "
        "output; agents register, heartbeat and report executions here.",
    )
    names = ("Task", "Agent", "AgentDetail", "LatestOutput", "RunStarted", "CreateTask")
    ref = {name: {"$ref": _REF + name} for name in names}
    created = {
        "allOf": [
            ref["Task"],
            _object({"command_id": {"type": "string", "format": "uuid"}}),
        ],
        "description": "the task, with its id also as command_id (the original design's name)",
    }
    edit = _closed(model_schema(CreateTask, none_required=True))
    edit["description"] = "Body of PATCH /api/v1/tasks/{task_id}: the fields to change"
    document["components"]["schemas"] |= {
        "CreateTask": _closed(model_schema(CreateTask)),
        "EditTask": edit,
        "Targets": model_schema(Targets),
        "Task": _task_schema(),
        "TaskList": _page("tasks", "Task"),
        "Execution": model_schema(Execution, all_required=True),
        "ExecutionList": _page("executions", "Execution"),
        "ExecutionReport": model_schema(ExecutionReport),
        "RegisterAgent": model_schema(RegisterAgent),
        "ProposedCredentials": model_schema(ProposedCredentials, all_required=True),
        "Agent": model_schema(Agent, all_required=True),
        "AgentDetail": model_schema(AgentDetail, all_required=True),
        "AgentList": model_schema(AgentList, all_required=True),
        "AgentOutput": model_schema(AgentOutput) | {"required": ["agent_id"]},
        "LatestOutput": model_schema(LatestOutput, all_required=True),
        "AgentOutcome": model_schema(AgentOutcome, all_required=True),
        "RunSummary": model_schema(RunSummary, all_required=True),
        "RunList": _page("runs", "RunSummary"),
        "RunStarted": model_schema(RunStarted, all_required=True),
        "BatchedReport": _batched_report(),
        "ItemError": model_schema(ItemError, all_required=True),
        "BatchItemResult": model_schema(BatchItemResult, all_required=True)
        | {"description": "what became of one report: acknowledged, or refused with error"},
    }
    agent_id = {"type": "string", "format": "uuid"}
    task = "/api/v1/tasks/{task_id}"
    write, read = ("admin",), ("admin", "read")
    create = _operation(
        "Create a periodic task; it is sent to every agent its targets pick",
        ("201", created),
        roles=write,
        body=ref["CreateTask"],
    )

    def change(summary: str) -> dict[str, Any]:
        return _operation(
            summary,
            ("200", ref["Task"]),
            roles=write,
            path_parameter="task_id",
            errors=("404", "409"),
        )

    document["paths"] = {
        "/api/v1/tasks/create": {"post": create},
        "/api/v1/tasks": {
            "post": create,
            "get": _operation(
                "List tasks, oldest first, a page at a time",
                ("200", {"$ref": _REF + "TaskList"}),
                roles=read,
                query=(
                    _parameter(
                        "state",
                        {"type": "string", "enum": [*(s.value for s in TaskState), "all"]},
                        "only tasks in this state (absent: active and paused)",
                    ),
                    _parameter(
                        "name",
                        {"type": "string", "minLength": 1, "maxLength": MAX_NAME_LENGTH},
                        "only tasks whose name holds this text, in any letter case",
                    ),
                    _parameter("agent", _UUID, "only tasks assigned to this agent"),
                    _limit(100),
                    _CURSOR,
                ),
            ),
        },
        task: {
            "get": _operation(
                "A task (a deleted one too, until it is purged or pruned)",
                ("200", ref["Task"]),
                roles=read,
                path_parameter="task_id",
                errors=("404",),
            ),
            "patch": _operation(
                "Change a task's command, frequency or options; its agents get the new spec",
                ("200", ref["Task"]),
                roles=write,
                body={"$ref": _REF + "EditTask"},
                path_parameter="task_id",
                errors=("404", "409"),
            ),
            "delete": _operation(
                "Delete a task: its agents drop it, its history stays readable (repeatable)",
                ("200", ref["Task"]),
                roles=write,
                path_parameter="task_id",
                query=(
                    _parameter(
                        "purge",
                        {"type": "string", "enum": ["true", "false"]},
                        "true: delete the task and its whole history now (answers 204)",
                    ),
                ),
                errors=("404",),
                no_content="purged: the task and its history are gone",
            ),
        },
        f"{task}/pause": {"post": change("Pause a task: no slot fires until it is resumed")},
        f"{task}/resume": {"post": change("Resume a task from its next slot (no burst)")},
        f"{task}/run": {
            "post": _operation(
                "Run a task now on every target (executions marked manual)",
                ("202", ref["RunStarted"]),
                roles=write,
                path_parameter="task_id",
                errors=("404", "409"),
            )
        },
        f"{task}/runs": {
            "get": _operation(
                "The runs of a task, newest first, with their aggregated status",
                ("200", {"$ref": _REF + "RunList"}),
                roles=read,
                path_parameter="task_id",
                query=(
                    _parameter(
                        "status",
                        _type_schema(RunStatus),
                        "only runs with this aggregated status",
                    ),
                    _limit(50),
                    _CURSOR,
                ),
                errors=("404",),
            )
        },
        f"{task}/executions": {
            "get": _operation(
                "The executions of a task, newest first",
                ("200", {"$ref": _REF + "ExecutionList"}),
                roles=read,
                path_parameter="task_id",
                query=(
                    _parameter("agent", _UUID, "only this agent's executions"),
                    _parameter("status", _type_schema(ExecutionStatus), "only executions with it"),
                    _parameter("since", _TIME, "only fire times at or after this time"),
                    _parameter("until", _TIME, "only fire times before this time"),
                    _limit(100),
                    _CURSOR,
                ),
                errors=("404",),
            )
        },
        f"{task}/latest_output": {
            "get": _operation(
                "What every agent printed in the newest complete run of a task",
                ("200", ref["LatestOutput"]),
                roles=read,
                path_parameter="task_id",
                errors=("404",),
            )
        },
        f"{task}/complete": {
            "post": _operation(
                "An agent reports one execution (idempotent)",
                (
                    "200",
                    _object({"acknowledged": {"const": True}, "duplicate": {"type": "boolean"}}),
                ),
                roles=("agent", "admin"),
                body={"$ref": _REF + "ExecutionReport"},
                path_parameter="task_id",
                errors=("404",),
            )
        },
        "/api/v1/executions": {
            "post": _operation(
                "An agent reports many executions at once: one commit, one result per report",
                ("200", _batch_result()),
                roles=("agent", "admin"),
                body=_batch_body(),
            )
        },
        "/api/v1/agents/register": {
            "post": _operation(
                "An agent says where it listens and its labels; the server pushes it its tasks",
                ("200", _registered()),
                roles=("join", "agent", "admin"),
                body={"$ref": _REF + "RegisterAgent"},
            )
        },
        "/api/v1/agents/{agent_id}/heartbeat": {
            "post": _operation(
                "An agent says it is alive; 404 asks it to register again",
                (
                    "200",
                    _object({"agent_id": agent_id, "status": {"const": "alive"}}),
                ),
                roles=("agent", "admin"),
                body={"type": "object", "description": "any JSON object ({} will do)"},
                path_parameter="agent_id",
                errors=("404",),
            )
        },
        "/api/v1/agents": {
            "get": _operation(
                "The agents the server knows, alive or lost",
                ("200", {"$ref": _REF + "AgentList"}),
                roles=read,
                query=(
                    _parameter(
                        "label",
                        {"type": "array", "items": {"type": "string", "pattern": "="}},
                        "key=value; repeatable: only agents with every label given",
                    )
                    | {"style": "form", "explode": True},
                ),
            )
        },
        "/api/v1/agents/{agent_id}": {
            "get": _operation(
                "An agent, with its labels, status, last contact and tasks",
                ("200", ref["AgentDetail"]),
                roles=read,
                path_parameter="agent_id",
                errors=("404",),
            )
        },
        "/healthz": {
            "get": _operation(
                "The server process answers (liveness; the database is not asked)",
                ("200", _OK),
                roles=None,
            )
        },
        "/readyz": {"get": _server_readyz()},
        "/metrics": {"get": _metrics(read)},
        "/api/v1/openapi.json": {
            "get": _operation("This document", ("200", _DOCUMENT), roles=None)
        },
    }
    _database_errors(document["paths"], exempt=("/healthz", "/readyz", "/api/v1/openapi.json"))
    return document


def agent_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of an agent's REST API (v1), called by the server."""
    document = _base(
        "taskscheduler agent",
        "The server schedules and removes tasks on an agent and compares what it holds.",
    )
    document["components"]["schemas"] |= {
        "ScheduleTask": model_schema(ScheduleTask),
        "TaskSpec": model_schema(TaskSpec, all_required=True),
        "AgentIdentity": model_schema(AgentIdentity, all_required=True),
        "RunTaskNow": model_schema(RunTaskNow),
    }
    task_id = {"type": "string", "format": "uuid"}
    document["paths"] = {
        "/api/v1/tasks/schedule": {
            "post": _operation(
                "Schedule a task, or replace it if changed (idempotent)",
                ("200", _object({"task_id": task_id, "changed": {"type": "boolean"}})),
                roles=("server",),
                body={"$ref": _REF + "ScheduleTask"},
            )
        },
        "/api/v1/tasks": {
            "get": _operation(
                "The task specs scheduled on this agent",
                (
                    "200",
                    _object({"tasks": {"type": "array", "items": {"$ref": _REF + "TaskSpec"}}}),
                ),
                roles=("server",),
            )
        },
        "/api/v1/tasks/{task_id}": {
            "delete": _operation(
                "Stop scheduling a task (idempotent; a running execution finishes)",
                ("200", _object({"task_id": task_id, "removed": {"type": "boolean"}})),
                roles=("server",),
                path_parameter="task_id",
                errors=("422",),
            )
        },
        "/api/v1/tasks/{task_id}/run": {
            "post": _operation(
                "Run a scheduled task now for this time (idempotent for the same time)",
                ("202", {"type": "object", "description": "{}"}),
                roles=("server",),
                body={"$ref": _REF + "RunTaskNow"},
                path_parameter="task_id",
                errors=("404",),
            )
        },
        "/api/v1/agent": {
            "get": _operation(
                "Who this agent is, and its labels",
                ("200", {"$ref": _REF + "AgentIdentity"}),
                roles=None,
            )
        },
        "/healthz": {"get": _operation("The agent is up", ("200", _OK), roles=None)},
        "/readyz": {"get": _agent_readyz()},
        "/metrics": {"get": _metrics(None)},
        "/api/v1/openapi.json": {
            "get": _operation("This document", ("200", _DOCUMENT), roles=None)
        },
    }
    return document
