"""The pure pieces of authentication: headers, comparison, digests, token files, loopback."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskscheduler_core import (
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


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER a.b-c_d", "a.b-c_d"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


@given(st.text(), st.text())
def test_same_token_is_equality_and_never_matches_unset(given_token: str, expected: str) -> None:
    assert same_token(given_token, expected) == (given_token == expected)
    assert not same_token(None, expected)
    assert not same_token(given_token, None)


def test_a_lone_surrogate_is_just_a_wrong_token() -> None:
    assert not same_token("\ud800", "secret")
    assert len(token_digest("\ud800")) == 64


def test_token_digest_is_sha256_hex() -> None:
    assert token_digest("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_token_file() -> None:
    text = "# the tokens\n\nadmin = a1\n  read=r1  \njoin = j = 1\n"
    assert parse_token_file(text) == TokenFile(admin="a1", read="r1", join="j = 1")
    assert parse_token_file("") == TokenFile()


def test_tokens_are_not_in_the_repr() -> None:
    assert "a1" not in repr(parse_token_file("admin = a1"))


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("admin: a1", 1, "expected"),
        ("# ok\nroot = a1", 2, "expected"),
        ("admin =", 1, "empty"),
        ("admin = a\nadmin = b", 2, "twice"),
    ],
)
def test_a_bad_token_file_names_the_line(text: str, line: int, message: str) -> None:
    with pytest.raises(TokenFileError) as raised:
        parse_token_file(text)
    assert raised.value.line == line
    assert message in str(raised.value)
    assert "a1" not in str(raised.value)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_refusals() -> None:
    assert unauthorized().status == 401
    assert unauthorized().code == "unauthorized"
    assert forbidden("no").body() == {
        "error": {"code": "forbidden", "message": "no", "field": "authorization"}
    }
