"""Rollbacks: by hand (to a recorded revision, from the history) and automatic (a wave whose
post-apply check failed is undone). Either way the environment then holds that revision until Git
moves on or a reconcile is forced.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.errors import PermanentError, RolloutBusy, TransientError
from prefect_gitops.kinds import kind
from prefect_gitops.model import EnvironmentFile
from prefect_gitops.plan import ActualState, Change, Plan, plan
from prefect_gitops.record import record_outcome
from prefect_gitops.result import ReconcileResult
from prefect_gitops.state import (Condition, EnvironmentState, HistoryEntry, Inventory, RolledBack,
                                  find_rollback_target, finish_apply, utcnow, values_at)
from prefect_gitops.status import Reason, Status
from prefect_gitops.steps import Lock
from prefect_gitops.writes import actual_after, apply_changes, remember_targets, reverse, write_changes


@dataclass
class RollbackRequest:
    environment: str
    to_revision: str | None = None
    steps: int | None = None
    concurrency: int = 4
    flow_run_id: str | None = None
    lock_timeout_seconds: float = 300


async def rollback(request: RollbackRequest, api: PrefectAPI, lock: Lock | None = None) -> ReconcileResult:
    """Restore the job variables as they were applied at an earlier revision, from the history."""
    result = ReconcileResult(environment=request.environment, flow_run_id=request.flow_run_id)
    try:
        if lock is None:
            return await _rollback(request, api, result)
        async with lock(request.environment, request.lock_timeout_seconds):
            return await _rollback(request, api, result)
    except RolloutBusy as exc:
        result.status, result.message = Status.BUSY, str(exc)
        return result


async def _rollback(request: RollbackRequest, api: PrefectAPI, result: ReconcileResult) -> ReconcileResult:
    try:
        now = utcnow()
        state, handle = await api.read_state(request.environment, history=False)
        if handle is None:
            raise PermanentError(f"environment {request.environment!r} has never been reconciled")
        try:
            index = find_rollback_target(state, request.to_revision, request.steps)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        to_revision = state.history_index[index].revision
        result.revision = to_revision
        # only the entries newer than the one to go back to are read: they are what is undone
        desired = _file_at(state, await api.read_history(state, index))
        actual = await api.read_actual(pool_names=set(desired.work_pools) | set(state.inventory.work_pools),
                                       deployment_names=set(desired.deployments) | set(state.inventory.deployments),
                                       queue_pools={n.split("/", 1)[0] for n in state.inventory.work_queues})
        the_plan = plan(desired, actual, state.inventory, "correct")
        result.plan = the_plan
        remember_targets(result, actual)
        if the_plan.problems:
            raise PermanentError("cannot roll back: " + "; ".join(p.message for p in the_plan.problems))
        from_revision = state.rolled_back.from_revision if state.rolled_back else state.last_applied_revision
        state.rolled_back = RolledBack(from_revision=from_revision or "", to_revision=to_revision, reason="manual",
                                       flow_run_id=request.flow_run_id, message=f"rolled back to {to_revision} by hand")
        handle = await apply_changes(api, state, handle, actual, the_plan.to_apply, to_revision,
                                     request.concurrency, result)
        await record_outcome(api, state, handle, the_plan, state.drift_check_interval_seconds, to_revision, result,
                             now, outcome_if_ok="rollback")
        if result.ok:
            result.status = Status.ROLLED_BACK
            result.rolled_back = state.rolled_back
            result.message = (f"rolled back to {to_revision}: {len(result.applied)} change(s) applied; "
                              f"reconciles hold until Git moves past {from_revision[:12] if from_revision else '-'} "
                              f"(or --force)")
    except (TransientError, PermanentError) as exc:
        result.fail(exc)
    return result


def _file_at(state: EnvironmentState, newer: list[HistoryEntry]) -> EnvironmentFile:
    """The managed values as applied before the `newer` history entries, as an environment file to plan against."""
    file: dict[str, Any] = {}
    for kind_name, targets in values_at(state, newer).items():
        for target, values in targets.items():
            kind(kind_name).add_to_file(file, target, values)
    return EnvironmentFile.model_validate(file)


@dataclass
class WaveToUndo:
    """A wave whose post-apply check failed: what it wrote, and the record as it was before it."""

    applied: list[Change]
    inventory_before: Inventory
    failing: list[str]  # "<deployment>: <why>" of each failed check


async def undo_wave(api: PrefectAPI, state: EnvironmentState, handle: Any, actual: ActualState, the_plan: Plan,
                    wave: WaveToUndo, revision: str, concurrency: int, result: ReconcileResult,
                    started: dt.datetime) -> None:
    """The automatic rollback: put back what the wave changed, and hold this revision."""
    undo = await write_changes(api, actual_after(actual, result.applied), [reverse(c) for c in reversed(wave.applied)],
                               concurrency)
    result.reverted = undo.applied
    if undo.failed:  # could not undo everything: keep the inventory honest about what is on the server now
        state.inventory = finish_apply(state.inventory, the_plan, wave.applied, revision)
        result.errors.extend(str(e) for e in undo.errors)
    else:
        state.inventory = wave.inventory_before
    state.rolled_back = RolledBack(from_revision=revision, to_revision=state.last_applied_revision,
                                   reason="automatic", flow_run_id=result.flow_run_id,
                                   message="post-apply check failed: " + "; ".join(wave.failing))
    state.condition = Condition(ready=False, reason=Reason.ROLLED_BACK, message=state.rolled_back.message[:2000])
    earlier = [c for c in result.applied if not any(c is w for w in wave.applied)]
    if earlier:  # earlier waves stay applied: record them as a partial apply of this revision
        state.inventory = finish_apply(state.inventory, Plan(), earlier, revision)
    failures = [str(e) for e in undo.errors]
    state.add_history(HistoryEntry(revision=revision, outcome="rolled-back", started_at=started, finished_at=utcnow(),
                                   flow_run_id=result.flow_run_id, changes=result.applied, reverted=undo.applied,
                                   failures=wave.failing + failures))
    await api.write_state(state, handle)
    result.rolled_back = state.rolled_back
    result.status = Status.FAILED
    result.error_kind = "permanent"
    result.message = (f"post-apply check failed ({'; '.join(wave.failing)}); {len(undo.applied)} change(s) rolled back"
                      + (f", {len(undo.failed)} could not be rolled back: {'; '.join(failures)}" if undo.failed else ""))
