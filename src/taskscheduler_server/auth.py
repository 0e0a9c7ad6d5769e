"""Who is calling the server, and what they may do (docs/security.md).

Callers present ``Authorization: Bearer <token>``:

- the **admin token** may do everything;
- the **read token** may read tasks, outputs and agents;
- the **join token** may register a new agent, which receives its own credential (or keeps the
  one it proposed);
- an **agent credential** may register, heartbeat and report for its own agent only.

Without an admin token the client endpoints are open; without a join token the agent endpoints
are (both only allowed on loopback, see :func:`check_exposure`). Tokens are compared in constant
time and never logged; of an agent credential only its SHA-256 is stored.

Replicas sharing a database each keep the credentials in memory and look up in the store those
another replica issued (:class:`Guard`).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import secrets
import stat
from collections.abc import AsyncIterator, Hashable
from pathlib import Path
from typing import Generic, TypeVar
from uuid import UUID

import attrs
import trio
from starlette.requests import Request

from taskscheduler_core import ApiError as CoreApiError
from taskscheduler_core import (
    ProposedCredentials,
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

from .errors import DatabaseUnavailable, ServerError
from .records import AgentCredential
from .store import AsyncStore, Store

logger = logging.getLogger("taskscheduler.server.auth")

K = TypeVar("K", bound=Hashable)

#: How long (seconds) a token digest or an agent id that the store did not have is taken as
#: unknown without asking it again: a caller repeating a wrong token is answered from memory.
UNKNOWN_SECONDS = 5.0
#: At most this many unknowns are remembered (the oldest are forgotten first).
MAX_UNKNOWN = 4096
#: How long :meth:`Guard.keep_fresh` waits before trying an unreachable database again.
RETRY_SECONDS = 1.0
#: After a token lookup found the database unreachable, lookups answer 503 at once for this
#: long (seconds): a partition would otherwise queue every request with an unseen token behind
#: one connect timeout after another.
UNREACHABLE_SECONDS = 1.0


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
    """What a registering agent is given: what it presents, and what the server presents.

    Made by the server (sent once) or proposed by the agent (never sent back).
    """

    agent_token: str = attrs.field(repr=False)
    server_token: str = attrs.field(repr=False)


class _Unknown(Generic[K]):
    """Keys the store was asked for and did not have, each for :data:`UNKNOWN_SECONDS` of trio
    time, at most :data:`MAX_UNKNOWN` of them."""

    def __init__(self) -> None:
        # In insertion order, which is expiry order: every entry lives as long.
        self._until: dict[K, float] = {}

    def __contains__(self, key: K) -> bool:
        until = self._until.get(key)
        if until is None:
            return False
        if until <= trio.current_time():
            del self._until[key]
            return False
        return True

    def add(self, key: K) -> None:
        self._until.pop(key, None)
        if len(self._until) >= MAX_UNKNOWN:
            del self._until[next(iter(self._until))]
        self._until[key] = trio.current_time() + UNKNOWN_SECONDS


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
    """Authenticates requests, and keeps the agents' credentials: a cache of the store's.

    The store is the truth: replicas sharing a database issue credentials into it, each
    unaware of the others'. So a credential this replica does not know is looked up there
    before it is refused — a token at its first use here (:meth:`caller`), an agent to push
    to (:meth:`agent_headers`, through :meth:`keep_fresh`), an id to register
    (:meth:`issue`) — and what the store did not have is remembered as unknown for
    :data:`UNKNOWN_SECONDS`. A credential, once issued, never changes (an agent id gets one),
    so what the cache holds is never stale; a known token costs no store call.
    """

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
        self._digests: dict[UUID, str] = {}
        self._server_tokens: dict[UUID, str] = {}
        self._loaded = False
        self._lock = trio.Lock()
        self._unknown_digests: _Unknown[str] = _Unknown()
        self._unknown_agents: _Unknown[UUID] = _Unknown()
        # Tokens seen for the first time are looked up one at a time: a flood of made-up
        # tokens (each one new, so never remembered as unknown) costs the database one
        # indexed query at a time, however fast it comes.
        self._lookups = trio.CapacityLimiter(1)
        #: Until when (trio's clock) lookups answer "unavailable" without asking the store.
        self._unreachable_until = -math.inf
        #: The agents :meth:`agent_headers` had no credential for, for :meth:`keep_fresh`.
        self._wanted: set[UUID] = set()
        self._wanted_changed = trio.Event()

    @property
    def clients_open(self) -> bool:
        return self.admin_token is None

    @property
    def agents_open(self) -> bool:
        return self.join_token is None

    async def _load(self) -> None:
        """Every credential of the store, once (the lookups below then add the new ones)."""
        if self._loaded:
            return
        async with self._lock:
            if self._loaded:
                return
            for credential in await self._store.call(Store.agent_credentials):
                self._remember(credential)
            self._loaded = True

    def _remember(self, credential: AgentCredential) -> None:
        old = self._digests.get(credential.agent_id)
        if old is not None and old != credential.token_sha256:
            del self._agent_by_digest[old]  # a replaced credential (none is, today)
        self._agent_by_digest[credential.token_sha256] = credential.agent_id
        self._digests[credential.agent_id] = credential.token_sha256
        self._server_tokens[credential.agent_id] = credential.server_token

    async def _agent_with_digest(self, digest: str) -> UUID | None:
        """The agent whose token has the SHA-256 ``digest``: known here, or issued by another
        replica (looked up in the store), or ``None``."""
        agent_id = self._agent_by_digest.get(digest)
        if agent_id is not None or digest in self._unknown_digests:
            return agent_id
        self._check_reachable()
        async with self._lookups:
            # Another request with the same token may have looked it up meanwhile, or found
            # the database unreachable.
            agent_id = self._agent_by_digest.get(digest)
            if agent_id is not None or digest in self._unknown_digests:
                return agent_id
            self._check_reachable()
            try:
                credential = await self._store.call(Store.credential_by_digest, digest)
            except DatabaseUnavailable:
                # Those queued behind this lookup get their 503 at once rather than each
                # waiting out a connect timeout in turn.
                self._unreachable_until = trio.current_time() + UNREACHABLE_SECONDS
                raise
            if credential is None:
                self._unknown_digests.add(digest)
                return None
            self._remember(credential)
            return credential.agent_id

    def _check_reachable(self) -> None:
        """Raise :class:`DatabaseUnavailable` if a lookup found the database unreachable less
        than :data:`UNREACHABLE_SECONDS` ago."""
        if trio.current_time() < self._unreachable_until:
            raise DatabaseUnavailable("the database did not answer a moment ago")

    async def headers_for(self, agent_id: UUID) -> dict[str, str]:
        """What the server presents to agent ``agent_id`` (nothing if it has no credential),
        looked up in the store if this replica does not know it yet (it registered through
        another): what the dispatcher and the reconciler send, so that even their first push
        to such an agent carries the server's token. May raise :class:`DatabaseUnavailable`.
        """
        if agent_id not in self._server_tokens and agent_id not in self._unknown_agents:
            await self._load()
            if agent_id not in self._server_tokens:
                for credential in await self._store.call(Store.agent_credentials, [agent_id]):
                    self._remember(credential)
                if agent_id not in self._server_tokens:
                    self._unknown_agents.add(agent_id)
        return self.agent_headers(agent_id)

    def agent_headers(self, agent_id: UUID) -> dict[str, str]:
        """What the server presents to agent ``agent_id`` (nothing if it has no credential).

        Synchronous, from memory: an agent not known here (it registered through another
        replica) gets nothing this time, and is looked up by :meth:`keep_fresh` at once.
        The dispatcher and the reconciler use :meth:`headers_for`, which waits for that.
        """
        token = self._server_tokens.get(agent_id)
        if token is None:
            if agent_id not in self._unknown_agents:
                self._wanted.add(agent_id)
                self._wanted_changed.set()
            return {}
        return {"Authorization": f"Bearer {token}"}

    async def keep_fresh(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Load every credential, then look up the agents :meth:`agent_headers` missed as
        they come, until cancelled; started once the first load was tried.

        Run beside the app by its lifespan (:meth:`lifespan`). A database that cannot be
        reached is tried again every :data:`RETRY_SECONDS`.
        """
        started = False
        while True:
            fresh = await self._refresh()
            if not started:
                task_status.started()
                started = True
            if fresh:
                await self._wanted_changed.wait()
            else:
                await trio.sleep(RETRY_SECONDS)

    async def _refresh(self) -> bool:
        """Load, and look up the agents wanted; ``False`` if the database is unreachable."""
        self._wanted_changed = trio.Event()
        try:
            await self._load()
            wanted = [agent_id for agent_id in self._wanted if agent_id not in self._server_tokens]
            found = await self._store.call(Store.agent_credentials, wanted) if wanted else []
        except DatabaseUnavailable as error:
            logger.warning(
                "cannot read the agents' credentials (%s); trying again in %g s",
                error,
                RETRY_SECONDS,
            )
            return False
        except Exception as error:
            # Run by the app's lifespan: an error escaping would stop the whole server. A
            # failure nobody foresaw (a corrupt file, a bug) is loud, and tried again.
            logger.error(
                "reading the agents' credentials failed (%r); trying again in %g s",
                error,
                RETRY_SECONDS,
                exc_info=error,
            )
            return False
        for credential in found:
            self._remember(credential)
        for agent_id in wanted:
            if agent_id not in self._server_tokens:
                self._unknown_agents.add(agent_id)
        # Those wanted again meanwhile were just looked up; those new since are kept.
        looked_up = set(wanted)
        self._wanted = {
            agent_id
            for agent_id in self._wanted
            if agent_id not in looked_up and agent_id not in self._server_tokens
        }
        return True

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object) -> AsyncIterator[None]:
        """The app's lifespan (``create_app``): :meth:`keep_fresh` runs while it is served."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.keep_fresh)
            yield
            nursery.cancel_scope.cancel()

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
        # Looked up by digest: the digest of a guess tells nothing about a real token.
        agent_id = await self._agent_with_digest(token_digest(token))
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

    async def check_registration(
        self, caller: Caller | None, agent_id: UUID, proposed: ProposedCredentials | None = None
    ) -> bool:
        """May ``caller`` register ``agent_id``? Returns whether :meth:`issue` must store a
        credential for it (a new one, or the ``proposed`` one).

        The join token (or the admin token) registers an agent that has no credential yet; an
        agent that has one registers again with it, and with it only: taking over an agent's id
        (and so its reports) is refused, whatever the token. With one exception, which gives
        nothing away: the join token with ``proposed`` credentials that are exactly the ones
        the id has — the same agent, which proposed them and never heard that they were
        taken (the answer was lost), so it cannot present them yet. An id known here is
        settled at once; any other by the store, when :meth:`issue` stores its credential.
        """
        if caller is None:
            return False  # open: no credentials, proposed or not
        if caller.role is Role.AGENT:
            self.check_speaks_for(caller, agent_id)
            if proposed is not None and not self._holds(agent_id, proposed):
                raise _taken(agent_id)
            return False
        if agent_id in self._server_tokens:
            if proposed is not None and self._holds(agent_id, proposed):
                return False
            raise _taken(agent_id)
        return True

    async def issue(
        self, agent_id: UUID, proposed: ProposedCredentials | None = None
    ) -> IssuedCredential:
        """Store the ``proposed`` credentials of ``agent_id``, or new ones, (the agent's token
        as a digest) and remember them.

        Refused (403) if the agent has a credential already, which the store decides: another
        replica may have stored it, even at this very moment (of two, one stores its
        credential). Proposed credentials equal to the stored ones are no refusal: the agent
        sent them again (through this replica or another) after its first answer was lost.
        """
        if proposed is None:
            issued = IssuedCredential(
                agent_token=secrets.token_urlsafe(32), server_token=secrets.token_urlsafe(32)
            )
        else:
            issued = IssuedCredential(
                agent_token=proposed.agent_token, server_token=proposed.server_token
            )
        credential = AgentCredential(
            agent_id=agent_id,
            token_sha256=token_digest(issued.agent_token),
            server_token=issued.server_token,
        )
        if await self._store.call(Store.add_agent_credential, credential):
            self._remember(credential)
            return issued
        if proposed is not None:
            # Not in memory here, so the store is asked: the truth, whoever stored it.
            for stored in await self._store.call(Store.agent_credentials, [agent_id]):
                self._remember(stored)
            if agent_id not in self._server_tokens:
                # No credential for the id, so the digest is another agent's: the token was
                # copied from it, since two random ones never meet.
                raise forbidden(f"the proposed agent_token of agent {agent_id} is taken")
            if self._holds(agent_id, proposed):
                return issued
        raise _taken(agent_id)

    def _holds(self, agent_id: UUID, proposed: ProposedCredentials) -> bool:
        """Whether ``proposed`` are the credentials of ``agent_id`` known here (both tokens,
        compared in constant time: the digest of a guess tells nothing about the real one)."""
        digest_matches = same_token(token_digest(proposed.agent_token), self._digests.get(agent_id))
        server_matches = same_token(proposed.server_token, self._server_tokens.get(agent_id))
        return digest_matches and server_matches


def _taken(agent_id: UUID) -> CoreApiError:
    return forbidden(
        f"agent {agent_id} already has a credential: register with it (a new id needs a new "
        "data directory)"
    )
