"""The code examples of README.md and docs/ are run against a real ``tsched up``.

A block runs when the line before its fence is ``<!-- docs-test: NAME -->``:

- ``sh`` blocks are run by bash; ``console`` blocks run each ``$ `` line in one bash session;
- ``python`` blocks are executed, in order, in one namespace per file.

The examples are written for a user's machine, so before running them the test rewrites only
what must differ here: the server's port (``localhost:8080``), the intervals of shell examples
(``every 30 seconds`` becomes ``every 1 seconds`` to keep the suite fast) and the sample task id,
which becomes the id that the file's own first ``create`` example answered with.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from processes import Tsched, agents, free_port, wait_healthy, wait_until

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: Where ``tsched`` was installed, next to the interpreter running the tests.
BIN = Path(sys.executable).parent
SAMPLE_TASK_ID = "322f0be6-d276-489f-89eb-7662c4517885"
_BLOCK = re.compile(
    r"<!-- docs-test: (?P<name>[\w-]+) -->\n```(?P<lang>\w+)\n(?P<code>.*?)```", re.DOTALL
)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_INTERVAL = re.compile(r"every \d+ (seconds|minutes|hours)")


def examples(document: Path) -> list[tuple[str, str, str]]:
    return [(m["name"], m["lang"], m["code"]) for m in _BLOCK.finditer(document.read_text())]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("docs")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = Tsched(["up", "--port", str(port), "--data-dir", str(data)], log=data / "up.log")
    try:
        wait_healthy(url, up)
        wait_until(
            lambda: len(agents(url)) == 2,
            timeout=20,
            what="two agents",
        )
        yield url
    finally:
        up.stop()


def localize(code: str, url: str, task_id: str | None, *, shell: bool) -> str:
    code = code.replace("http://localhost:8080", url).replace("http://127.0.0.1:8080", url)
    if shell:
        code = _INTERVAL.sub("every 1 seconds", code)
    if task_id is not None:
        code = code.replace(SAMPLE_TASK_ID, task_id)
    return code


def run_shell(code: str, url: str) -> str:
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "TSCHED_URL": url, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
        check=False,
    )
    assert result.returncode == 0, f"example failed:\n{code}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_examples_run(document: Path, server: str) -> None:
    namespace: dict[str, object] = {"__name__": "__docs__"}
    task_id: str | None = None
    for name, lang, code in examples(document):
        code = localize(code, server, task_id, shell=lang != "python")
        if lang == "python":
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"{document.name}:{name}", "exec"), namespace)
            output = printed.getvalue()
        elif lang == "sh":
            output = run_shell(code, server)
        elif lang == "console":
            commands = [line[2:] for line in code.splitlines() if line.startswith("$ ")]
            output = run_shell("\n".join(commands), server)
        else:
            pytest.fail(f"{document.name}: cannot run a {lang} block ({name})")
        if name == "create":
            status, _, body = output.partition("\n\n")
            assert " 201 " in status.splitlines()[0], output
            task_id = json.loads(body)["command_id"]
            latest = f"{server}/api/v1/tasks/{task_id}/latest_output"
            wait_until(
                lambda url=latest: httpx.get(url).json()["completion_time"],
                timeout=20,
                what="the example task's first run",
            )
        elif name == "latest-output":
            status, _, body = output.partition("\n\n")
            assert " 200 " in status.splitlines()[0], output
            outputs = json.loads(body)["outputs"]
            assert [entry["stdout"] for entry in outputs] == ["hello world\n"] * 2
        if task_id is None and (found := _UUID.search(output)):
            task_id = found.group()


def test_every_document_is_linked_from_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for document in DOCUMENTS[1:]:
        assert f"docs/{document.name}" in readme, f"README.md does not link {document.name}"
