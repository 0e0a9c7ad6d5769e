"""Who is calling the server, and what they may do (docs/security.md).

Callers present ``Authorization: Bearer <token>``:

- the **admin token** may do everything;
- the **read token** may read tasks, outputs and agents;
- the **join token** may register a new agent, which receives its own credential;
- an **agent credential** may register, heartbeat and report for its own agent only.

Without an admin token the client endpoints are open; without a join token the agent endpoints
are (both only allowed on loopback, see :func:`check_exposure`). Tokens are compared in constant
time and never logged; of an agent credential only its SHA-256 is stored.
"""

from __future__ import annotations

import enum
import secrets
import stat
from pathlib import Path
from uuid import UUID

import attrs
import trio
from starlette.requests import Request

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

from .errors import ServerError
from .records import AgentCredential
from .store import AsyncStore, Store


class Role(enum.Enum):
    ADMIN = "admin"
    READ = "read"
    JOIN = "join"
    AGENT = "agent"


@attrs.frozen
class Caller:
    """Who a request comes from; ``agent_id`` for :attr:`Role.AGENT`."""

    role: Role
    agent_id: UUID | None = None


@attrs.frozen(kw_only=True)
class IssuedCredential:
    """Sent once to a registering agent: what it presents, and what the server presents."""

    agent_token: str = attrs.field(repr=False)
    server_token: str = attrs.field(repr=False)


class TokenFileRefused(ServerError, ValueError):
    """A token file that cannot be used: unreadable, too open, or not in the format."""


def read_token_file(path: Path) -> TokenFile:
    """The tokens of ``path`` (``admin = …``, ``read = …``, ``join = …`` lines).

    A file that the group or others may read or write is refused: the tokens would not be secret.
    """
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise TokenFileRefused(
                f"token file {path} is accessible by group or others "
                f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {path}"
            )
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise TokenFileRefused(
            f"cannot read token file {path}: {error.strerror or error}"
        ) from None
    except UnicodeDecodeError:
        raise TokenFileRefused(f"token file {path} is not UTF-8 text") from None
    try:
        return parse_token_file(text)
    except TokenFileError as error:
        raise TokenFileRefused(f"token file {path}: {error}") from None


def check_exposure(
    host: str, *, admin_token: str | None, join_token: str | None, insecure: bool
) -> None:
    """Refuse to serve on a non-loopback ``host`` without both tokens, unless ``insecure``."""
    if insecure or is_loopback(host):
        return
    missing = [
        name
        for name, token in (("--admin-token", admin_token), ("--join-token", join_token))
        if token is None
    ]
    if missing:
        raise ServerError(
            f"refusing to listen on {host} without {' and '.join(missing)}: whoever can reach "
            "the API would own every agent; set them (or TSCHED_ADMIN_TOKEN, TSCHED_JOIN_TOKEN, "
            "--token-file), or pass --insecure"
        )


class Guard:
    """Authenticates requests and keeps the agents' credentials (a cache of the store's)."""

    def __init__(
        self,
        store: AsyncStore,
        *,
        admin_token: str | None = None,
        read_token: str | None = None,
        join_token: str | None = None,
    ) -> None:
        self._store = store
        self.admin_token = admin_token
        self.read_token = read_token
        self.join_token = join_token
        self._agent_by_digest: dict[str, UUID] = {}
        self._server_tokens: dict[UUID, str] = {}
        self._loaded = False
        self._lock = trio.Lock()

    @property
    def clients_open(self) -> bool:
        return self.admin_token is None

    @property
    def agents_open(self) -> bool:
        return self.join_token is None

    async def _load(self) -> None:
        async with self._lock:
            if self._loaded:
                return
            for credential in await self._store.call(Store.agent_credentials):
                self._remember(credential)
            self._loaded = True

    def _remember(self, credential: AgentCredential) -> None:
        old = self._server_tokens.get(credential.agent_id)
        if old is not None:
            for digest in [d for d, a in self._agent_by_digest.items() if a == credential.agent_id]:
                del self._agent_by_digest[digest]
        self._agent_by_digest[credential.token_sha256] = credential.agent_id
        self._server_tokens[credential.agent_id] = credential.server_token

    def agent_headers(self, agent_id: UUID) -> dict[str, str]:
        """What the server presents to agent ``agent_id`` (nothing if it has no credential)."""
        token = self._server_tokens.get(agent_id)
        return {} if token is None else {"Authorization": f"Bearer {token}"}

    async def caller(self, request: Request) -> Caller | None:
        """Who presented the request's token; ``None`` for no token or an unknown one."""
        token = bearer_token(request.headers.get("authorization"))
        if token is None:
            return None
        # Every configured token is compared, so the time taken says nothing about which one.
        matches = [
            role
            for role, expected in (
                (Role.ADMIN, self.admin_token),
                (Role.READ, self.read_token),
                (Role.JOIN, self.join_token),
            )
            if same_token(token, expected)
        ]
        if matches:
            return Caller(matches[0])
        await self._load()
        # A dictionary lookup by digest: the digest of a guess tells nothing about a real token.
        agent_id = self._agent_by_digest.get(token_digest(token))
        return None if agent_id is None else Caller(Role.AGENT, agent_id)

    async def _known_caller(self, request: Request) -> Caller:
        caller = await self.caller(request)
        if caller is None:
            raise unauthorized()
        return caller

    async def require_reader(self, request: Request) -> None:
        """Reading tasks, outputs, agents: the admin or the read token."""
        if self.clients_open:
            return
        caller = await self._known_caller(request)
        if caller.role not in (Role.ADMIN, Role.READ):
            raise forbidden("this endpoint needs the admin or the read token")

    async def require_admin(self, request: Request) -> None:
        """Creating or changing tasks: the admin token."""
        if self.clients_open:
            return
        caller = await self._known_caller(request)
        if caller.role is not Role.ADMIN:
            raise forbidden("this endpoint needs the admin token")

    async def agent_caller(self, request: Request) -> Caller | None:
        """The caller of an agent endpoint (heartbeat, report): an agent or the admin.

        ``None`` when the agent endpoints are open. Whom it may speak for is
        :meth:`check_speaks_for`'s question, asked once the agent in question is known.
        """
        if self.agents_open:
            return None
        caller = await self._known_caller(request)
        if caller.role not in (Role.ADMIN, Role.AGENT):
            raise forbidden("this endpoint needs an agent credential")
        return caller

    @staticmethod
    def check_speaks_for(caller: Caller | None, agent_id: UUID) -> None:
        """Refuse an agent speaking for another one (403)."""
        if caller is not None and caller.role is Role.AGENT and caller.agent_id != agent_id:
            raise forbidden(f"agent {caller.agent_id} may not speak for agent {agent_id}")

    async def registration_caller(self, request: Request) -> Caller | None:
        """The caller of the registration: the join or admin token, or an agent credential.

        ``None`` when the agent endpoints are open.
        """
        if self.agents_open:
            return None
        caller = await self._known_caller(request)
        if caller.role is Role.READ:
            raise forbidden("registering an agent needs the join token or its credential")
        return caller

    async def check_registration(self, caller: Caller | None, agent_id: UUID) -> bool:
        """May ``caller`` register ``agent_id``? Returns whether to issue it a new credential.

        The join token (or the admin token) registers an agent that has no credential yet; an
        agent that has one registers again with it, and with it only: taking over an agent's id
        (and so its reports) is refused, whatever the token.
        """
        if caller is None:
            return False
        if caller.role is Role.AGENT:
            self.check_speaks_for(caller, agent_id)
            return False
        await self._load()
        if agent_id in self._server_tokens:
            raise forbidden(
                f"agent {agent_id} already has a credential: register with it (a new id needs "
                "a new data directory)"
            )
        return True

    async def issue(self, agent_id: UUID) -> IssuedCredential:
        """New credentials for ``agent_id``, stored (the agent's as a digest) and remembered."""
        issued = IssuedCredential(
            agent_token=secrets.token_urlsafe(32), server_token=secrets.token_urlsafe(32)
        )
        credential = AgentCredential(
            agent_id=agent_id,
            token_sha256=token_digest(issued.agent_token),
            server_token=issued.server_token,
        )
        await self._load()
        await self._store.call(Store.set_agent_credential, credential)
        self._remember(credential)
        return issued
