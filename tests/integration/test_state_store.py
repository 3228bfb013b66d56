"""The recorded state as stored on a real server: a state block with the history's index, one block
document per history entry, written when the entry is added and deleted when it falls off the cap."""

from __future__ import annotations

import datetime as dt

from helpers import _with_client, run, uid

from prefect_gitops.adapters import state_store
from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.adapters.state_store import (ENTRY_BLOCK_TYPE, LEGACY_HISTORY_BLOCK_TYPE, entry_block_name,
                                                 record_documents, state_block_name, unpacked)
from prefect_gitops.plan import Change
from prefect_gitops.state import HISTORY_LIMIT, Condition, EnvironmentState, HistoryEntry, ManagedKey

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def entry(revision: str, minute: int = 0) -> HistoryEntry:
    at = NOW + dt.timedelta(minutes=minute)
    return HistoryEntry(revision=revision, outcome="applied", started_at=at, finished_at=at, changes=[
        Change(target_type="deployment", target="etl/daily", key="image", action="set", old=None,
               old_present=False, new=f"flows:{revision[:4]}", reason="desired")])


def documents(env: str) -> dict:
    """The record's documents by name: (updated, data with the packed JSON unpacked)."""
    found = run(_with_client(lambda client: record_documents(client, env)))
    return {d.name: (d.updated, unpacked(d)) for d in found}


def call(method: str, *args, **kwargs):
    async def go(client):
        return await getattr(PrefectAPI(client), method)(*args, **kwargs)
    return run(_with_client(go))


def store(function, *args):
    return run(_with_client(lambda client: function(client, *args)))


def test_a_write_without_new_history_leaves_the_entries_alone():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env, last_applied_revision="a" * 40)
    state.inventory.put("deployment", "etl/daily", "image",
                        ManagedKey(value="flows:1", applied=True, had_previous=False))
    state.add_history(entry("a" * 40))
    call("write_state", state, None)
    before = documents(env)
    assert set(before) == {state_block_name(env), entry_block_name(env, 1)}
    stored = before[entry_block_name(env, 1)][1]["entry"]
    assert stored["revision"] == "a" * 40 and stored["changes"][0]["new"] == "flows:aaaa"
    recorded = before[state_block_name(env)][1]["state"]
    assert "history" not in recorded and [h["seq"] for h in recorded["history_index"]] == [1]
    assert before[state_block_name(env)][1]["last_applied_revision"] == "a" * 40

    # a no-op reconcile: reads without history, records a condition
    light, handle = call("read_state", env, history=False)
    assert light.history == [] and [h.revision for h in light.history_index] == ["a" * 40]
    assert light.inventory.get("deployment", "etl/daily", "image").value == "flows:1"
    light.condition = Condition(ready=True, reason="InSync")
    call("write_state", light, handle)
    after = documents(env)
    assert after[entry_block_name(env, 1)] == before[entry_block_name(env, 1)]
    assert after[state_block_name(env)][1]["condition"].startswith("Ready InSync")

    full, _ = call("read_state", env)
    assert [h.revision for h in full.history] == ["a" * 40] and full.history[0].changes[0].new == "flows:aaaa"
    assert full.condition.reason == "InSync"


def test_an_entry_is_written_alone_and_the_cap_deletes_only_the_oldest():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env)
    for i in range(HISTORY_LIMIT):
        state.add_history(entry(f"{i:040d}", i))
    handle = call("write_state", state, None)
    before = documents(env)
    assert len(before) == HISTORY_LIMIT + 1
    [oldest_id] = [str(d.id) for d in run(_with_client(lambda client: record_documents(client, env)))
                   if d.name == entry_block_name(env, 1)]

    light, handle = call("read_state", env, history=False)
    light.add_history(entry("f" * 40, 99))
    call("write_state", light, handle)
    after = documents(env)
    newest, oldest = entry_block_name(env, HISTORY_LIMIT + 1), entry_block_name(env, 1)
    assert newest in after
    unchanged = set(before) - {state_block_name(env)}
    assert {n: after[n] for n in unchanged} == {n: before[n] for n in unchanged}  # not rewritten
    # the oldest fell off the index; its document is listed for deletion and goes with the next write
    assert [s.seq for s in call("read_state", env, history=False)[0].history_index][-1] == 2
    assert after[state_block_name(env)][1]["history_pruning"] == [oldest_id]
    again, handle = call("read_state", env, history=False)
    call("write_state", again, handle)
    gone = documents(env)
    assert oldest not in gone and len(gone) == HISTORY_LIMIT + 1
    assert gone[state_block_name(env)][1]["history_pruning"] == []

    full, _ = call("read_state", env)
    assert [h.revision for h in full.history] == ["f" * 40] + [f"{i:040d}" for i in range(HISTORY_LIMIT - 1, 0, -1)]
    assert [h.seq for h in full.history_index] == list(range(HISTORY_LIMIT + 1, 1, -1))
    assert [h.revision for h in call("read_history", full, 2)] == ["f" * 40, f"{HISTORY_LIMIT - 1:040d}"]


def test_entries_added_without_reading_the_history_go_in_front_of_it():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env)
    for revision in ("1", "2"):
        state.add_history(entry(revision * 40))
    call("write_state", state, None)

    light, handle = call("read_state", env, history=False)
    light.add_history(entry("3" * 40))
    handle = call("write_state", light, handle)
    light.add_history(entry("4" * 40))  # a second record in the same run (e.g. after a rollback)
    call("write_state", light, handle)

    full, _ = call("read_state", env)
    assert [h.revision[0] for h in full.history] == ["4", "3", "2", "1"]
    assert [h.seq for h in full.history] == [4, 3, 2, 1]


def test_an_entry_stored_by_a_run_killed_before_its_state_write_is_indexed_not_lost_or_doubled():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env)
    state.add_history(entry("1" * 40))
    call("write_state", state, None)

    killed, handle = call("read_state", env, history=False)
    killed.add_history(entry("2" * 40, 1))
    store(state_store._store_new_entries, killed, handle)  # the entry landed, then the run was killed
    assert call("read_state", env, history=False)[0].history_index[0].revision == "1" * 40

    # the next run finds it whether it reads the history or adds an entry of its own
    full, _ = call("read_state", env)
    assert [(h.revision[0], h.seq) for h in full.history] == [("2", 2), ("1", 1)]
    light, handle = call("read_state", env, history=False)
    light.add_history(entry("3" * 40, 2))
    call("write_state", light, handle)
    stored, _ = call("read_state", env)
    assert [(h.revision[0], h.seq) for h in stored.history] == [("3", 3), ("2", 2), ("1", 1)]

    # a write retried after its entry landed but its answer was lost stores the entry once
    retried, handle = call("read_state", env, history=False)
    retried.add_history(entry("4" * 40, 3))
    lost = retried.model_copy(deep=True)
    store(state_store._store_new_entries, lost, handle)
    call("write_state", retried, handle)
    assert [(h.revision[0], h.seq) for h in call("read_state", env)[0].history][:2] == [("4", 4), ("3", 3)]


def test_a_state_in_the_first_format_is_read_and_rewritten_in_the_current_one():
    env = f"store-{uid()}"
    legacy = EnvironmentState(environment=env, last_applied_revision="b" * 40)
    legacy.history.insert(0, entry("b" * 40))

    async def save_legacy(client):  # the first format: one nested dict under "state"
        from prefect.client.schemas.actions import BlockDocumentCreate

        from prefect_gitops.adapters.state_store import GitOpsEnvironmentState

        await GitOpsEnvironmentState.register_type_and_schema(client=client)
        data = legacy.model_dump(mode="json", exclude={"history_index"})
        await client.create_block_document(BlockDocumentCreate(
            name=state_block_name(env), data={"state": data},
            block_schema_id=GitOpsEnvironmentState._block_schema_id,
            block_type_id=GitOpsEnvironmentState._block_type_id))
    run(_with_client(save_legacy))

    state, handle = call("read_state", env, history=False)
    assert state.last_applied_revision == "b" * 40 and [h.revision for h in state.history_index] == ["b" * 40]
    state.add_history(entry("c" * 40, 1))
    call("write_state", state, handle)
    stored = documents(env)
    assert stored[state_block_name(env)][1]["state"]["last_applied_revision"] == "b" * 40  # packed: unpacked here
    assert set(stored) == {state_block_name(env), entry_block_name(env, 1), entry_block_name(env, 2)}
    full, _ = call("read_state", env)
    assert [(h.revision[0], h.seq) for h in full.history] == [("c", 2), ("b", 1)]


def test_a_history_in_the_second_format_is_moved_to_one_document_per_entry():
    """0.2 kept the whole history as one JSON string in a GitOps Environment History document."""
    env = f"store-{uid()}"
    entries = [entry(f"{i:040d}", i) for i in (3, 2, 1)]  # newest first

    async def save_v2(client):
        from prefect.blocks.core import Block
        from pydantic import Field

        class GitOpsEnvironmentHistory(Block):  # as 0.2 declared it
            _block_type_name = "GitOps Environment History"
            _block_type_slug = LEGACY_HISTORY_BLOCK_TYPE
            environment: str = Field(default="")
            history_json: str = Field(default="[]")

        old_state = EnvironmentState(environment=env, last_applied_revision=entries[0].revision)
        state_json = old_state.model_dump_json(exclude={"history", "history_index"})
        await state_store.GitOpsEnvironmentState.register_type_and_schema(client=client)
        await client.create_block_document(state_store.BlockDocumentCreate(
            name=state_block_name(env), data={"environment": env, "last_applied_revision": entries[0].revision,
                                              "last_attempted_revision": None, "condition": None,
                                              "state_json": state_json},
            block_schema_id=state_store.GitOpsEnvironmentState._block_schema_id,
            block_type_id=state_store.GitOpsEnvironmentState._block_type_id))
        history = "[" + ",".join(e.model_dump_json(exclude={"seq"}) for e in entries) + "]"
        await GitOpsEnvironmentHistory(environment=env, history_json=history).asave(
            state_block_name(env), client=client)
    run(_with_client(save_v2))
    assert any("history_json" in data for _, data in documents(env).values())

    # status and rollback see the history before anything is written
    state, handle = call("read_state", env, history=False)
    assert [h.revision for h in state.history_index] == [e.revision for e in entries]
    # the first write (here a no-op's) moves it: one document per entry, oldest first, and the old one goes
    call("write_state", state, handle)
    stored = documents(env)
    assert set(stored) == {state_block_name(env)} | {entry_block_name(env, seq) for seq in (1, 2, 3)}
    assert "state_json" not in stored[state_block_name(env)][1]
    full, _ = call("read_state", env)
    assert [(h.revision, h.seq) for h in full.history] == [(e.revision, 3 - i) for i, e in enumerate(entries)]
    assert [h.changes for h in full.history] == [e.changes for e in entries]


def test_a_missing_entry_document_is_a_clear_error_not_a_wrong_rollback():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env)
    for i in range(3):
        state.add_history(entry(f"{i:040d}", i))
    call("write_state", state, None)

    async def delete_second(client):
        document = await client.read_block_document_by_name(entry_block_name(env, 2), ENTRY_BLOCK_TYPE)
        await client.delete_block_document(document.id)
    run(_with_client(delete_second))
    light, _ = call("read_state", env, history=False)
    assert [h.revision for h in call("read_history", light, 1)] == [f"{2:040d}"]
    try:
        call("read_history", light, 3)
    except Exception as exc:  # noqa: BLE001
        assert entry_block_name(env, 2) in str(exc) and "missing" in str(exc), exc
    else:
        raise AssertionError("a rollback across a missing entry must not go on")
