"""The core stays pure: no I/O libraries, no clock, and a public API that says what it has."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import taskscheduler_core

CORE = Path(taskscheduler_core.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))

#: Libraries that do I/O or run an event loop: they belong in the adapters.
FORBIDDEN_IMPORTS = frozenset(
    {
        "anyio",
        "asyncio",
        "httpx",
        "hypercorn",
        "peewee",
        "playhouse",
        "socket",
        "starlette",
        "subprocess",
        "trio",
    }
)

#: Ways to read the clock; "now" is always passed in.
FORBIDDEN_CALLS = frozenset(
    {
        "time.time",
        "time.time_ns",
        "time.monotonic",
        "time.monotonic_ns",
        "time.perf_counter",
        "datetime.now",
        "datetime.utcnow",
        "datetime.today",
        "date.today",
    }
)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def forbidden_uses(source: str) -> list[str]:
    """Every forbidden import and clock read in ``source``, as ``line: what``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            # ``from time import time`` reads the clock just as well
            found += [
                f"{line}: {node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in FORBIDDEN_CALLS
                or f"{node.module.rsplit('.', 1)[-1]}.{alias.name}" in FORBIDDEN_CALLS
            ]
        else:
            modules = []
        found += [
            f"{line}: import {module}"
            for module in modules
            if module.split(".")[0] in FORBIDDEN_IMPORTS
        ]
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            # match on the tail, so that ``datetime.datetime.now`` is caught too
            if name is not None and any(
                name == call or name.endswith(f".{call}") for call in FORBIDDEN_CALLS
            ):
                found.append(f"{line}: {name}")
    return found


@pytest.mark.parametrize(
    "source",
    [
        "import trio",
        "import httpx.transports",
        "from subprocess import run",
        "from asyncio import sleep",
        "import socket as s",
        "import time\nx = time.time()",
        "import time\nclock = time.monotonic",
        "from time import monotonic",
        "from datetime import datetime\nx = datetime.now()",
        "import datetime\nx = datetime.datetime.utcnow()",
        "from datetime import date\nx = date.today()",
    ],
)
def test_the_scan_catches(source: str) -> None:
    assert forbidden_uses(source)


def test_the_scan_lets_pure_code_through() -> None:
    source = (
        "from datetime import UTC, datetime\nimport attrs\nx = datetime(2026, 1, 1, tzinfo=UTC)"
    )
    assert forbidden_uses(source) == []


def test_there_are_modules_to_scan() -> None:
    names = {path.stem for path in MODULES}
    assert {"__init__", "frequency", "scheduler", "wire"} <= names


@pytest.mark.parametrize("path", MODULES, ids=[path.name for path in MODULES])
def test_module_is_pure(path: Path) -> None:
    assert forbidden_uses(path.read_text(encoding="utf-8")) == []


def test_importing_the_core_loads_no_io_library() -> None:
    # A fresh interpreter: this test process has long imported trio and friends.
    code = "import json, sys, taskscheduler_core; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    loaded = set(json.loads(result.stdout))
    assert "taskscheduler_core" in loaded
    assert sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN_IMPORTS) == []
    # nor does it drag the adapters in
    assert not any(m.startswith(("taskscheduler_server", "taskscheduler_agent")) for m in loaded)
    assert not any(m.startswith("taskscheduler_client") for m in loaded)


def _isort_style(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_resolves() -> None:
    names = taskscheduler_core.__all__
    assert list(names) == sorted(names, key=_isort_style)
    assert len(set(names)) == len(names)
    missing = [name for name in names if not hasattr(taskscheduler_core, name)]
    assert missing == []


def test_all_lists_every_public_name() -> None:
    modules = {path.stem for path in MODULES}
    public = {
        name
        for name in vars(taskscheduler_core)
        if not name.startswith("_") and name not in modules and name != "annotations"
    }
    assert public <= set(taskscheduler_core.__all__)
