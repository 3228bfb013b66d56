"""Where an environment's recorded state lives: Prefect blocks per environment.

- `gitops-<env>` (GitOps Environment State): revisions, condition, suspension, the inventory and the
  history index (one summary per stored entry, without its changes), as one packed JSON string, plus a
  few plain fields for the UI. Read and written by every reconcile.
- `gitops-<env>-h<seq>` (GitOps History Entry), one document per history entry: what an apply, rollback
  or failed apply wrote. Written once, when the entry is added; read only by those who need it
  (rollback reads the entries newer than the one it goes back to, status the newest); deleted when the
  entry falls off the index (HISTORY_LIMIT).

So a write costs what changed, not the history: an apply writes its own entry and the state, and a
full history adds one delete. (The history used to be one JSON string rewritten by every apply:
6.4 MB at 1,000 deployments, bench/findings.md.)

Why packed JSON strings: the server flattens and unflattens every nested leaf of a block's data on each
write (secret obfuscation); with thousands of managed keys that costs ~0.7 s per write, against ~0.1 s
for the same bytes as one string (bench/findings.md). And the server's cost grows with the bytes: the
state of 10,000 deployments is 5.3 MB of JSON, 0.5-0.8 s per write and 0.3-0.6 s per read, against 0.2 MB
and 0.03 s zlib-compressed (the inventory repeats the same images and keys; compressing takes 0.06 s).
`prefect-gitops status -o json` shows the record unpacked; `unpacked()` unpacks a document.

Crash order, per write: (1) the new entries' documents, (2) the state that indexes them, (3) the deletes
of entries that fell off the index (listed in the state by document id, `history_pruning`, and deleted again,
harmlessly, by the next write).
- Killed after (1): an entry is stored but not indexed, at the next sequence number. Whoever next adds an
  entry or reads the history finds it there (one read by name) and indexes it: it is never lost, and its
  writes are never recorded twice (the next run finds those keys in sync: record.py).
- Killed after (2): the next write deletes them.

Earlier formats are read, and moved to this one by the first write: the state as plain JSON
(`state_json`) and the history as one `history_json` string in a GitOps Environment History document
(0.2), and the whole state with its history as one nested dict (0.1). Their entries are loaded with the
state and stored as new entries.
"""

from __future__ import annotations

import asyncio
import base64
import json
import zlib
from dataclasses import dataclass
from collections.abc import Coroutine
from typing import Any
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import BlockDocumentCreate, BlockDocumentUpdate
from prefect.client.schemas.objects import BlockDocument
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import Field, TypeAdapter

from prefect_gitops.errors import PermanentError
from prefect_gitops.state import HISTORY_LIMIT, EnvironmentState, HistoryEntry, HistorySummary

STATE_BLOCK_TYPE = "gitops-environment-state"
ENTRY_BLOCK_TYPE = "gitops-history-entry"
LEGACY_HISTORY_BLOCK_TYPE = "gitops-environment-history"  # 0.2: the whole history in one document
_HISTORY = TypeAdapter(list[HistoryEntry])
_READS_IN_FLIGHT = 8


def state_block_name(environment: str) -> str:
    return f"gitops-{environment}"


def entry_block_name(environment: str, seq: int) -> str:
    return f"gitops-{environment}-h{seq:06d}"


class GitOpsEnvironmentState(Block):
    """The recorded state of one environment; written by prefect-gitops, read by `prefect-gitops status`."""

    _block_type_name = "GitOps Environment State"
    _block_type_slug = STATE_BLOCK_TYPE
    _description = ("What prefect-gitops last attempted and applied for one environment: revisions, "
                    "condition, the inventory of managed keys with their previous values, and the index of "
                    "its history. Written by prefect-gitops; do not edit by hand.")

    environment: str = Field(default="", description="The environment.")
    last_applied_revision: str | None = Field(default=None, description="The Git revision applied last.")
    last_attempted_revision: str | None = Field(default=None, description="The Git revision attempted last.")
    condition: str | None = Field(default=None, description="Ready or not, with the reason and message.")
    state_packed: str = Field(default="", description=(
        "The whole recorded state (without the history's entries) as JSON, zlib-compressed and base64-encoded "
        "(`prefect-gitops status --env ENV --output json` shows it)."))
    history_pruning: list[str] = Field(default_factory=list, description=(
        "The block document ids of history entries that fell off the index, being deleted."))


class GitOpsHistoryEntry(Block):
    """One entry of an environment's history: what one apply, rollback or failed apply wrote."""

    _block_type_name = "GitOps History Entry"
    _block_type_slug = ENTRY_BLOCK_TYPE
    _description = (f"One of the last {HISTORY_LIMIT} applies, rollbacks and failed applies of an environment, "
                    "with every change written. Written by prefect-gitops; do not edit by hand.")

    environment: str = Field(default="", description="The environment.")
    seq: int = Field(default=0, description="Its number in the environment's history.")
    revision: str = Field(default="", description="The Git revision.")
    outcome: str = Field(default="", description="applied, partial, failed, rolled-back or rollback.")
    entry_packed: str = Field(default="", description=(
        "The whole entry as JSON, zlib-compressed and base64-encoded (`prefect-gitops status --entries N "
        "--output json` shows the newest N)."))


@dataclass
class StateHandle:
    """What a write needs to know about what was read."""

    state_document: BlockDocument | None
    legacy_document: BlockDocument | None = None  # a 0.2 history document, deleted once moved
    entry_type_registered: bool = False


async def _read_document(client: PrefectClient, name: str, slug: str) -> BlockDocument | None:
    try:
        return await client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        return None


async def read_state(client: PrefectClient, environment: str, history: bool = True
                     ) -> tuple[EnvironmentState, StateHandle | None]:
    """The recorded state with its index, with every stored entry too if `history`, and a handle to
    write it back (None if the environment was never recorded)."""
    name = state_block_name(environment)
    document = await _read_document(client, name, STATE_BLOCK_TYPE)
    if document is None:
        return EnvironmentState(environment=environment), None
    data = document.data or {}
    handle = StateHandle(document)
    if "state_packed" in data:
        state = EnvironmentState.model_validate_json(unpack(data["state_packed"]))
        state.environment = environment
        if history:
            state.history = await read_history(client, state, len(state.history_index) + 1)
        return state, handle
    if "state_json" not in data:  # 0.1: everything, history included, as one nested dict
        state = EnvironmentState.model_validate({**(data.get("state") or {}), "environment": environment})
        _index_loaded_legacy(state)
        return state, handle
    # 0.2: the state as plain JSON, the history in a document of its own
    state = EnvironmentState.model_validate_json(data["state_json"]).model_copy(update={"environment": environment})
    handle.legacy_document = await _read_document(client, name, LEGACY_HISTORY_BLOCK_TYPE)
    if handle.legacy_document is not None:
        state.history = _HISTORY.validate_json((handle.legacy_document.data or {}).get("history_json") or "[]")
    _index_loaded_legacy(state)
    return state, handle


def pack(text: str) -> str:
    return base64.b64encode(zlib.compress(text.encode(), 6)).decode("ascii")


def unpack(packed: str) -> str:
    return zlib.decompress(base64.b64decode(packed)).decode() if packed else "{}"


def unpacked(document: BlockDocument) -> dict[str, Any]:
    """A record document's data with its packed JSON unpacked (`state_packed` -> `state`, `entry_packed` -> `entry`)."""
    data = dict(document.data or {})
    for field, name in (("state_packed", "state"), ("entry_packed", "entry")):
        if field in data:
            data[name] = json.loads(unpack(data.pop(field)))
    return data


def _index_loaded_legacy(state: EnvironmentState) -> None:
    """An earlier format's entries, loaded whole: unstored (seq None) until the first write stores them."""
    for entry in state.history:
        entry.seq = None
    state.history_index = [HistorySummary.of(h) for h in state.history]


async def read_history(client: PrefectClient, state: EnvironmentState, count: int) -> list[HistoryEntry]:
    """The newest `count` entries of the history, whole, newest first. An entry a killed run stored
    without indexing it is indexed now (in `state`; stored with the state's next write)."""
    await _index_unindexed(client, state)
    loaded = {h.seq: h for h in state.history if h.seq is not None}
    wanted = [s.seq for s in state.history_index[:count] if s.seq is not None and s.seq not in loaded]
    limiter = asyncio.Semaphore(_READS_IN_FLIGHT)

    async def read(seq: int) -> HistoryEntry | None:
        async with limiter:
            document = await _read_document(client, entry_block_name(state.environment, seq), ENTRY_BLOCK_TYPE)
        return None if document is None else _entry_of(document)

    for entry in await asyncio.gather(*(read(seq) for seq in wanted)):
        if entry is not None and entry.seq is not None:
            loaded[entry.seq] = entry
    out = []
    for summary in state.history_index[:count]:
        found = loaded.get(summary.seq) if summary.seq is not None else _unstored(state, summary)
        if found is None:
            raise PermanentError(
                f"the history entry {entry_block_name(state.environment, summary.seq or 0)} of "
                f"{state.environment!r} ({summary.revision[:12]}, {summary.outcome}) is indexed but its "
                f"{ENTRY_BLOCK_TYPE} block document is missing (deleted by hand?)")
        out.append(found)
    return out


def _unstored(state: EnvironmentState, summary: HistorySummary) -> HistoryEntry | None:
    return next((h for h in state.history if h.seq is None and HistorySummary.of(h) == summary), None)


def _entry_of(document: BlockDocument) -> HistoryEntry:
    entry = HistoryEntry.model_validate_json(unpack((document.data or {}).get("entry_packed") or ""))
    entry.seq = int((document.data or {}).get("seq") or 0)
    return entry


def _same_entry(a: HistoryEntry, b: HistoryEntry) -> bool:
    return (a.revision, a.outcome, a.started_at, a.finished_at, a.flow_run_id) == (
        b.revision, b.outcome, b.started_at, b.finished_at, b.flow_run_id)


async def _index_unindexed(client: PrefectClient, state: EnvironmentState) -> int:
    """Index the entries stored after the newest indexed one (by a run killed before its state write,
    or by this run's write whose answer was lost); returns the next free sequence number."""
    seq = max((s.seq for s in state.history_index if s.seq is not None), default=0) + 1
    while (document := await _read_document(client, entry_block_name(state.environment, seq),
                                            ENTRY_BLOCK_TYPE)) is not None:
        stored = _entry_of(document)
        mine = next((h for h in state.history if h.seq is None and _same_entry(h, stored)), None)
        if mine is not None:
            mine.seq = seq
            _renumber(state, mine, str(document.id))
        else:  # older than every entry not yet stored: it goes after them
            unstored = sum(1 for s in state.history_index if s.seq is None)
            state.history_index.insert(unstored, HistorySummary.of(stored).model_copy(
                update={"document": str(document.id)}))
            state.history.insert(sum(1 for h in state.history if h.seq is None), stored)
        seq += 1
    return seq


def _renumber(state: EnvironmentState, entry: HistoryEntry, document: str) -> None:
    """The index's summary of a newly stored entry gets its number and document."""
    for i, summary in enumerate(state.history_index):
        if summary.seq is None and summary == HistorySummary.of(entry.model_copy(update={"seq": None})):
            state.history_index[i] = HistorySummary.of(entry).model_copy(update={"document": document})
            return


async def write_state(client: PrefectClient, state: EnvironmentState, handle: StateHandle | None) -> StateHandle:
    handle = handle or StateHandle(None)
    left = (handle.state_document.data or {}).get("history_pruning") or [] if handle.state_document else []
    # independent of each other: what the previous write pruned off the cap, and the new entries
    await _together(_delete_documents(client, left), _store_new_entries(client, state, handle))
    pruning = await _document_ids(client, state.environment, state.history_index[HISTORY_LIMIT:])
    del state.history_index[HISTORY_LIMIT:]
    condition = state.condition
    handle.state_document = await _save(client, state_block_name(state.environment), handle.state_document,
                                        GitOpsEnvironmentState(
        environment=state.environment, last_applied_revision=state.last_applied_revision,
        last_attempted_revision=state.last_attempted_revision,
        condition=f"{'Ready' if condition.ready else 'NotReady'} {condition.reason}: {condition.message}"[:500]
        if condition else None,
        state_packed=pack(state.model_dump_json(exclude={"history"})), history_pruning=pruning))
    # the pruned entries are deleted by the next write (every reconcile writes the state), alongside its own
    # entry: not after this one, which an apply waits for. Listed first, so a crash cannot lose track of them.
    if handle.legacy_document is not None:  # moved: the 0.2 history document goes
        await _delete_document(client, handle.legacy_document.id)
        handle.legacy_document = None
    return handle


async def _store_new_entries(client: PrefectClient, state: EnvironmentState, handle: StateHandle) -> None:
    """Store every entry not stored yet (added by this run, or loaded from an earlier format), oldest first."""
    if not any(h.seq is None for h in state.history):
        return
    seq, _ = await _together(_index_unindexed(client, state), _register_entry_type(client, handle))
    for entry in reversed([h for h in state.history if h.seq is None]):
        document = await _create_entry(client, handle, state.environment, entry.model_copy(update={"seq": seq}))
        entry.seq = seq
        _renumber(state, entry, document)
        seq += 1


async def _together(*steps: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run independent steps at once; the first failure is raised as itself (retrying() and api_errors()
    tell transient from permanent by the exception's type), the other steps cancelled."""
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(step) for step in steps]
    except ExceptionGroup as failed:
        raise failed.exceptions[0]  # noqa: B904  (the group's traceback is in its __context__)
    return [task.result() for task in tasks]


async def _register_entry_type(client: PrefectClient, handle: StateHandle) -> None:
    if not handle.entry_type_registered:
        await register_block_type(client, GitOpsHistoryEntry())
        handle.entry_type_registered = True


async def _create_entry(client: PrefectClient, handle: StateHandle, environment: str, entry: HistoryEntry) -> str:
    """Store the entry; its document's id."""
    assert entry.seq is not None
    block = GitOpsHistoryEntry(environment=environment, seq=entry.seq, revision=entry.revision,
                               outcome=entry.outcome, entry_packed=pack(entry.model_dump_json(exclude={"seq"})))
    name = entry_block_name(environment, entry.seq)
    create = BlockDocumentCreate(name=name, data=block.model_dump(mode="json", exclude={"block_type_slug"}),
                                 block_schema_id=GitOpsHistoryEntry._block_schema_id,
                                 block_type_id=GitOpsHistoryEntry._block_type_id)
    try:
        return str((await client.create_block_document(create)).id)
    except ObjectAlreadyExists:  # this write, retried after its answer was lost: the same entry again
        existing = await client.read_block_document_by_name(name=name, block_type_slug=ENTRY_BLOCK_TYPE)
        await client.update_block_document(existing.id, BlockDocumentUpdate(
            block_schema_id=GitOpsHistoryEntry._block_schema_id, data=create.data, merge_existing_data=False))
        return str(existing.id)


async def _document_ids(client: PrefectClient, environment: str, summaries: list[HistorySummary]) -> list[str]:
    """The documents of stored entries (read by name for a summary that does not carry its id)."""
    ids = []
    for s in summaries:
        if s.document is not None:
            ids.append(s.document)
        elif s.seq is not None and (found := await _read_document(
                client, entry_block_name(environment, s.seq), ENTRY_BLOCK_TYPE)) is not None:
            ids.append(str(found.id))
    return ids


async def _delete_documents(client: PrefectClient, ids: list[str]) -> None:
    for document_id in ids:
        await _delete_document(client, UUID(document_id))


async def _delete_document(client: PrefectClient, document_id: UUID) -> None:
    try:
        await client.delete_block_document(document_id)
    except ObjectNotFound:
        pass  # deleted already (a retried write, or a run before this one)


async def record_documents(client: PrefectClient, environment: str) -> list[BlockDocument]:
    """Every block document of an environment's record: its state, its history entries (indexed, stored
    but not indexed, or being deleted) and an earlier format's history document."""
    state, handle = await read_state(client, environment, history=False)
    if handle is None or handle.state_document is None:
        return []
    await _index_unindexed(client, state)
    entries = [await _read_document(client, entry_block_name(environment, s.seq), ENTRY_BLOCK_TYPE)
               for s in state.history_index if s.seq is not None]
    for document_id in (handle.state_document.data or {}).get("history_pruning") or []:
        try:
            entries.append(await client.read_block_document(UUID(document_id)))
        except ObjectNotFound:
            pass
    return [d for d in [handle.state_document, handle.legacy_document, *entries] if d is not None]


async def delete_record(client: PrefectClient, environment: str) -> None:
    """Delete an environment's whole record (as an operator retiring the environment would)."""
    for document in await record_documents(client, environment):
        await _delete_document(client, document.id)


async def _save(client: PrefectClient, name: str, document: BlockDocument | None, block: Block) -> BlockDocument:
    """Replace the document's data (with this block's schema, which also moves a document in an
    older format to this one), or create it on the first write."""
    if document is None:
        await register_block_type(client, block)
        await block.asave(name, overwrite=True, client=client)
        return await client.read_block_document_by_name(name=name, block_type_slug=block.get_block_type_slug())
    data = block.model_dump(mode="json", exclude={"block_type_slug"})
    schema_id: UUID | None = document.block_schema_id
    if set(document.data or {}) != set(data):
        await register_block_type(client, block)
        schema_id = block._block_schema_id
    await client.update_block_document(document.id, BlockDocumentUpdate(
        block_schema_id=schema_id, data=data, merge_existing_data=False))
    return document.model_copy(update={"block_schema_id": schema_id, "data": data})


async def register_block_type(client: PrefectClient, block: Block) -> None:
    """Register the block's type and schema. On a new server, the first writes of two environments
    race to create them: the loser's second attempt finds them."""
    try:
        await block.register_type_and_schema(client=client)
    except ObjectAlreadyExists:
        await block.register_type_and_schema(client=client)
