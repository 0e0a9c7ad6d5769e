"""The agent's credentials: what it presents to the server, and what the server presents to it.

The server issues both when the agent registers with the join token (docs/security.md). They are
kept in ``data_dir/credentials.json``, mode 0600, and used from then on: the agent's own token for
registrations, heartbeats and reports, the server's to accept the scheduling calls of the server
alone.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from taskscheduler_core import bearer_token, is_loopback, same_token, unauthorized

from .errors import AgentConfigError, IdentityError

#: The file, inside the data directory, that holds the credentials.
CREDENTIALS_FILE = "credentials.json"


def check_exposure(host: str, *, join_token: str | None, insecure: bool) -> None:
    """Refuse to serve on a non-loopback ``host`` without a join token, unless ``insecure``."""
    if join_token is None and not insecure and not is_loopback(host):
        raise AgentConfigError(
            f"refusing to listen on {host} without --join-token: anyone who can reach the agent "
            "could run commands on it; set --join-token (or TSCHED_JOIN_TOKEN) to the server's, "
            "or pass --insecure",
            field="host",
            value=host,
        )


class AgentKeys:
    """The credentials of one agent, loaded from and saved to its data directory."""

    def __init__(self, data_dir: Path, *, join_token: str | None = None) -> None:
        self.path = data_dir / CREDENTIALS_FILE
        self.join_token = join_token
        self.agent_token: str | None = None
        self.server_token: str | None = None

    def load(self) -> None:
        """Read the saved credentials, if any (blocking: call it from a thread)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as error:
            raise IdentityError(f"cannot read {self.path}: {error}", path=self.path) from None
        try:
            data = json.loads(text)
            agent_token, server_token = data["agent_token"], data["server_token"]
            if not isinstance(agent_token, str) or not isinstance(server_token, str):
                raise TypeError("the tokens must be strings")
        except (ValueError, KeyError, TypeError) as error:
            raise IdentityError(
                f"{self.path} does not hold credentials ({error}); delete it together with "
                "agent_id to join as a new agent",
                path=self.path,
            ) from None
        self.agent_token, self.server_token = agent_token, server_token

    def save(self, agent_token: str, server_token: str) -> None:
        """Keep newly issued credentials, mode 0600 (blocking: call it from a thread)."""
        content = json.dumps({"agent_token": agent_token, "server_token": server_token})
        # mkstemp creates the file 0600; renamed over so a crash never leaves a torn file.
        fd, temporary = tempfile.mkstemp(dir=self.path.parent, prefix=".credentials.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                file.write(content + "\n")
                file.flush()
                os.fsync(file.fileno())
            os.chmod(temporary, 0o600)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.agent_token, self.server_token = agent_token, server_token

    @property
    def server_only(self) -> bool:
        """Whether the scheduling endpoints accept the server alone: with a join token, or
        once the agent holds credentials."""
        return self.join_token is not None or self.server_token is not None

    def registration_token(self, *, use_join_token: bool) -> str | None:
        """The token to register with: the agent's own, or the join token."""
        if self.agent_token is not None and not use_join_token:
            return self.agent_token
        return self.join_token

    def check_server(self, headers: Mapping[str, str]) -> None:
        """Refuse (401) a request to a scheduling endpoint that is not from the server."""
        if not self.server_only:
            return
        if not same_token(bearer_token(headers.get("authorization")), self.server_token):
            raise unauthorized("this endpoint accepts only the server's credential")
