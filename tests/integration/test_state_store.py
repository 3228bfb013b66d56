"""The recorded state as stored on a real server: two blocks, history written only when it grows."""

from __future__ import annotations

import datetime as dt
import json

from helpers import _with_client, run, uid
from prefect.exceptions import ObjectNotFound

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.adapters.state_store import HISTORY_BLOCK_TYPE, STATE_BLOCK_TYPE, state_block_name
from prefect_gitops.state import Condition, EnvironmentState, HistoryEntry, ManagedKey

NOW = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def entry(revision: str) -> HistoryEntry:
    return HistoryEntry(revision=revision, outcome="applied", started_at=NOW, finished_at=NOW)


def documents(env: str) -> dict:
    async def go(client):
        out = {}
        for slug in (STATE_BLOCK_TYPE, HISTORY_BLOCK_TYPE):
            try:
                doc = await client.read_block_document_by_name(name=state_block_name(env), block_type_slug=slug)
                out[slug] = (doc.updated, doc.data)
            except ObjectNotFound:
                out[slug] = None
        return out
    return run(_with_client(go))


def call(method: str, *args, **kwargs):
    async def go(client):
        return await getattr(PrefectAPI(client), method)(*args, **kwargs)
    return run(_with_client(go))


def test_a_write_without_new_history_leaves_the_history_document_alone():
    env = f"store-{uid()}"
    state = EnvironmentState(environment=env, last_applied_revision="a" * 40)
    state.inventory.put("deployment", "etl/daily", "image",
                        ManagedKey(value="flows:1", applied=True, had_previous=False))
    state.add_history(entry("a" * 40))
    call("write_state", state, None)
    before = documents(env)
    assert json.loads(before[HISTORY_BLOCK_TYPE][1]["history_json"])[0]["revision"] == "a" * 40
    assert "history" not in json.loads(before[STATE_BLOCK_TYPE][1]["state_json"])
    assert before[STATE_BLOCK_TYPE][1]["last_applied_revision"] == "a" * 40

    # a no-op reconcile: reads without history, records a condition
    light, handle = call("read_state", env, history=False)
    assert light.history == [] and light.inventory.get("deployment", "etl/daily", "image").value == "flows:1"
    light.condition = Condition(ready=True, reason="InSync")
    call("write_state", light, handle)
    after = documents(env)
    assert after[HISTORY_BLOCK_TYPE] == before[HISTORY_BLOCK_TYPE]
    assert after[STATE_BLOCK_TYPE][1]["condition"].startswith("Ready InSync")

    full, _ = call("read_state", env)
    assert [h.revision for h in full.history] == ["a" * 40]
    assert full.condition.reason == "InSync"


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


def test_a_state_in_the_first_format_is_read_and_rewritten_in_the_current_one():
    env = f"store-{uid()}"
    legacy = EnvironmentState(environment=env, last_applied_revision="b" * 40)
    legacy.add_history(entry("b" * 40))

    async def save_legacy(client):  # the first format: one nested dict under "state"
        from prefect.client.schemas.actions import BlockDocumentCreate

        from prefect_gitops.adapters.state_store import GitOpsEnvironmentState

        await GitOpsEnvironmentState.register_type_and_schema(client=client)
        await client.create_block_document(BlockDocumentCreate(
            name=state_block_name(env), data={"state": legacy.model_dump(mode="json")},
            block_schema_id=GitOpsEnvironmentState._block_schema_id,
            block_type_id=GitOpsEnvironmentState._block_type_id))
    run(_with_client(save_legacy))

    state, handle = call("read_state", env, history=False)
    assert state.last_applied_revision == "b" * 40 and [h.revision for h in state.history] == ["b" * 40]
    state.add_history(entry("c" * 40))
    call("write_state", state, handle)
    stored = documents(env)
    assert "state_json" in stored[STATE_BLOCK_TYPE][1] and "state" not in stored[STATE_BLOCK_TYPE][1]
    full, _ = call("read_state", env)
    assert [h.revision[0] for h in full.history] == ["c", "b"]
