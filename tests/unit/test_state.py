"""The inventory's write-ahead transitions: a crash between any two steps loses nothing."""

from __future__ import annotations

import pytest

from prefect_gitops.model import EnvironmentFile
from prefect_gitops.plan import ActualState, Change, PoolActual, plan
from prefect_gitops.state import (EnvironmentState, HistoryEntry, Inventory, ManagedKey, begin_apply, completed_writes,
                                  find_rollback_target, finish_apply, values_at)
from prefect_gitops.state import utcnow

POOL = {"variables": {"properties": {"image": {"type": "string", "default": "flows:0"}}}}


def actual(pool_image: str) -> ActualState:
    template = {"variables": {"properties": {"image": {"type": "string", "default": pool_image}}}}
    return ActualState(work_pools={"k8s": PoolActual("k8s", "id", template)})


def desired(image: str | None) -> EnvironmentFile:
    pools = {"k8s": {"job_variables": {"image": image}}} if image else {}
    return EnvironmentFile.model_validate({"work_pools": pools})


def test_crash_after_write_keeps_the_original_previous_value():
    first = plan(desired("flows:1"), actual("flows:0"), Inventory(), "correct")
    ahead = begin_apply(Inventory(), first.to_apply, "rev1")
    entry = ahead.get("work_pool", "k8s", "image")
    assert (entry.applied, entry.previous, entry.had_previous) == (False, "flows:0", True)

    # killed after the server took the write, before finish_apply: the next reconcile sees it in sync
    second = plan(desired("flows:1"), actual("flows:1"), ahead, "correct")
    assert second.changes == [] and second.noops[0].reason == "in-sync"
    done = finish_apply(ahead, second, [], "rev1")
    entry = done.get("work_pool", "k8s", "image")
    assert (entry.applied, entry.previous) == (True, "flows:0")

    # and removing the key from Git restores the value from before prefect-gitops
    third = plan(desired(None), actual("flows:1"), done, "correct")
    assert [(c.action, c.new, c.removed_from_git) for c in third.changes] == [("set", "flows:0", True)]
    assert finish_apply(done, third, third.to_apply, "rev2").count() == 0


def test_a_killed_runs_landed_write_is_handed_to_the_next_runs_history():
    done = finish_apply(Inventory(), plan(desired("flows:1"), actual("flows:1"), Inventory(), "correct"), [], "rev1")
    change = plan(desired("flows:2"), actual("flows:1"), done, "correct").to_apply
    ahead = begin_apply(done, change, "rev2")
    # killed after the server took flows:2, before the record: the next run finds it in sync
    found = completed_writes(ahead, plan(desired("flows:2"), actual("flows:2"), ahead, "correct"))
    assert [(c.target, c.old, c.old_present, c.new) for c in found] == [("k8s", "flows:1", True, "flows:2")]
    # killed between its history write and its state write: the history names it already
    assert completed_writes(ahead, plan(desired("flows:2"), actual("flows:2"), ahead, "correct"), change) == []
    # killed before the write reached the server: a change to make, not one made
    assert completed_writes(ahead, plan(desired("flows:2"), actual("flows:1"), ahead, "correct")) == []


def test_failed_write_is_not_recorded_as_applied():
    first = plan(desired("flows:1"), actual("flows:0"), Inventory(), "correct")
    ahead = begin_apply(Inventory(), first.to_apply, "rev1")
    after_failure = finish_apply(ahead, first, [], "rev1")
    assert after_failure.get("work_pool", "k8s", "image").applied is False
    retry = plan(desired("flows:1"), actual("flows:0"), after_failure, "correct")
    assert retry.changes[0].reason == "desired"  # not mistaken for drift


def test_state_round_trips_and_history_is_capped():
    state = EnvironmentState(environment="prod")
    now = utcnow()
    for i in range(60):
        state.add_history(HistoryEntry(revision=f"{i:040d}", outcome="applied", started_at=now, finished_at=now))
    assert len(state.history) == 50 and state.history[0].revision == f"{59:040d}"
    assert EnvironmentState.model_validate(state.model_dump(mode="json")) == state
    assert state.drift_check_due(now)


def test_a_drift_check_asks_the_event_log_only_after_a_check_that_ended_in_sync():
    import datetime as dt

    from prefect_gitops.state import Condition, ManagedKey, RolledBack, Suspension

    now = utcnow()

    def state(**fields) -> EnvironmentState:
        base = dict(environment="qa", last_applied_revision="a" * 40, condition=Condition(ready=True, reason="InSync"),
                    last_full_read_at=now - dt.timedelta(minutes=5), drift_checked_until=now - dt.timedelta(minutes=5))
        return EnvironmentState(**{**base, **fields})

    assert state().may_check_by_events("a" * 40, now, 3600) is None
    unfinished = Inventory()
    unfinished.put("deployment", "f/d", "image", ManagedKey(value="x", applied=False, had_previous=False))
    for why, s, interval in [
        ("drift.full_read_interval_seconds is 0", state(), 0),
        ("the revision is not the one applied", state(last_applied_revision="b" * 40), 3600),
        ("the environment is rolled back or suspended", state(rolled_back=RolledBack(
            from_revision="a" * 40, to_revision=None, reason="manual")), 3600),
        ("the environment is rolled back or suspended", state(suspended=Suspension()), 3600),
        ("the last check did not end in sync", state(condition=Condition(ready=False, reason="DriftWarned")), 3600),
        ("the last check did not end in sync", state(condition=None), 3600),
        ("a write is unfinished", state(inventory=unfinished), 3600),
        ("no full read is recorded", state(last_full_read_at=None), 3600),
        ("a full read is due", state(last_full_read_at=now - dt.timedelta(hours=1)), 3600),
    ]:
        assert s.may_check_by_events("a" * 40, now, interval) == why


def _entry(revision: str, outcome: str, old: str | None, new: str) -> HistoryEntry:
    now = utcnow()
    return HistoryEntry(revision=revision * 40, outcome=outcome, started_at=now, finished_at=now, changes=[
        Change(target_type="work_pool", target="k8s", key="image", action="set", old=old, old_present=old is not None,
               new=new, reason="desired")])


def test_rollback_chooses_from_the_index_and_undoes_only_the_entries_newer_than_its_target():
    state = EnvironmentState(environment="prod", last_applied_revision="c" * 40)
    state.inventory = begin_apply(Inventory(), [], "c" * 40)
    state.inventory.put("work_pool", "k8s", "image", ManagedKey(value="flows:3", applied=True, had_previous=False))
    history = [_entry("a", "applied", None, "flows:1"), _entry("b", "applied", "flows:1", "flows:2"),
               _entry("b", "failed", "flows:2", "flows:2"), _entry("c", "applied", "flows:2", "flows:3")]
    for entry in history:
        state.add_history(entry)
    state.history = []  # as read without the history: the index alone chooses
    # the index, newest first: c applied, b failed, b applied, a applied
    cases = [(dict(to_revision=None, steps=1), 2, "flows:2"), (dict(to_revision=None, steps=2), 3, "flows:1"),
             (dict(to_revision="a" * 7, steps=None), 3, "flows:1"), (dict(to_revision="b" * 12, steps=None), 2, "flows:2")]
    for ask, index, image in cases:
        assert find_rollback_target(state, **ask) == index, ask
        newer = list(reversed(history))[:index]  # what the adapter reads: the entries before it in the index
        assert values_at(state, newer)["work_pool"]["k8s"]["image"] == image, ask
    with pytest.raises(ValueError, match="only 2 earlier applied revision"):
        find_rollback_target(state, None, 3)
