"""Two server replicas on one PostgreSQL schema: the lease holder is SIGKILLed; the database is
unreachable for a while.

Topology: replica ``a`` (the holder) and replica ``b``, agent ``one`` reporting to ``a`` and agent
``two`` to ``b``, one task ``every 1 seconds``. ``a`` is killed: ``b`` must take the lease within
the lease time (the failover is measured, from the kill to ``b``'s ``/readyz`` saying it holds
it); a task created through ``b`` during the failover must reach both agents (``one`` too, whose
own server is dead) and run there; ``one`` keeps its reports on disk until ``a`` is started
again. Then each agent's own record of what it ran (its journal) is compared with the shared
executions table: nothing missing, nothing twice, nothing stored that was not run.

The second test puts a cuttable TCP proxy (tests/tcp_proxy.py) between both replicas and
PostgreSQL and cuts it for longer than the lease: the API must answer 503 (not 500), ``/readyz``
503, the holder must stop the work done once, the agents must go on running and keep their
reports; once the database is back, a replica leads again and every report is stored once.

Skipped without ``TSCHED_TEST_DATABASE_URL`` (tests/databases.py).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from databases import query, server_address, through_port
from processes import (
    FAST_SERVER_FLAGS,
    AgentService,
    Cluster,
    ServerService,
    StoredExecution,
    free_port,
    micros,
    wait_until,
)
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.faults

#: The lease, short enough for the failover to be seen in seconds: renewed every 2/3 s.
LEASE_SECONDS = 2.0


class Replica(ServerService):
    """A ``tsched server`` on the shared PostgreSQL schema, with its replica id."""

    def __init__(self, name: str, *, database_url: str, root: Path) -> None:
        super().__init__(
            "server",
            port=free_port(),
            data_dir=root / name,
            logs=root,
            flags=(
                *FAST_SERVER_FLAGS,
                "--lease-seconds",
                str(LEASE_SECONDS),
                "--replica-id",
                name,
            ),
            env={"TSCHED_DATABASE": database_url},
        )
        self.name = name
        self.database_url = database_url

    def lease(self) -> dict[str, Any]:
        """The lease as this replica sees it (``GET /readyz``)."""
        response = httpx.get(f"{self.url}/readyz", timeout=2.0)
        assert response.status_code == 200, response.text
        lease: dict[str, Any] = response.json()["lease"]
        return lease

    def executions(self) -> list[StoredExecution]:
        """Every execution stored in the shared database, by whichever replica."""
        rows = query(
            self.database_url,
            "SELECT task_id, agent_id, scheduled_at, status, started_at FROM executions",
        )
        return [
            StoredExecution(
                key=(uuid.UUID(task_id), uuid.UUID(agent_id), micros(scheduled_at)),
                status=status,
                started_at=micros(started_at) / 1e6,
                stderr="",
            )
            for task_id, agent_id, scheduled_at, status, started_at in rows
        ]


def ran(agent: AgentService, task: uuid.UUID) -> int:
    """How many executions of ``task`` the agent has journaled."""
    return len([entry for entry in agent.journal() if entry.key[0] == task])


def start_replicas(cluster: Cluster, database_url: str, root: Path) -> tuple[Replica, Replica]:
    """Replicas ``a`` (started first: it takes the lease at once) and ``b`` on ``database_url``.

    The cluster's own (SQLite) server is replaced by them; it reads the executions through the
    one it calls its server, and kills them all at the end.
    """
    a = Replica("a", database_url=database_url, root=root)
    b = Replica("b", database_url=database_url, root=root)
    cluster.services.remove(cluster.server)
    cluster.services[:0] = [a, b]
    cluster.server = a
    a.start()
    b.start()
    return a, b


def start_agents_running(
    cluster: Cluster, a: Replica, b: Replica, command: str
) -> tuple[AgentService, AgentService, uuid.UUID]:
    """Agent ``one`` reporting to ``a`` and ``two`` to ``b``, both alive, each having run a task
    of ``command`` (created through ``a``, ``every 1 seconds``) twice; and that task."""
    one, two = cluster.agent("one"), cluster.agent("two")
    one.start_with(a.url, wait=False)
    two.start_with(b.url, wait=False)
    one.wait_healthy()
    two.wait_healthy()
    cluster.wait_alive(one, two)
    task = a.create(command, "every 1 seconds")
    wait_until(
        lambda: all(ran(agent, task) >= 2 for agent in (one, two)),
        timeout=10,
        what="both agents to run the task twice",
    )
    return one, two, task


def test_lease_holder_killed_the_other_replica_takes_over_and_nothing_is_lost_or_doubled(
    database_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    a, b = start_replicas(cluster, database_url, tmp_path)
    assert a.lease() == {"replica": "a", "held": True, "holder": "a"}
    assert b.lease() == {"replica": "b", "held": False, "holder": "a"}
    one, two, first = start_agents_running(cluster, a, b, "echo first $TSCHED_AGENT_ID")

    assert a.lease()["held"], "a is still the holder when it is killed"
    a.kill()
    killed_at = time.monotonic()
    cluster.server = b
    # Created during the failover, through the replica that does not hold the lease yet.
    second = b.create("echo second $TSCHED_AGENT_ID", "every 1 seconds")
    wait_until(lambda: b.lease()["held"], timeout=3 * LEASE_SECONDS, what="b to take the lease")
    failover = time.monotonic() - killed_at
    print(f"\nfailover: holder SIGKILLed -> the other replica holds the lease in {failover:.2f} s")
    # Within the lease time: its expiry comes at most LEASE_SECONDS after the kill (b tries
    # then); the slack is for b's store call and readyz polling on 2 shared cores.
    assert failover <= LEASE_SECONDS + 1.5, f"failover took {failover:.2f} s"

    wait_until(
        lambda: all(second in agent.tasks() for agent in (one, two)),
        timeout=5,
        what="the task created during the failover to reach both agents",
    )
    reached = time.monotonic() - killed_at
    wait_until(
        lambda: all(ran(agent, second) >= 2 for agent in (one, two)),
        timeout=10,
        what="both agents to run the task created during the failover",
    )
    print(f"the task created during the failover was on both agents {reached:.2f} s after the kill")
    assert one.outbox(), "agent one's server is dead: its reports wait on its disk"

    a.start()  # a new life of replica a: b keeps the lease; one delivers what it kept
    assert a.lease() == {"replica": "a", "held": False, "holder": "b"}
    cluster.settle(one, two)
    result = cluster.account(
        f"lease holder SIGKILLed (2 replicas on PostgreSQL, lease {LEASE_SECONDS:g} s), "
        "2 agents run `every 1 seconds`",
        one,
        two,
        note=f"failover {failover:.2f} s",
    )
    stored_tasks = {execution.key[0] for execution in b.executions()}
    assert stored_tasks == {first, second}
    assert result.run >= 8


def lease_held(replica: Replica) -> bool | None:
    """``tsched_lease_held`` of ``replica``'s /metrics (readable while its database is down)."""
    response = httpx.get(f"{replica.url}/metrics", timeout=5.0)
    for line in response.text.splitlines():
        if line.startswith("tsched_lease_held "):
            return float(line.split()[1]) == 1.0
    return None


#: How long the database stays unreachable: longer than the lease.
OUTAGE_SECONDS = 3.0


def test_database_unreachable_for_a_while_503s_then_everything_is_stored_once(
    database_url: str, cluster: Cluster, tmp_path: Path
) -> None:
    with TcpProxy(*server_address(database_url)) as proxy:
        a, b = start_replicas(cluster, through_port(database_url, proxy.port), tmp_path)
        one, two, _ = start_agents_running(cluster, a, b, "echo up $TSCHED_AGENT_ID")
        assert lease_held(a) is True

        proxy.cut()
        cut_at = time.monotonic()
        # The API says so, and loses nothing: 503 with its code, not a 500.
        refused = httpx.post(
            f"{b.url}/api/v1/tasks",
            json={"command": "echo never", "frequency": "every 1 seconds"},
            timeout=30.0,
        )
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "database_unavailable"
        assert "Retry-After" in refused.headers
        for replica in (a, b):
            ready = httpx.get(f"{replica.url}/readyz", timeout=10.0)
            assert ready.status_code == 503, ready.text
        # The holder stops the work done once before its lease could expire.
        wait_until(lambda: lease_held(a) is False, timeout=LEASE_SECONDS + 2, what="a to stop")
        stopped = time.monotonic() - cut_at
        # The agents go on running the task, their reports queued on their disks.
        wait_until(
            lambda: bool(one.outbox()) and bool(two.outbox()),
            timeout=10,
            what="both agents to queue reports",
        )
        time.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - cut_at)))
        ran_during = {"one": len(one.outbox()), "two": len(two.outbox())}

        proxy.restore()
        restored_at = time.monotonic()
        wait_until(
            lambda: lease_held(a) or lease_held(b),
            timeout=3 * LEASE_SECONDS,
            what="a replica to lead again",
        )
        leading = time.monotonic() - restored_at
        print(
            f"\ndatabase cut for {OUTAGE_SECONDS:g} s: the holder stopped its work "
            f"{stopped:.2f} s after the cut; a replica led again {leading:.2f} s after the "
            f"restore; reports queued meanwhile: {ran_during}"
        )
        cluster.settle(one, two)
        result = cluster.account(
            f"PostgreSQL unreachable for {OUTAGE_SECONDS:g} s (2 replicas, lease "
            f"{LEASE_SECONDS:g} s), 2 agents run `every 1 seconds`",
            one,
            two,
            note=f"work stopped {stopped:.2f} s after the cut, led again {leading:.2f} s after",
        )
        assert result.run >= 8
