"""The agent's credentials: what it presents to the server, and what the server presents to it.

An agent with a join token makes both itself before its first registration, saves them, and
proposes them to the server with the join token (docs/security.md); a server that does not read
proposals (an older release) issues its own instead, which the agent saves. They are kept in
``data_dir/credentials.json``, mode 0600, with whether a server took them (``accepted``), and
used from then on: the agent's own token for registrations, heartbeats and reports, the
server's to accept the scheduling calls of the server alone.

Saved before they are sent, a proposal survives whatever happens to the registration's answer
(a dropped connection, a 503, the agent killed): the agent proposes the same ones until a server
says it holds them, and a server that already does recognises them.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from collections.abc import Mapping
from pathlib import Path

from taskscheduler_core import (
    ProposedCredentials,
    WireError,
    bearer_token,
    is_loopback,
    same_token,
    unauthorized,
)

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
    """The credentials of one agent, loaded from and saved to its data directory.

    ``agent_token`` and ``server_token`` are those a server took (issued, or accepted when
    proposed); ``proposal`` those proposed and not yet known to be taken. The methods that
    write the file block: call them from a thread.
    """

    def __init__(self, data_dir: Path, *, join_token: str | None = None) -> None:
        self.path = data_dir / CREDENTIALS_FILE
        self.join_token = join_token
        self.agent_token: str | None = None
        self.server_token: str | None = None
        self.proposal: ProposedCredentials | None = None

    def load(self) -> None:
        """Read the saved credentials, if any (blocking: call it from a thread).

        A file without ``accepted`` was written by an agent of an older release, which saved
        only credentials a server had issued: accepted.
        """
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as error:
            raise IdentityError(f"cannot read {self.path}: {error}", path=self.path) from None
        proposal = None
        try:
            data = json.loads(text)
            agent_token, server_token = data["agent_token"], data["server_token"]
            accepted = data.get("accepted", True)
            if not isinstance(agent_token, str) or not isinstance(server_token, str):
                raise TypeError("the tokens must be strings")
            if not isinstance(accepted, bool):
                raise TypeError("accepted must be true or false")
            if not accepted:
                proposal = ProposedCredentials(agent_token=agent_token, server_token=server_token)
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            # WireError is a ValueError: a proposal that this release would not make
            raise IdentityError(
                f"{self.path} does not hold credentials ({error}); delete it together with "
                "agent_id to join as a new agent",
                path=self.path,
            ) from None
        if accepted:
            self.agent_token, self.server_token = agent_token, server_token
        else:
            self.proposal = proposal

    def propose(self) -> ProposedCredentials | None:
        """The credentials to propose when registering with the join token (blocking).

        Those held: accepted ones too, so that a server whose database was replaced takes
        them again rather than issuing new ones in an answer that could be lost. Without any,
        and with a join token, new ones, saved before this returns: whatever becomes of the
        registration, the next one proposes the same. ``None`` without a join token, or for
        issued tokens this release would not propose (the server then issues new ones).
        """
        if self.agent_token is not None and self.server_token is not None:
            try:
                return ProposedCredentials(
                    agent_token=self.agent_token, server_token=self.server_token
                )
            except WireError:
                return None
        if self.proposal is None and self.join_token is not None:
            proposal = ProposedCredentials(
                agent_token=secrets.token_urlsafe(32), server_token=secrets.token_urlsafe(32)
            )
            self._write(proposal.agent_token, proposal.server_token, accepted=False)
            self.proposal = proposal
        return self.proposal

    def accept(self) -> None:
        """A server holds the proposal: keep it as this agent's credentials (blocking)."""
        if self.proposal is not None:
            self.save(self.proposal.agent_token, self.proposal.server_token)

    def save(self, agent_token: str, server_token: str) -> None:
        """Keep credentials a server took or issued, mode 0600 (blocking: call it from a
        thread); they replace any proposal."""
        self._write(agent_token, server_token, accepted=True)
        self.agent_token, self.server_token = agent_token, server_token
        self.proposal = None

    def _write(self, agent_token: str, server_token: str, *, accepted: bool) -> None:
        content = json.dumps(
            {"agent_token": agent_token, "server_token": server_token, "accepted": accepted}
        )
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
        # The rename itself is made durable too: a proposal must be on disk before it is sent.
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    @property
    def own_token(self) -> str | None:
        """The token this agent presents: the accepted one, else the proposed one."""
        if self.agent_token is not None:
            return self.agent_token
        return None if self.proposal is None else self.proposal.agent_token

    @property
    def expected_server_token(self) -> str | None:
        """What the server presents: the accepted one, else the proposed one (the server may
        push with it before the agent hears that it was taken)."""
        if self.server_token is not None:
            return self.server_token
        return None if self.proposal is None else self.proposal.server_token

    @property
    def server_only(self) -> bool:
        """Whether the scheduling endpoints accept the server alone: with a join token, or
        once the agent holds credentials."""
        return self.join_token is not None or self.expected_server_token is not None

    def registration_token(self, *, use_join_token: bool) -> str | None:
        """The token to register with: the join token, or the agent's own (the only one there
        is, or when not ``use_join_token``)."""
        own = self.own_token
        if own is None or (use_join_token and self.join_token is not None):
            return self.join_token
        return own

    def check_server(self, headers: Mapping[str, str]) -> None:
        """Refuse (401) a request to a scheduling endpoint that is not from the server."""
        if not self.server_only:
            return
        given = bearer_token(headers.get("authorization"))
        if not same_token(given, self.expected_server_token):
            raise unauthorized("this endpoint accepts only the server's credential")
