"""The JSON wire format: one cattrs converter shared by the server, the agent and the client.

- times are RFC 3339 strings in UTC with microseconds and a ``Z`` (``2026-11-28T03:16:31.123456Z``);
  any RFC 3339 offset is accepted on input, naive times are refused;
- ids are UUID strings, frequencies their text (``every 30 seconds``, ``0 * * * *``), enums their
  value;
- strings, integers and booleans are strict: ``5`` is not a command and ``"5"`` is not an exit
  code (cattrs would otherwise convert them silently);
- ``AgentOutput`` omits ``stdout`` / ``stderr`` when empty, as the original design says;
- ``TaskCreated`` is flattened: ``{"command_id": ..., "id": ..., "command": ..., ...}``.

:func:`structure` turns any failure into a :class:`WireError` naming the field.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from .cron import Cron, parse_cron
from .errors import FrequencyError, WireError
from .firetimes import Recurrence, parse_recurrence
from .frequency import Frequency, parse_frequency
from .messages import ProposedCredentials, TaskCreated
from .models import AgentOutput, Task

T = TypeVar("T")


def format_time(moment: datetime) -> str:
    """RFC 3339 in UTC with microseconds: the one way times are written on the wire."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} cannot be sent; use UTC")
    # isoformat, not strftime: strftime's %Y drops the zero padding of years before 1000 on
    # glibc ("999-01-01T..."), which is not RFC 3339 and does not parse back.
    utc = moment.astimezone(UTC).replace(tzinfo=None)
    return utc.isoformat(timespec="microseconds") + "Z"


def parse_time(value: object) -> datetime:
    """Parse an RFC 3339 time with a ``Z`` or an offset; the result is in UTC."""
    if not isinstance(value, str):
        raise ValueError(f"expected an RFC 3339 time string, got {type(value).__name__}")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"invalid RFC 3339 time {value[:64]!r}") from None
    if moment.tzinfo is None:
        raise ValueError(f"time {value[:64]!r} has no UTC offset; add 'Z'")
    return moment.astimezone(UTC)


def _strict(kind: type[T]) -> Any:
    def structure(value: object, _: type) -> T:
        # bool is an int in Python, never on our wire
        if type(value) is not kind:
            expected = {str: "a string", int: "an integer", bool: "true or false"}[kind]
            raise ValueError(f"expected {expected}, got {json_type(value)}")
        return value

    return structure


def _structure_float(value: object, _: type) -> float:
    # JSON has one number type: 30 and 30.0 are both a number of seconds; true is not
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {json_type(value)}")
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return float(value)


def json_type(value: object) -> str:
    """The kind of a JSON value as messages name it: ``"an integer"``, ``"an array"``, …"""
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    names |= {list: "an array", dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _structure_uuid(value: object, _: type) -> UUID:
    if not isinstance(value, str):
        raise ValueError(f"expected a UUID string, got {json_type(value)}")
    try:
        return UUID(value)
    except ValueError:
        raise ValueError(f"invalid UUID {value[:64]!r}") from None


def _structure_frequency(value: object, _: type) -> Frequency:
    if not isinstance(value, str):
        raise FrequencyError(
            f"frequency must be a string like 'every 30 seconds', got {json_type(value)}",
            text=value,
        )
    return parse_frequency(value)


def _recurrence_text(value: object) -> str:
    if not isinstance(value, str):
        raise FrequencyError(
            "frequency must be a string like 'every 30 seconds' or '0 * * * *', "
            f"got {json_type(value)}",
            text=value,
        )
    return value


def _structure_recurrence(value: object, _: object) -> Recurrence:
    return parse_recurrence(_recurrence_text(value))


def _structure_cron(value: object, _: type) -> Cron:
    return parse_cron(_recurrence_text(value))


def make_converter() -> cattrs.Converter:
    """A converter that reads and writes every taskscheduler type as JSON-ready values."""
    converter = cattrs.Converter(omit_if_default=False)
    for kind in (str, int, bool):
        converter.register_structure_hook(kind, _strict(kind))
    converter.register_structure_hook(float, _structure_float)
    converter.register_unstructure_hook(datetime, format_time)
    converter.register_structure_hook(datetime, lambda value, _: parse_time(value))
    converter.register_unstructure_hook(UUID, str)
    converter.register_structure_hook(UUID, _structure_uuid)
    converter.register_unstructure_hook(Frequency, str)
    converter.register_structure_hook(Frequency, _structure_frequency)
    converter.register_unstructure_hook(Cron, str)
    converter.register_structure_hook(Cron, _structure_cron)
    # A hook for the union itself: cattrs would otherwise try to tell the two apart by shape.
    converter.register_structure_hook(Recurrence, _structure_recurrence)

    plain_output = cattrs.gen.make_dict_unstructure_fn(AgentOutput, converter)

    def unstructure_output(output: AgentOutput) -> dict[str, Any]:
        data = plain_output(output)
        return {key: value for key, value in data.items() if value != ""}

    converter.register_unstructure_hook(AgentOutput, unstructure_output)

    # a task's lifecycle state is derived (paused, deleted_at); readers get it spelled out
    plain_task = cattrs.gen.make_dict_unstructure_fn(Task, converter)

    def unstructure_task(task: Task) -> dict[str, Any]:
        return plain_task(task) | {"state": task.state.value}

    converter.register_unstructure_hook(Task, unstructure_task)

    def unstructure_created(created: TaskCreated) -> dict[str, Any]:
        task: dict[str, Any] = converter.unstructure(created.task)
        return {"command_id": str(created.command_id)} | task

    def structure_created(value: Any, _: type) -> TaskCreated:
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {json_type(value)}")
        return TaskCreated(
            command_id=_structure_uuid(value.get("command_id"), UUID),
            task=converter.structure(value, Task),
        )

    converter.register_unstructure_hook(TaskCreated, unstructure_created)
    converter.register_structure_hook(TaskCreated, structure_created)

    # Not an object: said so, rather than cattrs' "string indices must be integers".
    plain_credentials = cattrs.gen.make_dict_structure_fn(ProposedCredentials, converter)

    def structure_credentials(value: Any, kind: type) -> ProposedCredentials:
        if not isinstance(value, dict):
            raise ValueError(f"expected an object, got {json_type(value)}")
        return plain_credentials(value, kind)

    converter.register_structure_hook(ProposedCredentials, structure_credentials)
    return converter


#: The converter everything uses.
converter = make_converter()


def unstructure(value: object) -> Any:
    """``value`` as JSON-ready Python data (dicts, lists, strings, numbers)."""
    return converter.unstructure(value)


def structure(data: object, kind: type[T]) -> T:
    """Build a ``kind`` from JSON data, or raise :class:`WireError` naming the field at fault."""
    if not isinstance(data, dict) and hasattr(kind, "__attrs_attrs__"):
        raise WireError(f"the body must be a JSON object, got {json_type(data)}")
    try:
        return converter.structure(data, kind)
    except WireError:
        raise
    except (ClassValidationError, IterableValidationError, ForbiddenExtraKeysError) as error:
        message, path = _first_failure(error, [])
        raise WireError(message, field=".".join(path) or None) from None
    except (ValueError, TypeError) as error:
        raise WireError(str(error)) from None


def _first_failure(error: BaseException, path: list[str]) -> tuple[str, list[str]]:
    """Walk cattrs' exception groups down to the first leaf, collecting the field path."""
    if isinstance(error, ClassValidationError | IterableValidationError):
        with_notes, without_notes = error.group_exceptions()
        for inner, note in with_notes:
            step = getattr(note, "name", None)
            if step is None:
                step = str(getattr(note, "index", "?"))
            return _first_failure(inner, [*path, str(step)])
        for inner in without_notes:
            return _first_failure(inner, path)
    if isinstance(error, WireError):
        return error.message, [*path, error.field] if error.field else path
    if isinstance(error, KeyError):
        return "is required", path
    return str(error), path
