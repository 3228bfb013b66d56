"""The record step: what a run leaves in the environment's state (condition, inventory, history).

A revision is recorded as applied only when every change of it was applied and proven; a refused
or failed revision is recorded as attempted, never as applied.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.drift_events import covered_after_full_read
from prefect_gitops.errors import ConfigProblem, GitOpsError
from prefect_gitops.plan import Change, Plan
from prefect_gitops.result import ReconcileResult
from prefect_gitops.state import Condition, EnvironmentState, HistoryEntry, completed_writes, finish_apply, utcnow
from prefect_gitops.status import Reason, Status


async def record_outcome(api: PrefectAPI, state: EnvironmentState, handle: Any, the_plan: Plan, check_interval: int,
                         revision: str, result: ReconcileResult, started: dt.datetime,
                         outcome_if_ok: str = "applied") -> ReconcileResult:
    """Complete the inventory and the history after the writes, and set the run's status."""
    finished = utcnow()
    written = await _completed_writes(api, state, the_plan) + result.applied  # a killed run's writes first
    state.inventory = finish_apply(state.inventory, the_plan, result.applied, revision)
    state.last_drift_check_at = finished
    # every target was read after `started`: the next drift check asks the event log from there
    state.last_full_read_at, state.drift_checked_until = started, covered_after_full_read(started)
    state.drift_check_interval_seconds = check_interval
    if result.failed or result.held:
        return await _record_not_applied(api, state, handle, revision, result, started, finished, written)

    warned = [c for c in the_plan.changes if not c.apply]
    state.last_applied_revision, state.last_applied_at = revision, finished
    state.last_applied_source = state.source  # the repository this revision came from (the history check)
    if written:
        state.add_history(HistoryEntry(
            revision=revision, outcome=outcome_if_ok, started_at=started, finished_at=finished,
            flow_run_id=result.flow_run_id, changes=written))
    reason = Reason.DRIFT_WARNED if warned else (Reason.APPLIED if result.applied else Reason.IN_SYNC)
    if state.rolled_back is not None:
        reason = Reason.ROLLED_BACK
    state.condition = Condition(
        ready=not warned and state.rolled_back is None, reason=reason,
        message=f"{len(result.applied)} change(s) applied at {revision[:12]}"
        + (f"; {len(warned)} drifted value(s) left as they are (drift mode warn)" if warned else ""))
    await api.write_state(state, handle)
    result.status = Status.DRIFT_WARNED if warned else (Status.APPLIED if result.applied else Status.IN_SYNC)
    result.message = state.condition.message
    return result


async def _completed_writes(api: PrefectAPI, state: EnvironmentState, the_plan: Plan) -> list[Change]:
    """A killed run's writes this run found landed, less those its history entry names already (read
    only when there are any: after a kill; an entry that run stored without indexing it is indexed now)."""
    found = completed_writes(state.inventory, the_plan)
    if found:
        newest = await api.read_history(state, 1)
        found = completed_writes(state.inventory, the_plan, newest[0].changes if newest else [])
    return found


async def _record_not_applied(api: PrefectAPI, state: EnvironmentState, handle: Any, revision: str,
                              result: ReconcileResult, started: dt.datetime, finished: dt.datetime,
                              written: list[Change]) -> ReconcileResult:
    reasons = list(result.errors)
    reasons += [f"smoke test failed: {t.describe()}: {r.message}" for t, r in result.failed_smoke_tests]
    state.condition = Condition(ready=False, reason=Reason.APPLY_FAILED if result.failed else Reason.SMOKE_TEST_FAILED,
                                message="; ".join(reasons)[:2000])
    if written or result.failed:
        state.add_history(HistoryEntry(
            revision=revision, outcome="partial" if written else "failed", started_at=started,
            finished_at=finished, flow_run_id=result.flow_run_id, changes=written, failures=reasons))
    await api.write_state(state, handle)
    result.error_kind = "transient" if result.writes_failed_transiently else "permanent"
    result.status = Status.FAILED
    result.message = (f"{len(result.applied)} change(s) applied, {len(result.failed)} failed, "
                      f"{len(result.held)} held back by smoke tests; {revision[:12]} is not applied: "
                      + "; ".join(reasons))
    return result


async def record_refused(api: PrefectAPI, state: EnvironmentState, handle: Any, revision: str, source: str,
                         ref: str, problems: list[ConfigProblem], at: dt.datetime) -> None:
    """A refused revision is recorded as attempted (never as applied); no target is touched."""
    state.last_attempted_revision, state.last_attempted_at = revision, at
    state.source, state.ref = source, ref
    state.condition = Condition(ready=False, reason=Reason.VALIDATION_FAILED,
                                message="; ".join(str(p) for p in problems)[:2000] or "invalid input")
    await api.write_state(state, handle)


async def record_source_failure(api: PrefectAPI, environment: str, message: str) -> None:
    """Best effort: let `status` show that the source could not be read."""
    try:
        state, handle = await api.read_state(environment, history=False)
        state.condition = Condition(ready=False, reason=Reason.SOURCE_FAILED, message=message[:2000])
        await api.write_state(state, handle)
    except GitOpsError:
        pass  # the server is what failed; the run's own state says so
