"""The deployment files name only what ``tsched`` accepts, and have the shape the docs promise.

Checked against the real CLI (``tsched``'s click commands, introspected), for the compose files
(``docker-compose*.yml``, whose own tests are in test_compose.py), everything under ``deploy/``
and the ``tsched`` lines of docs/deployment.md:

- every YAML file parses (``yaml.safe_load_all``);
- every ``tsched`` command line — a compose service's or a Kubernetes container's
  ``command``/``args`` (the image's entrypoint is ``tsched``), a systemd unit's ``ExecStart=``, a
  shell line of docs/deployment.md — is parsed by click exactly as ``tsched`` would parse it,
  *with the environment it is given*: each flag must exist on that subcommand, and each value,
  from a flag or a variable, must convert (a port is a number, a URL a URL, a label a label);
- **the rule for environment variables**: a variable is *ours* when it is named ``TSCHED_*`` or
  ``AVAILABLE_SERVERS`` (the original design's name). Each of ours set for a server or an agent —
  a compose service's ``environment``, a container's ``env``, a unit's ``Environment=`` and the
  example file of its ``EnvironmentFile=`` — must be the ``envvar`` of an option of that very
  subcommand (``TSCHED_SERVER`` on a server is an error). Commented-out lines of units and
  environment files count: they are there to be uncommented. Variables that are not ours
  (``POSTGRES_PASSWORD`` on the postgres container, ``POD_IP`` feeding ``$(POD_IP)``) are not read
  by ``tsched`` and are exempt. Besides, every name of ours *mentioned* anywhere in these files,
  comments and prose included, must be read by some ``tsched`` command, so a typo or a
  variable that was renamed is caught wherever it is written.

References to values that are only known where the file is used (``${POSTGRES_PASSWORD}``,
``$(POD_IP)``, the systemd specifiers ``%d`` and ``%S``) are replaced by ``x`` before parsing; a
Kubernetes value read from the Secret takes its value from ``secret.example.yaml``.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import yaml

from taskscheduler_client.cli import tsched

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
KUBERNETES = DEPLOY / "kubernetes"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
COMPOSE_FILES = sorted(ROOT.glob("docker-compose*.yml"))
YAML_FILES = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *COMPOSE_FILES])
#: The agent's Kubernetes container advertises its pod's IP: the downward API's name for it.
POD_IP = "status.podIP"
#: The agent's --kill-grace default, which stopping it must outlast (seconds).
KILL_GRACE = 10


# --- the CLI, introspected -----------------------------------------------------------------------


def is_ours(name: str) -> bool:
    """A variable ``tsched`` could read: the rule of this module's docstring."""
    return name.startswith("TSCHED_") or name == "AVAILABLE_SERVERS"


def envvars(command: click.Command) -> set[str]:
    """The environment variables the options of ``command`` read."""
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


def all_envvars() -> set[str]:
    """Every variable that some ``tsched`` command (or the group) reads."""
    names = envvars(tsched)
    for command in tsched.commands.values():
        names |= envvars(command)
    return names


_REFERENCE = re.compile(r"\$\{[^}]*\}|\$\([^)]*\)|\$[A-Za-z_]\w*|%[A-Za-z]")


def placeholders(value: str) -> str:
    """``value`` with what is only known where it is used (``${X}``, ``$(X)``, ``$X``, ``%d``)
    replaced by ``x``."""
    return _REFERENCE.sub("x", value)


@dataclass(frozen=True)
class Invocation:
    """One ``tsched`` command line of a deployment file and the environment it runs with.

    ``args`` follow ``tsched`` (group options, then the subcommand and its own); ``env`` maps
    each variable to its value, or to ``None`` when the value is not in the file (a field of the
    pod, a Secret of the site).
    """

    source: str
    where: str
    args: tuple[str, ...]
    env: Mapping[str, str | None] = field(default_factory=dict)

    @property
    def subcommand(self) -> str:
        return next((arg for arg in self.args if arg in tsched.commands), "")


@contextmanager
def environment(values: Mapping[str, str]) -> Iterator[None]:
    """``os.environ`` with none of our variables but ``values``, for the time of a parse."""
    saved = dict(os.environ)
    try:
        for name in [name for name in os.environ if is_ours(name)]:
            del os.environ[name]
        os.environ.update(values)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def problems(invocation: Invocation) -> list[str]:
    """What ``tsched`` would refuse in ``invocation``: unknown flags or subcommands, values that
    do not convert, and variables of ours that its subcommand does not read."""
    where = f"{invocation.source}: {invocation.where}"
    values = {
        name: placeholders(value)
        for name, value in invocation.env.items()
        if is_ours(name) and value is not None
    }
    with environment(values), click.Context(tsched, info_name="tsched") as parent:
        try:
            # the group's own options first; what is left starts with the subcommand
            rest = click.Command.parse_args(
                tsched, parent, [placeholders(a) for a in invocation.args]
            )
            if not rest or rest[0] not in tsched.commands:
                return [f"{where}: no tsched subcommand in {list(invocation.args)}"]
            command = tsched.commands[rest[0]]
            command.make_context(rest[0], rest[1:], parent=parent)
        except click.ClickException as error:
            return [f"{where}: tsched {' '.join(invocation.args)}: {error.format_message()}"]
    unknown = {name for name in invocation.env if is_ours(name)} - envvars(command)
    return [f"{where}: tsched {rest[0]} reads no {name}" for name in sorted(unknown)]


def mentioned_variables(text: str) -> set[str]:
    """Every name of ours written in ``text``."""
    return set(re.findall(r"\b(?:TSCHED_[A-Z0-9_]+|AVAILABLE_SERVERS)\b", text))


# --- compose files -------------------------------------------------------------------------------


def compose_services(path: Path) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = yaml.safe_load(path.read_text())["services"]
    return services


def runs_tsched(service: Mapping[str, Any]) -> bool:
    """A service built from this repository's Dockerfile, whose entrypoint is ``tsched``."""
    return service.get("build") == "."


def compose_environment(service: Mapping[str, Any]) -> dict[str, str | None]:
    """A service's ``environment``, in either of its forms (a mapping, or ``NAME=value`` items)."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = [item.partition("=") for item in raw]
        return {name: value if sep else None for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in raw.items()}


def compose_invocations(path: Path) -> list[Invocation]:
    found = []
    for name, service in compose_services(path).items():
        if runs_tsched(service):
            command = service["command"]
            assert isinstance(command, list), f"{path.name}: {name}: use the exec form (a list)"
            found.append(
                Invocation(
                    path.name, f"service {name}", tuple(command), compose_environment(service)
                )
            )
    return found


# --- systemd units and their environment files ---------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """A systemd unit file: ``directives[(section, key)]`` lists the values in order;
    ``commented`` holds the ``#Key=value`` lines, directives meant to be uncommented."""

    path: Path
    directives: dict[tuple[str, str], list[str]]
    commented: dict[tuple[str, str], list[str]]

    def get(self, section: str, key: str) -> list[str]:
        return self.directives.get((section, key), [])

    def one(self, section: str, key: str) -> str:
        values = self.get(section, key)
        assert len(values) == 1, f"{self.path.name}: [{section}] {key}= set {len(values)} times"
        return values[0]


_DIRECTIVE = re.compile(r"(?P<comment>[#;]\s*)?(?P<key>[A-Z][A-Za-z]+)=(?P<value>.*)")


def parse_unit(path: Path) -> Unit:
    """A small parser of systemd's format: sections, ``Key=value`` (repeatable), line
    continuations; comments kept apart when they are commented-out directives."""
    directives: dict[tuple[str, str], list[str]] = {}
    commented: dict[tuple[str, str], list[str]] = {}
    section = ""
    lines = iter(path.read_text().splitlines())
    for line in lines:
        line = line.strip()
        while line.endswith("\\") and not line.startswith(("#", ";")):
            line = line[:-1] + " " + next(lines, "").strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif match := _DIRECTIVE.fullmatch(line):
            target = commented if match["comment"] else directives
            target.setdefault((section, match["key"]), []).append(match["value"].strip())
        else:
            assert not line or line.startswith(("#", ";")), f"{path.name}: cannot parse {line!r}"
    return Unit(path, directives, commented)


def parse_environment_file(path: Path) -> dict[str, str]:
    """``NAME=value`` lines, and ``#NAME=value`` ones (examples to uncomment)."""
    variables = {}
    for line in path.read_text().splitlines():
        if match := re.fullmatch(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)", line.strip()):
            value = match[2].strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            variables[match[1]] = value
    return variables


def unit_environment(unit: Unit) -> dict[str, str | None]:
    """What a unit's ``Environment=`` lines (commented ones too) and its
    ``EnvironmentFile=``'s example (``deploy/systemd/`` + the same file name) set."""
    env: dict[str, str | None] = {}
    for environment_file in unit.get("Service", "EnvironmentFile"):
        example = unit.path.parent / Path(environment_file.lstrip("-")).name
        assert example.is_file(), f"{unit.path.name}: no example {example.name} beside it"
        env.update(parse_environment_file(example))
    lines = [
        *unit.get("Service", "Environment"),
        *unit.commented.get(("Service", "Environment"), []),
    ]
    for line in lines:
        for assignment in shlex.split(line):
            name, _, value = assignment.partition("=")
            env[name] = value
    return env


def unit_invocation(unit: Unit) -> Invocation:
    exec_start = unit.one("Service", "ExecStart").lstrip("-@:+!")
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "tsched", f"{unit.path.name}: ExecStart= does not run tsched"
    assert Path(argv[0]).is_absolute(), f"{unit.path.name}: ExecStart= needs an absolute path"
    source = (
        unit.path.relative_to(ROOT).as_posix() if unit.path.is_relative_to(ROOT) else unit.path.name
    )
    return Invocation(source, "ExecStart=", tuple(argv[1:]), unit_environment(unit))


UNITS = {path.stem: parse_unit(path) for path in sorted(SYSTEMD.glob("*.service"))}


# --- Kubernetes manifests ------------------------------------------------------------------------


def kubernetes_objects(*, optional: bool = True) -> list[dict[str, Any]]:
    paths = sorted(KUBERNETES.rglob("*.yaml"))
    objects = []
    for path in paths:
        if path.name == "kustomization.yaml" or (not optional and path.parent != KUBERNETES):
            continue
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                objects.append({**document, "__file__": path.relative_to(ROOT).as_posix()})
    return objects


OBJECTS = kubernetes_objects()


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in OBJECTS if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name} in deploy/kubernetes"
    return matches[0]


def example_secret() -> dict[str, str]:
    secret = find("Secret", "tsched")
    data: dict[str, str] = secret["stringData"]
    return data


def containers(obj: Mapping[str, Any], *, init: bool = False) -> list[dict[str, Any]]:
    spec = obj["spec"]["template"]["spec"]
    found: list[dict[str, Any]] = spec.get("initContainers" if init else "containers", [])
    return found


def container_runs_tsched(container: Mapping[str, Any]) -> bool:
    """The image's entrypoint is ``tsched``: a container runs it unless it sets a ``command``
    of its own (the init container's ``sh``), or names ``tsched`` there."""
    command = container.get("command")
    return str(container["image"]).split(":")[0].endswith("taskscheduler") and (
        command is None or Path(command[0]).name == "tsched"
    )


def container_environment(container: Mapping[str, Any]) -> dict[str, str | None]:
    """A container's ``env``: literal values, Secret keys from the example Secret, the rest
    (fields of the pod) unknown."""
    secret = example_secret()
    env: dict[str, str | None] = {}
    for item in container.get("env", []):
        source = item.get("valueFrom", {})
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in source and source["secretKeyRef"]["name"] == "tsched":
            env[item["name"]] = secret.get(source["secretKeyRef"]["key"])
        else:
            env[item["name"]] = None
    return env


def container_invocation(obj: Mapping[str, Any], container: Mapping[str, Any]) -> Invocation:
    command = container.get("command") or []
    args = [*command[1:], *container.get("args", [])]
    where = f"{obj['kind']} {obj['metadata']['name']}, container {container['name']}"
    return Invocation(obj["__file__"], where, tuple(args), container_environment(container))


def kubernetes_invocations() -> list[Invocation]:
    return [
        container_invocation(obj, container)
        for obj in OBJECTS
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet")
        for container in [*containers(obj), *containers(obj, init=True)]
        if container_runs_tsched(container)
    ]


# --- docs/deployment.md --------------------------------------------------------------------------

_CODE_BLOCK = re.compile(r"```(?:sh|console|bash)\n(?P<code>.*?)```", re.DOTALL)
_SHELL_END = {"&&", "||", "|", ";", "&", ">", ">>", "2>&1"}


def shell_lines(text: str) -> Iterator[str]:
    """The lines of the shell blocks of a Markdown text, continuations joined, prompts dropped."""
    for block in _CODE_BLOCK.finditer(text):
        line = ""
        for raw in block["code"].splitlines():
            line += raw.removeprefix("$ ")
            if line.endswith("\\"):
                line = line[:-1] + " "
                continue
            yield line
            line = ""


def document_invocations(path: Path) -> list[Invocation]:
    """Each ``[NAME=value …] tsched …`` command of a document's shell blocks (also after
    ``&&``, ``;`` or ``|``)."""
    source = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name
    found = []
    for line in shell_lines(path.read_text()):
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        segments: list[list[str]] = [[]]
        for word in words:
            if word in _SHELL_END:
                segments.append([])
            else:
                segments[-1].append(word)
        for segment in segments:
            env: dict[str, str | None] = {}
            while segment and re.fullmatch(r"[A-Za-z_]\w*=.*", segment[0]):
                name, _, value = segment.pop(0).partition("=")
                env[name] = value
            if segment and Path(segment[0]).name == "tsched":
                where = " ".join(line.split())
                found.append(Invocation(source, where, tuple(segment[1:]), env))
    return found


def all_invocations() -> list[Invocation]:
    return [
        *(invocation for path in COMPOSE_FILES for invocation in compose_invocations(path)),
        *(unit_invocation(unit) for unit in UNITS.values()),
        *kubernetes_invocations(),
        *(document_invocations(DEPLOYMENT_DOC) if DEPLOYMENT_DOC.exists() else []),
    ]


INVOCATIONS = all_invocations()


# --- every file: parses, and names only what tsched accepts --------------------------------------


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda path: path.relative_to(ROOT).as_posix())
def test_yaml_parses(path: Path) -> None:
    documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert documents
    assert all(isinstance(document, dict) for document in documents)


def test_there_is_a_command_line_everywhere_one_is_expected() -> None:
    """The checks below cannot pass by finding nothing to check."""
    found = {(invocation.source, invocation.subcommand) for invocation in INVOCATIONS}
    for source in (
        "docker-compose.yml",
        "docker-compose.postgres.yml",
        "deploy/systemd/tsched-server.service",
        "deploy/kubernetes/server.yaml",
        "docs/deployment.md",
    ):
        assert (source, "server") in found, source
    for source in (
        "docker-compose.yml",
        "docker-compose.postgres.yml",
        "deploy/systemd/tsched-agent.service",
        "deploy/kubernetes/agent.yaml",
        "docs/deployment.md",
    ):
        assert (source, "agent") in found, source


@pytest.mark.parametrize("invocation", INVOCATIONS, ids=lambda i: f"{i.source}: {i.where}")
def test_command_line_and_environment_are_accepted_by_tsched(invocation: Invocation) -> None:
    assert not problems(invocation)


@pytest.mark.parametrize(
    "path",
    [*COMPOSE_FILES, *sorted(p for p in DEPLOY.rglob("*") if p.is_file()), DEPLOYMENT_DOC],
    ids=lambda path: path.relative_to(ROOT).as_posix(),
)
def test_every_variable_mentioned_is_one_tsched_reads(path: Path) -> None:
    unknown = mentioned_variables(path.read_text()) - all_envvars()
    assert not unknown, f"{path.name} names variables no tsched command reads: {sorted(unknown)}"


def test_the_deployment_doc_names_every_file() -> None:
    """Each file by its path, or in backticks by its path inside its folder of deploy/ (the
    tables of docs/deployment.md list ``deploy/kubernetes/`` as ``optional/postgres.yaml``)."""
    text = DEPLOYMENT_DOC.read_text()
    for path in [*COMPOSE_FILES, *(p for p in DEPLOY.rglob("*") if p.is_file())]:
        relative = path.relative_to(ROOT)
        inside = (
            path.relative_to(DEPLOY / relative.parts[1])
            if path.is_relative_to(DEPLOY)
            else relative
        )
        named = relative.as_posix() in text or f"`{inside.as_posix()}`" in text
        assert named, f"docs/deployment.md does not mention {relative}"


# --- the check can fail --------------------------------------------------------------------------


def made_up(where: str, *args: str, **env: str | None) -> Invocation:
    return Invocation("made up", where, args, env)


@pytest.mark.parametrize(
    ("invocation", "expected"),
    [
        (made_up("made-up flag", "server", "--made-up-flag"), "--made-up-flag"),
        (made_up("server flag", "agent", "--database", "x.sqlite3"), "--database"),
        (made_up("bad value", "server", "--port", "eighty"), "eighty"),
        (made_up("bad url", "agent", "--server", "ftp://host"), "ftp://host"),
        (made_up("no subcommand", "--url", "http://host:8080"), "no tsched subcommand"),
        (made_up("made-up command", "serve"), "no tsched subcommand"),
        (made_up("agent variable", "server", TSCHED_SERVER="http://s"), "TSCHED_SERVER"),
        (made_up("made-up variable", "agent", TSCHED_MADE_UP=None), "TSCHED_MADE_UP"),
        (made_up("bad label", "agent", TSCHED_LABELS="role"), "role"),
        (made_up("server's variable", "agent", AVAILABLE_SERVERS="http://a"), "AVAILABLE"),
    ],
    ids=lambda value: value.where if isinstance(value, Invocation) else "",
)
def test_what_tsched_would_refuse_is_caught(invocation: Invocation, expected: str) -> None:
    found = problems(invocation)
    assert found
    assert expected in " ".join(found), found


def test_variables_that_are_not_ours_are_exempt() -> None:
    invocation = made_up("exempt", "agent", "--advertise-url", "http://$(POD_IP):8081", TZ="UTC")
    assert problems(invocation) == []


def test_a_unit_with_a_made_up_flag_or_variable_is_caught(tmp_path: Path) -> None:
    unit = tmp_path / "tsched-agent.service"
    (tmp_path / "tsched-agent.env").write_text("TSCHED_SERVER=http://s:8080\n#TSCHED_SERVR=x\n")
    unit.write_text(
        "[Service]\nEnvironmentFile=/etc/tsched/tsched-agent.env\n"
        "ExecStart=/usr/bin/tsched agent --port 8081 \\\n  --kill-grac 5\n"
    )
    found = problems(unit_invocation(parse_unit(unit)))
    assert found
    assert "--kill-grac" in found[0]
    unit.write_text(
        "[Service]\nEnvironmentFile=/etc/tsched/tsched-agent.env\nExecStart=/usr/bin/tsched agent\n"
    )
    assert problems(unit_invocation(parse_unit(unit))) == [
        "tsched-agent.service: ExecStart=: tsched agent reads no TSCHED_SERVR"
    ]


def test_a_documented_command_with_a_made_up_flag_is_caught(tmp_path: Path) -> None:
    document = tmp_path / "deployment.md"
    document.write_text(
        "```sh\nexport X=1\nTSCHED_DATABASE=postgresql://h/db tsched server \\\n"
        "    --lease-second 5 && echo done\n```\n\n```console\n$ cd /srv && tsched agnet\n```\n"
    )
    server, agent = document_invocations(document)
    assert server.env == {"TSCHED_DATABASE": "postgresql://h/db"}
    assert "--lease-second" in " ".join(problems(server))
    assert agent.args == ("agnet",)
    assert "no tsched subcommand" in " ".join(problems(agent))


def test_a_misspelt_variable_in_a_comment_is_caught() -> None:
    text = "# set TSCHED_JOIN_TOKEN (not TSCHED_JOINTOKEN) and AVAILABLE_SERVERS\n"
    assert mentioned_variables(text) - all_envvars() == {"TSCHED_JOINTOKEN"}


# --- systemd ---------------------------------------------------------------------------------


def option_value(args: tuple[str, ...], flag: str) -> str:
    """The value given to ``flag`` in ``args`` (``--flag value`` or ``--flag=value``)."""
    for index, arg in enumerate(args):
        if arg == flag:
            return args[index + 1]
        if arg.startswith(f"{flag}="):
            return arg.partition("=")[2]
    raise AssertionError(f"{flag} not given in {args}")


def seconds(text: str) -> float:
    """A systemd time span of the simple kinds used here (``20s``, ``1min``, ``30``)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|min|m)?", text)
    assert match, f"cannot read the time span {text!r}"
    return float(match[1]) * (60 if match[2] in ("min", "m") else 1)


@pytest.mark.parametrize("name", ["tsched-server", "tsched-agent"])
def test_unit_runs_tsched_as_a_dedicated_user_with_its_state_directory(name: str) -> None:
    unit = UNITS[name]
    invocation = unit_invocation(unit)
    assert invocation.subcommand == name.removeprefix("tsched-")
    assert unit.one("Service", "Restart") == "on-failure"
    assert unit.get("Service", "DynamicUser") == ["yes"] or unit.one("Service", "User") not in (
        "root",
        "0",
    )
    state = unit.one("Service", "StateDirectory")
    assert option_value(invocation.args, "--data-dir") == f"%S/{state}"
    assert unit.one("Service", "StateDirectoryMode") == "0700"
    assert unit.one("Install", "WantedBy") == "multi-user.target"
    assert "--host" in invocation.args, "a service on a host listens beyond loopback"
    # tokens come from a file of root's, never from the unit itself or its command line
    assert not {"TSCHED_ADMIN_TOKEN", "TSCHED_READ_TOKEN", "TSCHED_JOIN_TOKEN"} & {
        assignment.partition("=")[0]
        for line in unit.get("Service", "Environment")
        for assignment in shlex.split(line)
    }
    flags = {arg.partition("=")[0] for arg in invocation.args}
    assert not {"--admin-token", "--read-token", "--join-token"} & flags


def test_server_unit_reads_its_tokens_as_a_credential() -> None:
    unit = UNITS["tsched-server"]
    assert unit.get("Service", "DynamicUser") == ["yes"]
    credential, _, source = unit.one("Service", "LoadCredential").partition(":")
    assert source.startswith("/etc/")
    assert option_value(unit_invocation(unit).args, "--token-file") == f"%d/{credential}"


def test_agent_unit_joins_with_the_environment_file_and_stops_gracefully() -> None:
    unit = UNITS["tsched-agent"]
    env = unit_environment(unit)
    assert {"TSCHED_SERVER", "TSCHED_ADVERTISE_URL", "TSCHED_JOIN_TOKEN"} <= set(env)
    assert unit.one("Service", "User") == "tsched"
    sysusers = (SYSTEMD / "tsched.sysusers").read_text()
    assert re.search(r"^u tsched ", sysusers, re.MULTILINE)
    # SIGTERM to the agent alone, which gives its commands --kill-grace; SIGKILL after that
    assert unit.one("Service", "KillMode") == "mixed"
    assert seconds(unit.one("Service", "TimeoutStopSec")) > KILL_GRACE


def test_agent_unit_hardening_still_lets_commands_run_as_they_would_in_a_shell() -> None:
    """The options that would break ordinary commands of an unprivileged user are absent."""
    unit = UNITS["tsched-agent"]
    assert unit.one("Service", "ProtectSystem") in ("yes", "full")  # not strict: may write
    assert unit.one("Service", "NoNewPrivileges") == "yes"
    for breaking in (
        "DynamicUser",  # a user nobody can grant rights to
        "ProtectHome",
        "PrivateTmp",
        "PrivateUsers",
        "PrivateDevices",
        "PrivateNetwork",
        "SystemCallFilter",
        "RestrictAddressFamilies",
        "RestrictNamespaces",
        "MemoryDenyWriteExecute",
        "CapabilityBoundingSet",
        "ReadOnlyPaths",
        "InaccessiblePaths",
        "IPAddressDeny",
    ):
        assert not unit.get("Service", breaking), f"{breaking}= would break some commands"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not here")
@pytest.mark.parametrize("name", ["tsched-server", "tsched-agent"])
def test_systemd_accepts_the_unit(name: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` knows every directive; it checks that ExecStart='s program
    exists, so the copy it reads names the ``tsched`` installed here."""
    unit = UNITS[name]
    installed = shutil.which("tsched") or str(Path(sys.executable).parent / "tsched")
    text = unit.path.read_text().replace("/usr/local/bin/tsched", installed)
    copy = tmp_path / unit.path.name
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not result.stderr.strip(), result.stderr


# --- Kubernetes ------------------------------------------------------------------------------


def probe_path(container: Mapping[str, Any], probe: str) -> str:
    path: str = container[probe]["httpGet"]["path"]
    return path


def named_port(container: Mapping[str, Any], name: str) -> int:
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert name in ports, f"{container['name']} has no port named {name}"
    port: int = ports[name]
    return port


def tsched_container(obj: Mapping[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in containers(obj) if container_runs_tsched(c)]
    return container


def test_every_object_is_in_the_namespace_and_labelled() -> None:
    (namespace,) = [o for o in OBJECTS if o["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    for obj in OBJECTS:
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj["__file__"]
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == name, obj["metadata"]["name"]
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "taskscheduler", obj["metadata"]["name"]


def test_workloads_select_their_own_pods() -> None:
    for obj in OBJECTS:
        if obj["kind"] in ("Deployment", "DaemonSet", "StatefulSet"):
            selector = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert selector.items() <= labels.items(), obj["metadata"]["name"]


def test_servers_are_two_replicas_probed_and_scraped() -> None:
    deployment = find("Deployment", "tsched-server")
    assert deployment["spec"]["replicas"] >= 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    container = tsched_container(deployment)
    invocation = container_invocation(deployment, container)
    assert invocation.subcommand == "server"
    port = int(option_value(invocation.args, "--port"))
    assert option_value(invocation.args, "--host") == "0.0.0.0"
    assert probe_path(container, "livenessProbe") == "/healthz"
    assert probe_path(container, "readinessProbe") == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert named_port(container, container[probe]["httpGet"]["port"]) == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"
    env = {item["name"]: item for item in container["env"]}
    for name in ("TSCHED_DATABASE", "TSCHED_ADMIN_TOKEN", "TSCHED_JOIN_TOKEN"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "tsched", name
    assert str(invocation.env["TSCHED_DATABASE"]).startswith("postgresql://")
    # each replica its own name in the lease: the pod's
    assert env["TSCHED_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_service_reaches_the_servers() -> None:
    deployment = find("Deployment", "tsched-server")
    service = find("Service", "tsched-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    container = tsched_container(deployment)
    assert named_port(container, port["targetPort"]) == int(
        option_value(container_invocation(deployment, container).args, "--port")
    )
    budget = find("PodDisruptionBudget", "tsched-server")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_agents_are_a_daemonset_advertising_their_pod_ip_to_the_service() -> None:
    daemonset = find("DaemonSet", "tsched-agent")
    container = tsched_container(daemonset)
    invocation = container_invocation(daemonset, container)
    assert invocation.subcommand == "agent"
    port = int(option_value(invocation.args, "--port"))
    env = {item["name"]: item for item in container["env"]}
    # the advertised URL is the pod's IP (the downward API) and the port it listens on
    advertised = urlsplit(env["TSCHED_ADVERTISE_URL"]["value"])
    host, _, advertised_port = advertised.netloc.rpartition(":")
    variable = re.fullmatch(r"\$\((\w+)\)", host)  # urlsplit's hostname is lowercased
    assert variable, advertised
    assert env[variable[1]]["valueFrom"]["fieldRef"]["fieldPath"] == POD_IP
    assert advertised_port == str(port)
    # the servers' Service, by name, on its port
    service = find("Service", "tsched-server")
    server = urlsplit(env["TSCHED_SERVER"]["value"])
    assert server.hostname in (
        service["metadata"]["name"],
        f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc",
    )
    assert server.port == service["spec"]["ports"][0]["port"]
    assert env["TSCHED_JOIN_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "join-token"
    assert not {"TSCHED_ADMIN_TOKEN", "TSCHED_READ_TOKEN", "TSCHED_DATABASE"} & set(env)
    assert probe_path(container, "livenessProbe") == "/healthz"
    assert probe_path(container, "readinessProbe") == "/readyz"
    annotations = daemonset["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    # its state in a hostPath mounted at --data-dir
    volumes = {
        volume["name"]: volume for volume in daemonset["spec"]["template"]["spec"]["volumes"]
    }
    data_dir = option_value(invocation.args, "--data-dir")
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == data_dir]
    assert "hostPath" in volumes[mount["name"]]
    # outlasting --kill-grace on a stop
    assert daemonset["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > KILL_GRACE


def test_environment_references_name_variables_defined_before() -> None:
    """Kubernetes expands ``$(NAME)`` only for a variable defined earlier in the same list."""
    for obj in OBJECTS:
        if obj["kind"] not in ("Deployment", "DaemonSet", "StatefulSet"):
            continue
        for container in [*containers(obj), *containers(obj, init=True)]:
            defined: set[str] = set()
            for item in container.get("env", []):
                for name in re.findall(r"\$\((\w+)\)", str(item.get("value", ""))):
                    assert name in defined, f"{container['name']}: $({name}) before {name}"
                defined.add(item["name"])


def test_secret_references_are_keys_of_the_example_secret() -> None:
    keys = set(example_secret())
    for obj in OBJECTS:
        if obj["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for container in containers(obj):
            for item in container.get("env", []):
                reference = item.get("valueFrom", {}).get("secretKeyRef")
                if reference is not None:
                    assert reference["name"] == "tsched", item["name"]
                    assert reference["key"] in keys, item["name"]


def test_kustomization_lists_every_manifest_but_the_examples() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    expected = sorted(
        path.name
        for path in KUBERNETES.glob("*.yaml")
        if path.name != "kustomization.yaml" and ".example." not in path.name
    )
    assert sorted(kustomization["resources"]) == expected
    optional = [o for o in OBJECTS if "/optional/" in o["__file__"]]
    assert {o["kind"] for o in optional} == {"StatefulSet", "Service"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not here")
def test_kustomize_renders_the_manifests() -> None:
    """``kubectl kustomize`` (offline) builds what ``kubectl apply -k`` would apply."""
    result = subprocess.run(
        ["kubectl", "kustomize", str(KUBERNETES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = {(o["kind"], o["metadata"]["name"]) for o in yaml.safe_load_all(result.stdout)}
    expected = {
        (o["kind"], o["metadata"]["name"])
        for o in kubernetes_objects(optional=False)
        if o["kind"] != "Secret"
    }
    assert rendered == expected


# --- docker compose --------------------------------------------------------------------------


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


@pytest.mark.skipif(
    not docker_compose_works(), reason="docker compose (the plugin) is not installed here"
)
@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda path: path.name)
def test_docker_compose_accepts_the_file(path: Path) -> None:
    """``docker compose config`` validates a file against the Compose schema, offline."""
    secrets = {"TSCHED_ADMIN_TOKEN": "a", "TSCHED_JOIN_TOKEN": "j", "POSTGRES_PASSWORD": "p"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **secrets},
        check=False,
    )
    assert result.returncode == 0, result.stderr
