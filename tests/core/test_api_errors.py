"""How the REST APIs refuse a request: the body limit, body decoding and the router's refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies import json_values
from taskscheduler_core import (
    ApiError,
    BodyReader,
    CreateTask,
    TaskSchedulerError,
    client_disconnected,
    decode_body,
    decode_json_object,
    http_error,
)


def refusal(raw: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        decode_json_object(raw)
    return caught.value


def test_an_api_error_is_answered_as_a_json_error_body() -> None:
    error = ApiError(422, "validation_error", "is required", field="command")
    assert isinstance(error, TaskSchedulerError)
    assert str(error) == "is required"
    assert error.body() == {
        "error": {"code": "validation_error", "message": "is required", "field": "command"}
    }


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b" \n\t",
        b"command=echo",
        b'{"command": ',
        b'{"command": "\xff\xfe"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"n": ' + b"9" * 5000 + b"}",
    ],
    ids=["empty", "blank", "form", "truncated", "bad UTF-8", "deep", "huge integer"],
)
def test_what_is_not_json_is_400_invalid_json(raw: bytes) -> None:
    error = refusal(raw)
    assert (error.status, error.code, error.field) == (400, "invalid_json", None)


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        (b"[]", "an array"),
        (b'"echo hi"', "a string"),
        (b"42", "an integer"),
        (b"1.5", "a number"),
        (b"true", "a boolean"),
        (b"null", "null"),
    ],
)
def test_json_that_is_not_an_object_is_422_invalid_body(raw: bytes, kind: str) -> None:
    error = refusal(raw)
    assert (error.status, error.code, error.field) == (422, "invalid_body", None)
    assert error.message == f"the body must be a JSON object, got {kind}"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b'{"command": "echo \\ud800"}', "command"),
        (b'{"\\udfff": 1}', None),
        (b'{"a": [1, {"b": "\\udc80x"}]}', "a.1.b"),
        (b'{"a": {"\\ud800": 1}}', "a"),
    ],
)
def test_a_lone_surrogate_is_422_invalid_string_at_its_path(raw: bytes, field: str | None) -> None:
    error = refusal(raw)
    assert (error.status, error.code, error.field) == (422, "invalid_string", field)


@given(st.dictionaries(st.text(max_size=10), json_values(), max_size=5))
def test_a_json_object_decodes_to_itself(data: dict[str, Any]) -> None:
    assert decode_json_object(json.dumps(data).encode()) == data


@given(st.binary(max_size=200) | json_values().map(lambda value: json.dumps(value).encode()))
def test_any_bytes_decode_or_are_refused_with_a_4xx(raw: bytes) -> None:
    try:
        decode_json_object(raw)
    except ApiError as error:
        status = error.status
    else:
        status = 200
    assert status in (200, 400, 422)


def test_decode_body_builds_the_wire_type_or_names_the_field() -> None:
    body = decode_body(b'{"command": "echo hi", "frequency": "every 2 minutes"}', CreateTask)
    assert (body.command, str(body.frequency)) == ("echo hi", "every 2 minutes")

    with pytest.raises(ApiError) as caught:
        decode_body(b'{"command": "echo hi", "frequency": "every 0 seconds"}', CreateTask)
    error = caught.value
    assert (error.status, error.code, error.field) == (422, "validation_error", "frequency")

    with pytest.raises(ApiError) as caught:
        decode_body(b"[]", CreateTask)
    assert caught.value.code == "invalid_body"


def test_the_body_reader_keeps_a_body_up_to_the_limit() -> None:
    reader = BodyReader(10, content_length="10")
    for chunk in (b'{"a":', b"", b' "x"}'):
        reader.feed(chunk)
    assert reader.decode(dict) == {"a": "x"}


@pytest.mark.parametrize("content_length", ["11", "99999999999999999999999"])
def test_the_body_reader_refuses_a_declared_length_over_the_limit(content_length: str) -> None:
    with pytest.raises(ApiError) as caught:
        BodyReader(10, content_length=content_length)
    assert (caught.value.status, caught.value.code) == (413, "body_too_large")


@pytest.mark.parametrize("content_length", [None, "", "5", "abc", "\u00b2", "-1"])
def test_the_body_reader_counts_what_arrives_whatever_the_header_says(
    content_length: str | None,
) -> None:
    reader = BodyReader(10, content_length=content_length)
    reader.feed(b"x" * 10)
    with pytest.raises(ApiError) as caught:
        reader.feed(b"x")
    assert (caught.value.status, caught.value.code) == (413, "body_too_large")
    assert "10 bytes" in caught.value.message


def test_a_client_that_went_away_is_400() -> None:
    error = client_disconnected()
    assert (error.status, error.code) == (400, "client_disconnected")


def test_the_routers_refusals() -> None:
    missing = http_error(404, method="GET", path="/api/v1/nothing")
    assert (missing.status, missing.code) == (404, "not_found")
    assert missing.message == "no such endpoint: /api/v1/nothing"

    wrong = http_error(405, method="GET", path="/api/v1/tasks/create", allowed="POST")
    assert (wrong.status, wrong.code) == (405, "method_not_allowed")
    assert wrong.message == "GET is not allowed on /api/v1/tasks/create (allowed: POST)"

    large = http_error(413, method="POST", path="/", detail="Request Entity Too Large")
    assert (large.code, large.message) == ("body_too_large", "Request Entity Too Large")

    other = http_error(418, method="GET", path="/")
    assert (other.status, other.code, other.message) == (418, "http_418", "HTTP 418")
