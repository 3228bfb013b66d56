"""One reconcile, read as Flux's: fetch -> build -> diff -> apply -> record.

This layer decides nothing itself (the planner does) and does no I/O itself
(the adapters do); it walks the steps and keeps the record honest: the
inventory is written ahead of every write, a revision is recorded as applied
only when every change of it was applied.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Literal

from prefect_gitops.adapters.git import Source
from prefect_gitops.adapters.prefect_api import PrefectAPI, bounded_gather
from prefect_gitops.errors import ConfigError, ConfigProblem, GitOpsError, PermanentError, TransientError
from prefect_gitops.loader import LoadedEnvironment, load_environment
from prefect_gitops.plan import Change, DriftMode, Plan, plan
from prefect_gitops.state import (
    Condition,
    EnvironmentState,
    HistoryEntry,
    begin_apply,
    finish_apply,
    utcnow,
)

Status = Literal["applied", "in-sync", "up-to-date", "planned", "drift-warned", "failed"]


@dataclass
class ReconcileRequest:
    environment: str
    source: Source
    ref: str = "main"
    path: str = "environments"
    revision: str | None = None  # pin a commit instead of resolving `ref`
    dry_run: bool = False  # stop after the plan
    drift_mode: DriftMode | None = None  # None: the environment file's drift.mode
    concurrency: int = 4  # writes in flight at once
    flow_run_id: str | None = None
    full_check: bool = False  # skip the "Git unchanged, no drift check due" shortcut


@dataclass
class ReconcileResult:
    environment: str
    status: Status = "failed"
    revision: str | None = None
    plan: Plan | None = None
    problems: list[ConfigProblem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_kind: Literal["transient", "permanent"] | None = None
    applied: list[Change] = field(default_factory=list)
    failed: list[Change] = field(default_factory=list)
    targets: dict[tuple[str, str], str] = field(default_factory=dict)  # (type, name) -> server id
    file: str | None = None
    flow_run_id: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def to_json(self) -> dict[str, Any]:
        changes = self.plan.changes if self.plan else []
        return {
            "environment": self.environment,
            "revision": self.revision,
            "status": self.status,
            "message": self.message,
            "changes": [
                c.model_dump(mode="json") for c in changes
            ],
            "errors": [p.to_dict() for p in self.problems] + [{"message": e} for e in self.errors],
            "applied": len(self.applied),
            "flow_run_id": self.flow_run_id,
        }


async def reconcile(request: ReconcileRequest, api: PrefectAPI) -> ReconcileResult:
    result = ReconcileResult(environment=request.environment, flow_run_id=request.flow_run_id)
    try:
        return await _reconcile(request, api, result)
    except ConfigError as exc:
        result.problems.extend(exc.problems)
        result.error_kind = "permanent"
    except TransientError as exc:
        result.errors.append(str(exc))
        result.error_kind = "transient"
    except PermanentError as exc:
        result.errors.append(str(exc))
        result.error_kind = "permanent"
    result.status = "failed"
    result.message = "; ".join([str(p) for p in result.problems] + result.errors)
    if result.revision is None and not request.dry_run:
        await _record_source_failure(api, request, result.message)
    return result


async def _reconcile(request: ReconcileRequest, api: PrefectAPI, result: ReconcileResult) -> ReconcileResult:
    now = utcnow()
    # fetch: one remote lookup, then the recorded state
    revision = request.revision or request.source.resolve(request.ref)
    result.revision = revision
    state, handle = await api.read_state(request.environment)

    if (not request.dry_run and not request.full_check and revision == state.last_applied_revision
            and not state.drift_check_due(now) and not state.has_unfinished_writes()):
        result.status = "up-to-date"
        result.message = f"{revision[:12]} is applied and no drift check is due"
        return result

    # build: the environment file at that revision, validated
    try:
        with request.source.checkout(revision) as tree:
            loaded = load_environment(tree, request.path, request.environment)
    except ConfigError as exc:
        if not request.dry_run:
            await _record_failure(api, state, handle, revision, request, "ValidationFailed", exc.problems, now)
        raise
    result.file = loaded.file
    drift_mode = request.drift_mode or loaded.spec.drift.mode

    # diff
    inventory = state.inventory
    actual = await api.read_actual(
        pool_names=set(loaded.spec.work_pools) | set(inventory.work_pools),
        deployment_names=set(loaded.spec.deployments) | set(inventory.deployments),
    )
    the_plan = plan(loaded.spec, actual, inventory, drift_mode)
    result.plan = the_plan
    result.targets = {("work_pool", n): p.id for n, p in actual.work_pools.items()}
    result.targets.update({("deployment", n): d.id for n, d in actual.deployments.items()})
    if the_plan.problems:
        result.problems = [loaded.problem(p.path, p.message) for p in the_plan.problems]
        if not request.dry_run:
            await _record_failure(api, state, handle, revision, request, "ValidationFailed", result.problems, now)
        raise ConfigError(result.problems)
    if request.dry_run:
        result.status = "planned"
        result.message = f"{len(the_plan.changes)} change(s) pending"
        return result

    # apply: write-ahead record, then only the changed targets, concurrently with a bound
    to_apply = the_plan.to_apply
    state.last_attempted_revision, state.last_attempted_at = revision, now
    state.source, state.ref = request.source.display, request.ref
    if to_apply:
        state.inventory = begin_apply(state.inventory, to_apply, revision)
        handle = await api.write_state(state, handle)
    applied, failed, failures = await _apply(api, actual, to_apply, request.concurrency)
    result.applied, result.failed = applied, failed

    # record
    finished = utcnow()
    state.inventory = finish_apply(state.inventory, the_plan, applied, revision)
    state.last_drift_check_at = finished
    state.drift_check_interval_seconds = loaded.spec.drift.check_interval_seconds
    if failures:
        state.condition = Condition(ready=False, reason="ApplyFailed", message="; ".join(failures)[:2000])
        state.add_history(HistoryEntry(
            revision=revision, outcome="partial" if applied else "failed", started_at=now, finished_at=finished,
            flow_run_id=request.flow_run_id, changes=applied, failures=failures))
        await api.write_state(state, handle)
        result.errors.extend(failures)
        result.error_kind = "transient" if all("answered 5" in f or "reach" in f for f in failures) else "permanent"
        result.status = "failed"
        result.message = f"{len(failed)} of {len(to_apply)} change(s) failed: " + "; ".join(failures)
        return result

    warned = [c for c in the_plan.changes if not c.apply]
    state.last_applied_revision, state.last_applied_at = revision, finished
    if applied:
        state.add_history(HistoryEntry(
            revision=revision, outcome="applied", started_at=now, finished_at=finished,
            flow_run_id=request.flow_run_id, changes=applied))
    reason = "DriftWarned" if warned else ("Applied" if applied else "InSync")
    state.condition = Condition(
        ready=not warned, reason=reason,
        message=f"{len(applied)} change(s) applied at {revision[:12]}"
        + (f"; {len(warned)} drifted value(s) left as they are (drift mode warn)" if warned else ""))
    await api.write_state(state, handle)
    result.status = "drift-warned" if warned else ("applied" if applied else "in-sync")
    result.message = state.condition.message
    return result


async def _apply(api: PrefectAPI, actual, changes: list[Change], concurrency: int):
    by_target: dict[tuple[str, str], list[Change]] = defaultdict(list)
    for change in changes:
        by_target[(change.target_type, change.target)].append(change)

    def job(target_type: str, name: str, target_changes: list[Change]):
        if target_type == "work_pool":
            return lambda: api.write_work_pool(actual.work_pools[name], target_changes)
        return lambda: api.write_deployment(actual.deployments[name], target_changes)

    keys = list(by_target)
    outcomes = await bounded_gather(concurrency, [job(t, n, by_target[(t, n)]) for t, n in keys])
    applied: list[Change] = []
    failed: list[Change] = []
    failures: list[str] = []
    for key, outcome in zip(keys, outcomes):
        if isinstance(outcome, BaseException):
            if not isinstance(outcome, (GitOpsError, Exception)):
                raise outcome
            failed.extend(by_target[key])
            failures.append(str(outcome))
        else:
            applied.extend(by_target[key])
    return applied, failed, failures


async def _record_failure(api: PrefectAPI, state: EnvironmentState, handle, revision: str,
                          request: ReconcileRequest, reason: str, problems: list[ConfigProblem],
                          now: dt.datetime) -> None:
    """A refused revision is recorded as attempted (never as applied); no target is touched."""
    state.last_attempted_revision, state.last_attempted_at = revision, now
    state.source, state.ref = request.source.display, request.ref
    state.condition = Condition(ready=False, reason=reason,
                                message="; ".join(str(p) for p in problems)[:2000] or "invalid input")
    await api.write_state(state, handle)


async def _record_source_failure(api: PrefectAPI, request: ReconcileRequest, message: str) -> None:
    """Best effort: let `status` show that the source could not be read."""
    try:
        state, handle = await api.read_state(request.environment)
        state.condition = Condition(ready=False, reason="SourceFailed", message=message[:2000])
        await api.write_state(state, handle)
    except GitOpsError:
        pass  # the server is what failed; the run's own state says so
