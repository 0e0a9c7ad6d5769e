"""Which agents a task is assigned to, in the store: targets (all, ids, labels), agents' labels
changing, edits and deletions ending assignments, and what a run then waits for."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import pytest

from taskscheduler_core import Agent, Targets, Task, TaskState, parse_recurrence
from taskscheduler_server import Store

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def agent(labels: dict[str, str] | None = None, at: datetime = START) -> Agent:
    return Agent(id=uuid4(), url="http://127.0.0.1:9", registered_at=at, labels=labels or {})


def task(targets: Targets | None = None, at: datetime = START, **fields: object) -> Task:
    return Task(
        id=uuid4(),
        command="echo hi",
        frequency=parse_recurrence("every 10 seconds"),
        anchor=at,
        created_at=at,
        targets=targets or Targets(),
        **fields,  # type: ignore[arg-type]
    )


def _tasks_of(store: Store, agent_id: UUID) -> tuple[UUID, ...]:
    detail = store.agent_detail(agent_id)
    assert detail is not None
    return detail.tasks


def test_targets_pick_all_agents_a_list_or_a_label_selector(store: Store) -> None:
    web = store.upsert_agent(agent({"role": "web", "zone": "a"}))
    db = store.upsert_agent(agent({"role": "db", "zone": "a"}))
    bare = store.upsert_agent(agent())

    everywhere, listed, selected, none = (
        task(),
        task(Targets(agents=(db.id, uuid4()))),  # an unknown id picks nobody (yet)
        task(Targets(labels={"zone": "a", "role": "web"})),
        task(Targets(labels={"role": "cache"})),
    )
    created = {t.id: store.create_task(t) for t in (everywhere, listed, selected, none)}

    assert {a.agent_id for a in created[everywhere.id]} == {web.id, db.id, bare.id}
    assert {a.agent_id for a in created[listed.id]} == {db.id}
    assert {a.agent_id for a in created[selected.id]} == {web.id}
    assert created[none.id] == []
    assert set(_tasks_of(store, web.id)) == {everywhere.id, selected.id}
    # a new agent gets what its labels (or id) match, from its registration
    later = START + timedelta(minutes=1)
    cache = store.upsert_agent(agent({"role": "cache"}, at=later))
    assert set(_tasks_of(store, cache.id)) == {everywhere.id, none.id}
    assert store.assignment_times(none.id) == {cache.id: later}


def test_changed_labels_move_an_agents_tasks(store: Store) -> None:
    node = agent({"role": "web"})
    store.upsert_agent(node)
    web_task, db_task = task(Targets(labels={"role": "web"})), task(Targets(labels={"role": "db"}))
    store.create_task(web_task)
    store.create_task(db_task)
    for pending in store.undelivered():
        store.mark_delivered(pending, START)

    # it registers again as a db: the web task is to be dropped, the db task pushed
    moved = START + timedelta(minutes=1)
    store.upsert_agent(attrs.evolve(node, registered_at=moved, labels={"role": "db"}))
    work = {(a.task.id, a.removing) for a in store.undelivered(node.id)}
    assert work == {(web_task.id, True), (db_task.id, False)}
    assert _tasks_of(store, node.id) == (db_task.id,)
    [removal] = [a for a in store.undelivered(node.id) if a.removing]
    assert removal.unassigned_at == moved
    # the removal, once acknowledged, is done; the row stays (the agent's reports still count)
    assert store.mark_delivered(removal, moved)
    assert store.assignment_times(web_task.id) == {node.id: START}
    assert store.expected_agents(web_task.id, moved - timedelta(seconds=1)) == {node.id}
    assert store.expected_agents(web_task.id, moved + timedelta(seconds=1)) == frozenset()

    # labels learnt from its identity (an agent of AVAILABLE_SERVERS) do the same
    back = moved + timedelta(minutes=1)
    assert store.update_agent_labels(node.id, {"role": "web"}, now=back)
    assert not store.update_agent_labels(node.id, {"role": "web"}, now=back)  # no change
    assert _tasks_of(store, node.id) == (web_task.id,)
    assert store.assignment_times(web_task.id) == {node.id: back}  # assigned anew
    assert store.expected_agents(web_task.id, moved + timedelta(seconds=1)) == frozenset()
    assert store.expected_agents(web_task.id, back + timedelta(seconds=1)) == {node.id}


def test_a_deleted_task_ends_every_assignment_and_an_edit_pushes_again(store: Store) -> None:
    first, second = store.upsert_agent(agent()), store.upsert_agent(agent())
    doomed = task()
    store.create_task(doomed)
    for pending in store.undelivered():
        store.mark_delivered(pending, START)

    edited_at = START + timedelta(seconds=30)
    store.change_task(doomed.id, lambda t: attrs.evolve(t, command="echo changed"), now=edited_at)
    assert {(a.agent_id, a.task.command) for a in store.undelivered()} == {
        (first.id, "echo changed"),
        (second.id, "echo changed"),
    }
    for pending in store.undelivered():
        store.mark_delivered(pending, edited_at)

    deleted_at = START + timedelta(minutes=1)
    store.change_task(doomed.id, lambda t: attrs.evolve(t, deleted_at=deleted_at), now=deleted_at)
    assert {(a.agent_id, a.removing) for a in store.undelivered()} == {
        (first.id, True),
        (second.id, True),
    }
    assert store.get_task(doomed.id).state is TaskState.DELETED  # type: ignore[union-attr]
    assert store.run_targets(doomed.id) == []
    assert store.assignments_of(first.id) == []
    # a deleted task is given to no agent that registers later, nor pushed again on registration
    store.upsert_agent(attrs.evolve(first, registered_at=deleted_at))
    late = store.upsert_agent(agent(at=deleted_at))
    assert [a.agent_id for a in store.undelivered() if not a.removing] == []
    assert store.agent_detail(late.id).tasks == ()  # type: ignore[union-attr]


def test_run_targets_are_the_alive_assigned_agents(store: Store) -> None:
    alive, silent = store.upsert_agent(agent()), store.upsert_agent(agent())
    target = task()
    store.create_task(target)
    store.heartbeat(alive.id, START + timedelta(seconds=20))
    store.mark_lost(START + timedelta(seconds=10))
    assert [a.id for a in store.run_targets(target.id)] == [alive.id]
    assert silent.id not in store.expected_agents(target.id, START + timedelta(seconds=30))


def test_purge_names_the_agents_that_may_still_hold_the_task(store: Store) -> None:
    holder, done, waiting = (store.upsert_agent(agent()) for _ in range(3))
    purged = task()
    store.create_task(purged)
    for pending in store.undelivered():
        if pending.agent_id != waiting.id:
            store.mark_delivered(pending, START)
    store.change_task(
        purged.id, lambda t: attrs.evolve(t, targets=Targets(agents=(holder.id,))), now=START
    )
    [removal] = [a for a in store.undelivered() if a.agent_id == done.id]
    store.mark_delivered(removal, START)  # done dropped it already

    assert set(store.purge_task(purged.id) or ()) == {holder.id, waiting.id}
    assert store.get_task(purged.id) is None
    assert store.undelivered() == []
    assert store.purge_task(purged.id) is None


def test_find_tasks_pages_and_filters_in_sql(store: Store) -> None:
    named = [task(at=START + timedelta(seconds=n), name=f"Backup {n}") for n in range(5)]
    for t in named:
        store.create_task(t)
    anonymous = task(at=START + timedelta(seconds=9))
    store.create_task(anonymous)
    store.change_task(named[1].id, lambda t: attrs.evolve(t, paused=True), now=START)

    assert [t.id for t in store.find_tasks(limit=100)] == [t.id for t in [*named, anonymous]]
    assert [t.id for t in store.find_tasks(name="BACKUP", limit=2)] == [
        named[0].id,
        named[1].id,
    ]
    after = (named[1].created_at, named[1].id)
    assert [t.id for t in store.find_tasks(name="backup", after=after, limit=100)] == [
        t.id for t in named[2:]
    ]
    assert [t.id for t in store.find_tasks(states=[TaskState.PAUSED])] == [named[1].id]
    assert store.find_tasks(states=[]) == []
