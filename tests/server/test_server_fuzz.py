"""Schemathesis fuzzes a real ``tsched server`` process from its own OpenAPI document.

Every operation of ``GET /api/v1/openapi.json`` gets a bounded number of generated requests
(valid and invalid bodies, path parameters, unexpected methods); each answer must not be a 5xx,
and its status, content type, headers and body must be what the document says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode, checks

from processes import ServerService, free_port

#: The checks of "every answer is what the document says", and "no 5xx".
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]


ADMIN_TOKEN = "fuzz-admin-token"


@pytest.fixture(params=["open", "admin-token"])
def fuzzed_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real server, open (as ``tsched up`` runs it) or requiring the admin token; the URL and
    the ``Authorization`` header to send (empty when open)."""
    logs = tmp_path / "logs"
    logs.mkdir()
    flags = ["--admin-token", ADMIN_TOKEN] if request.param == "admin-token" else []
    server = ServerService(
        "server", port=free_port(), data_dir=tmp_path / "data", logs=logs, flags=flags
    )
    server.start()
    try:
        yield server.url, f"Bearer {ADMIN_TOKEN}" if flags else ""
    finally:
        server.stop()
        assert "Traceback" not in server.output(), server.output()


def _refused_by_http(case: schemathesis.Case, response: Any) -> bool:
    """A request with a malformed framing header (a ``Content-Length`` that is not a number,
    which negative cases may send) is refused by h11 with an empty 400 before any route sees
    it: a protocol error, not an answer of the API, so the document does not describe it."""
    sent = {name.lower() for name in case.headers or {}}
    return response.status_code == 400 and not response.content and "content-length" in sent


#: Generated requests per operation and generation mode (valid / invalid data), per server.
#: (10 × 19 operations × 2 modes × 2 servers ≈ 700 cases, ~25 s: the suite must stay near 5 min)
EXAMPLES = 10


def test_the_server_answers_every_generated_request_as_documented(
    fuzzed_server: tuple[str, str],
) -> None:
    url, authorization = fuzzed_server
    headers = {"Authorization": authorization} if authorization else None
    schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 7  # all but the document itself
    totals: Counter[str] = Counter()

    for operation in operations:
        # An operation without a body or parameter has nothing to make invalid.
        takes_input = operation.method.upper() == "POST" or "{" in operation.path
        modes = list(GenerationMode) if takes_input else [GenerationMode.POSITIVE]
        for mode in modes:

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def fuzz(case: schemathesis.Case) -> None:
                totals["cases"] += 1
                response = case.call(base_url=url, headers=headers)
                if _refused_by_http(case, response):
                    totals["refused by the HTTP layer"] += 1
                    return
                case.validate_response(response, checks=CHECKS, headers=headers)
                totals[f"{response.status_code // 100}xx"] += 1
                totals[str(response.status_code)] += 1

            fuzz()
    # The totals are part of the report of issue 4; -s shows them.
    print(f"schemathesis: {dict(totals)}")
    assert totals["cases"] >= len(operations) * 10
    assert totals["5xx"] == 0
