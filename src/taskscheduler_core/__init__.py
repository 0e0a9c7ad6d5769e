"""taskscheduler's pure core: frequencies, models, fire times, scheduling policy, wire format.

Nothing here does I/O or reads a clock: "now" is always passed in. The server, the agent and the
client are thin adapters around these pieces; other tools can embed them the same way.
"""

from __future__ import annotations

from .api_errors import (
    ApiError,
    BodyReader,
    client_disconnected,
    decode_body,
    decode_json_object,
    http_error,
)
from .auth import (
    AUTHENTICATE_HEADERS,
    TokenFile,
    TokenFileError,
    bearer_token,
    forbidden,
    is_loopback,
    parse_token_file,
    same_token,
    token_digest,
    unauthorized,
)
from .backoff import Backoff
from .capture import DEFAULT_MAX_OUTPUT_BYTES, OutputCapture, keep_tail
from .errors import FrequencyError, TaskSchedulerError, WireError
from .firetimes import next_slot_after, require_utc, slot, slot_index_after
from .frequency import MAX_INTERVAL, Frequency, Unit, parse_frequency
from .messages import (
    AgentIdentity,
    CreateTask,
    ExecutionReport,
    RegisterAgent,
    ScheduleTask,
    TaskCreated,
)
from .models import (
    MAX_COMMAND_LENGTH,
    Agent,
    AgentOutput,
    AgentStatus,
    Execution,
    ExecutionKey,
    ExecutionStatus,
    LatestOutput,
    Task,
    TaskSpec,
)
from .openapi import agent_openapi, server_openapi
from .runs import DEFAULT_REPORT_GRACE, Run, group_runs, latest_complete_run, latest_output
from .scheduler import (
    DEFAULT_MAX_MISSED,
    DEFAULT_STARTING_DEADLINE,
    Action,
    Scheduler,
    SkipExecution,
    StartExecution,
)
from .wire import converter, format_time, make_converter, parse_time, structure, unstructure

__version__ = "0.1.0"

__all__ = [
    "AUTHENTICATE_HEADERS",
    "DEFAULT_MAX_MISSED",
    "DEFAULT_MAX_OUTPUT_BYTES",
    "DEFAULT_REPORT_GRACE",
    "DEFAULT_STARTING_DEADLINE",
    "MAX_COMMAND_LENGTH",
    "MAX_INTERVAL",
    "Action",
    "Agent",
    "AgentIdentity",
    "AgentOutput",
    "AgentStatus",
    "ApiError",
    "Backoff",
    "BodyReader",
    "CreateTask",
    "Execution",
    "ExecutionKey",
    "ExecutionReport",
    "ExecutionStatus",
    "Frequency",
    "FrequencyError",
    "LatestOutput",
    "OutputCapture",
    "RegisterAgent",
    "Run",
    "ScheduleTask",
    "Scheduler",
    "SkipExecution",
    "StartExecution",
    "Task",
    "TaskCreated",
    "TaskSchedulerError",
    "TaskSpec",
    "TokenFile",
    "TokenFileError",
    "Unit",
    "WireError",
    "__version__",
    "agent_openapi",
    "bearer_token",
    "client_disconnected",
    "converter",
    "decode_body",
    "decode_json_object",
    "forbidden",
    "format_time",
    "group_runs",
    "http_error",
    "is_loopback",
    "keep_tail",
    "latest_complete_run",
    "latest_output",
    "make_converter",
    "next_slot_after",
    "parse_frequency",
    "parse_time",
    "parse_token_file",
    "require_utc",
    "same_token",
    "server_openapi",
    "slot",
    "slot_index_after",
    "structure",
    "token_digest",
    "unauthorized",
    "unstructure",
]
