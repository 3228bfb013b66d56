"""Where an environment's recorded state lives: two Prefect blocks per environment.

- `gitops-<env>` (GitOps Environment State): revisions, condition, suspension and the inventory,
  as one JSON string, plus a few plain fields for the UI. Read and written by every reconcile.
- `gitops-<env>` too, of another block type (GitOps Environment History): the last applies, newest
  first, as one JSON string. Written only when an apply, rollback or failure adds an entry; read only
  by those who need it.

Why JSON strings: the server flattens and unflattens every nested leaf of a block's data on each
write (secret obfuscation); with thousands of managed keys that costs ~0.7 s per write, against
~0.1 s for the same bytes as one string (bench/findings.md). Why two blocks: the history is most
of the bytes, and a no-op reconcile has no use for it.

Crash order: the history is written before the state, so a run killed between the two leaves a
history entry for writes that happened and a state that the next reconcile completes (it finds the
keys in sync and adds no second entry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.client.schemas.objects import BlockDocument
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import Field, TypeAdapter

from prefect_gitops.state import HISTORY_LIMIT, EnvironmentState, HistoryEntry

STATE_BLOCK_TYPE = "gitops-environment-state"
HISTORY_BLOCK_TYPE = "gitops-environment-history"
_HISTORY = TypeAdapter(list[HistoryEntry])


def state_block_name(environment: str) -> str:
    return f"gitops-{environment}"


class GitOpsEnvironmentState(Block):
    """The recorded state of one environment; written by prefect-gitops, read by `prefect-gitops status`."""

    _block_type_name = "GitOps Environment State"
    _block_type_slug = STATE_BLOCK_TYPE
    _description = ("What prefect-gitops last attempted and applied for one environment: revisions, "
                    "condition, and the inventory of managed keys with their previous values. "
                    "Written by prefect-gitops; do not edit by hand.")

    environment: str = Field(default="", description="The environment.")
    last_applied_revision: str | None = Field(default=None, description="The Git revision applied last.")
    last_attempted_revision: str | None = Field(default=None, description="The Git revision attempted last.")
    condition: str | None = Field(default=None, description="Ready or not, with the reason and message.")
    state_json: str = Field(default="{}", description="The whole recorded state (without history) as JSON.")


class GitOpsEnvironmentHistory(Block):
    """The apply history of one environment (newest first); read by status, rollback and promotion."""

    _block_type_name = "GitOps Environment History"
    _block_type_slug = HISTORY_BLOCK_TYPE
    _description = (f"The last {HISTORY_LIMIT} applies, rollbacks and failed applies of one environment, "
                    "with every change written. Written by prefect-gitops; do not edit by hand.")

    environment: str = Field(default="", description="The environment.")
    history_json: str = Field(default="[]", description="The history entries as JSON, newest first.")


@dataclass
class StateHandle:
    """What a write needs to know about what was read."""

    state_document: BlockDocument | None
    history_document: BlockDocument | None
    history_loaded: bool
    persisted: set[int] = field(default_factory=set)  # id() of the history entries already stored


async def _read_document(client: PrefectClient, name: str, slug: str) -> BlockDocument | None:
    try:
        return await client.read_block_document_by_name(name=name, block_type_slug=slug)
    except ObjectNotFound:
        return None


async def read_state(client: PrefectClient, environment: str, history: bool = True
                     ) -> tuple[EnvironmentState, StateHandle | None]:
    """The recorded state, with its history only if asked for, and a handle to write it back
    (None if the environment was never recorded)."""
    name = state_block_name(environment)
    document = await _read_document(client, name, STATE_BLOCK_TYPE)
    data = (document.data or {}) if document else {}
    legacy = document is not None and "state_json" not in data
    if document is None:
        state = EnvironmentState(environment=environment)
    elif legacy:  # the first format kept everything, history included, as one nested dict
        state = EnvironmentState.model_validate({**(data.get("state") or {}), "environment": environment})
    else:
        state = EnvironmentState.model_validate_json(data["state_json"]).model_copy(update={"environment": environment})
    history_document = None
    if history and not legacy:
        history_document = await _read_document(client, name, HISTORY_BLOCK_TYPE)
        if history_document is not None:
            state.history = _HISTORY.validate_json((history_document.data or {}).get("history_json") or "[]")
    # a legacy document carries its history inline: it is loaded either way
    handle = StateHandle(document, history_document, history_loaded=history or legacy,
                         persisted={id(h) for h in state.history})
    return state, handle if document is not None else None


async def write_state(client: PrefectClient, state: EnvironmentState, handle: StateHandle | None) -> StateHandle:
    handle = handle or StateHandle(None, None, history_loaded=False)
    name = state_block_name(state.environment)
    new = [h for h in state.history if id(h) not in handle.persisted]
    if handle.history_loaded and (new or len(state.history) != len(handle.persisted)):
        entries = state.history
    elif new:  # the stored history was not read: put the new entries in front of it
        stored = handle.history_document or await _read_document(client, name, HISTORY_BLOCK_TYPE)
        entries = new + (_HISTORY.validate_json(stored.data.get("history_json") or "[]") if stored else [])
    else:
        entries = None
    if entries is not None:
        history_json = _HISTORY.dump_json(entries[:HISTORY_LIMIT]).decode()
        handle.history_document = await _save(client, name, handle.history_document, GitOpsEnvironmentHistory(
            environment=state.environment, history_json=history_json))
        handle.persisted = {id(h) for h in state.history}
    condition = state.condition
    handle.state_document = await _save(client, name, handle.state_document, GitOpsEnvironmentState(
        environment=state.environment, last_applied_revision=state.last_applied_revision,
        last_attempted_revision=state.last_attempted_revision,
        condition=f"{'Ready' if condition.ready else 'NotReady'} {condition.reason}: {condition.message}"[:500]
        if condition else None,
        state_json=state.model_dump_json(exclude={"history"})))
    return handle


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
