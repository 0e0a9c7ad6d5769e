"""An agent stalled (SIGSTOP) across several fire times records them as missed, with no burst."""

from __future__ import annotations

import time

import pytest

from processes import Cluster, wait_until

pytestmark = pytest.mark.faults

PAUSE = 4.5  # seconds: several fire times of both tasks


def test_agent_paused_across_fire_times_records_them_missed_without_a_burst(
    cluster: Cluster,
) -> None:
    agent = cluster.agent("agent")
    server = cluster.start(agent)
    # task -> its interval in seconds
    tasks = {
        server.create("echo every second", "every 1 seconds"): 1,
        server.create("echo every other second", "every 2 seconds"): 2,
    }
    wait_until(
        lambda: {e.key[0] for e in agent.journal() if e.status == "succeeded"} == set(tasks),
        timeout=10,
        what="the agent to run both tasks",
    )

    agent.pause()
    paused_at = time.time()
    wait_until(
        lambda: server.agent_status()[str(agent.agent_id)] == "lost",
        timeout=PAUSE,
        what="the stalled agent marked lost",
    )
    time.sleep(max(0.0, paused_at + PAUSE - time.time()))
    agent.resume()
    resumed_at = time.time()
    cluster.wait_alive(agent, timeout=5)
    time.sleep(2.5)  # a fire time of each task after the resume
    cluster.settle(agent)
    result = cluster.account(
        "agent paused (SIGSTOP) 4.5 s, then SIGCONT",
        agent,
        note="two tasks (every 1 s and 2 s); marked lost, then alive; no burst",
    )

    executions = server.executions()
    for task, interval in tasks.items():
        mine = sorted((e for e in executions if e.key[0] == task), key=lambda e: e.key[2])
        stalled = [e for e in mine if paused_at + 0.05 < e.key[2] / 1e6 < resumed_at]
        assert len(stalled) >= PAUSE // interval - 1, stalled
        # Every slot of the pause but the newest is missed; the newest may still start, late.
        assert all(e.status == "missed" for e in stalled[:-1]), stalled
        assert sum(e.status != "missed" for e in stalled) <= 1, stalled
        assert stalled[-1].status in ("missed", "succeeded"), stalled
        # No burst: of the slots from before the resume, at most one starts after it.
        late_starts = [
            e
            for e in mine
            if e.status != "missed"
            and e.key[2] / 1e6 < resumed_at
            and resumed_at - 0.2 <= e.started_at <= resumed_at + 1
        ]
        assert len(late_starts) <= 1, late_starts
        # After the resume every slot starts on time again.
        after = [e for e in mine if e.key[2] / 1e6 > resumed_at + 0.1]
        assert after, mine
        assert all(e.status == "succeeded" for e in after), after
        assert all(e.started_at - e.key[2] / 1e6 < 0.9 for e in after), after
    missed = sum(e.status == "missed" for e in executions)
    assert missed >= 3 + 1, executions  # ≥ 3 of the 1 s task and ≥ 1 of the 2 s task
    assert result.stored == len(executions)
