"""One reconcile, read as Flux's: fetch -> build -> diff -> smoke-test -> apply -> check -> record.

This layer decides nothing itself (the planner and the smoke planner do) and
does no I/O itself (the adapters do); it walks the steps and keeps the record
honest: the inventory is written ahead of every write, and a revision is
recorded as applied only when every change of it was applied and proven.
"""

from __future__ import annotations

import copy
import datetime as dt
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from prefect_gitops.adapters.git import Source, default_cache_dir
from prefect_gitops.adapters.prefect_api import PrefectAPI, bounded_gather, read_together
from prefect_gitops.drift_events import Watched, covered_after_event_check, covered_after_full_read, reasons_to_read
from prefect_gitops.errors import ConfigError, ConfigProblem, GitOpsError, PermanentError, RolloutBusy, TransientError
from prefect_gitops.loader import load_environment
from prefect_gitops.model import EnvironmentFile
from prefect_gitops.plan import ActualState, Change, DeploymentActual, DriftMode, Plan, PoolActual, QueueActual, plan
from prefect_gitops.plan import deployment_job_variables_after, pool_template_after
from prefect_gitops.smoke import SmokeResult, SmokeTest, changes_by_target, gate, policy_problems, smoke_tests_for
from prefect_gitops.waves import Wave, assign_waves, unsoaked_images
from prefect_gitops.windows import evaluate as evaluate_windows
from prefect_gitops.state import (
    Condition,
    EnvironmentState,
    HistoryEntry,
    RolledBack,
    Suspension,
    begin_apply,
    find_rollback_target,
    finish_apply,
    utcnow,
    values_at,
)

Status = Literal["applied", "in-sync", "up-to-date", "planned", "drift-warned", "rolled-back", "failed",
                 "busy", "suspended", "window-closed", "waiting"]
HELD_STATUSES = ("suspended", "window-closed", "waiting")


class SmokeRunnerLike(Protocol):
    async def run_all(self, tests: list[SmokeTest]) -> dict[str, SmokeResult]: ...
    async def post_apply(self, deployments: list[str], parameters: dict, timeout: int) -> dict[str, SmokeResult]: ...


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
    full_check: bool = False  # read every target: skip the "no drift check due" shortcut and the event log
    force: bool = False  # apply even the revision a rollback moved away from
    override_windows: bool = False  # apply inside a deny window / outside every allow window
    defaults: dict | None = None  # sections from the policy default blocks; the file wins


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
    held: list[Change] = field(default_factory=list)  # not applied because a smoke test failed
    smoke_tests: list[SmokeTest] = field(default_factory=list)
    smoke_results: dict[str, SmokeResult] = field(default_factory=dict)
    post_apply_results: dict[str, SmokeResult] = field(default_factory=dict)
    reverted: list[Change] = field(default_factory=list)  # automatic rollback writes
    waves: list[Wave] = field(default_factory=list)
    rolled_back: RolledBack | None = None
    targets: dict[tuple[str, str], str] = field(default_factory=dict)  # (type, name) -> server id
    file: str | None = None
    flow_run_id: str | None = None
    message: str = ""
    drift_check: str | None = None  # how Git-unchanged drift was looked for: "event log" or "full read: <why>"

    @property
    def ok(self) -> bool:
        return self.status not in ("failed", "busy")

    @property
    def failed_smoke_tests(self) -> list[tuple[SmokeTest, SmokeResult]]:
        return [(t, self.smoke_results[t.id]) for t in self.smoke_tests
                if t.id in self.smoke_results and not self.smoke_results[t.id].passed]

    def to_json(self) -> dict[str, Any]:
        changes = self.plan.changes if self.plan else []
        return {
            "environment": self.environment,
            "revision": self.revision,
            "status": self.status,
            "message": self.message,
            "changes": [c.model_dump(mode="json") for c in changes],
            "errors": [p.to_dict() for p in self.problems] + [{"message": e} for e in self.errors],
            "applied": len(self.applied),
            "held": len(self.held),
            "smoke_tests": [
                {"kind": t.kind, "image": t.image, "targets": [n for _, n in t.targets], "deployment": t.deployment,
                 **({"result": self.smoke_results[t.id].reason, "message": self.smoke_results[t.id].message,
                     "log_tail": self.smoke_results[t.id].log_tail} if t.id in self.smoke_results else {})}
                for t in self.smoke_tests
            ],
            "post_apply": {d: {"result": r.reason, "message": r.message} for d, r in self.post_apply_results.items()},
            "rolled_back": self.rolled_back.model_dump(mode="json") if self.rolled_back else None,
            "waves": [{"wave": w.number, "name": w.name, "state": w.state, "changes": len(w.changes),
                       "max_parallel": w.max_parallel, "message": w.message} for w in self.waves],
            "flow_run_id": self.flow_run_id,
            "drift_check": self.drift_check,
        }


def _fail(result: ReconcileResult, exc: GitOpsError) -> None:
    if isinstance(exc, ConfigError):
        result.problems.extend(p for p in exc.problems if p not in result.problems)
    else:
        result.errors.append(str(exc))
    result.error_kind = "transient" if isinstance(exc, TransientError) else "permanent"
    result.status = "failed"
    result.message = "; ".join([str(p) for p in result.problems] + result.errors)


async def reconcile(request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None = None,
                    lock: Callable[[str, float], AbstractAsyncContextManager] | None = None) -> ReconcileResult:
    """`lock(environment, timeout)` serialises writers of one environment (None: no lock, e.g. plan)."""
    result = ReconcileResult(environment=request.environment, flow_run_id=request.flow_run_id)
    try:
        return await _reconcile(request, api, runner, lock, result)
    except (ConfigError, TransientError, PermanentError) as exc:
        _fail(result, exc)
    except RolloutBusy as exc:
        result.status, result.message = "busy", str(exc)
        return result
    if result.revision is None and not request.dry_run:
        await _record_source_failure(api, request, result.message)
    return result


def _holds_after_rollback(state: EnvironmentState, revision: str, request: ReconcileRequest,
                          result: ReconcileResult) -> bool:
    if state.rolled_back is None or request.dry_run:
        return False
    if revision == state.rolled_back.from_revision and not request.force:
        result.status, result.rolled_back = "rolled-back", state.rolled_back
        result.message = (f"rolled back ({state.rolled_back.reason}) from {revision[:12]} to "
                          f"{(state.rolled_back.to_revision or 'the values before it')[:12]}; out of sync with "
                          f"Git until Git moves to a new revision or a reconcile is forced")
        return True
    state.rolled_back = None  # Git moved on (or --force): reconcile normally
    return False


async def _reconcile(request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None, lock,
                     result: ReconcileResult) -> ReconcileResult:
    now = utcnow()
    # fetch: one remote lookup, then the recorded state
    revision = request.revision or request.source.resolve(request.ref)
    result.revision = revision
    state, handle = await api.read_state(request.environment, history=False)  # history: only appended to
    if _holds_after_rollback(state, revision, request, result):
        return result
    if (not request.dry_run and not request.full_check and revision == state.last_applied_revision
            and not state.drift_check_due(now) and not state.has_unfinished_writes() and state.suspended is None):
        result.status = "up-to-date"
        result.message = f"{revision[:12]} is applied and no drift check is due"
        return result

    # build: the environment file at that revision, validated
    loaded, build_error = None, None
    try:
        with request.source.checkout(revision) as tree:
            loaded = load_environment(tree, request.path, request.environment, defaults=request.defaults,
                                      cache_dir=default_cache_dir() / "parsed")
        result.file = loaded.file
    except ConfigError as exc:
        build_error = exc
    if request.dry_run or lock is None:
        if build_error:
            raise build_error
        return await _converge(request, api, runner, result, loaded, state, handle, revision, now)

    timeout = loaded.spec.rollout.lock_timeout_seconds if loaded else 300
    checked_until = await _check_event_log(request, api, loaded.spec, state, revision, now, result) if loaded else None
    async with lock(request.environment, timeout):
        if checked_until is not None:
            fresh, handle = await api.read_state(request.environment, history=False)
            # record the check only if nothing was recorded in between (else read everything below)
            if (fresh.drift_checked_until == state.drift_checked_until
                    and fresh.may_check_by_events(revision, now, loaded.spec.drift.full_read_interval_seconds) is None):
                return await _record_quiet_check(api, fresh, handle, checked_until, loaded.spec, revision, result)
            result.drift_check = "full read: another run recorded the state during the check"
        # fresh: another rollout may just have ended. The server's side is read at the same time, for
        # the targets known before the lock; read again only if the fresh inventory names others.
        actual = None
        if loaded is None:
            state, handle = await api.read_state(request.environment, history=False)
        else:
            names = _actual_names(loaded.spec, state)
            (state, handle), actual = await read_together(api.read_state(request.environment, history=False),
                                                          api.read_actual(**names))
            if _actual_names(loaded.spec, state) != names:
                actual = None
        if _holds_after_rollback(state, revision, request, result):
            return result
        if build_error:
            await _record_failure(api, state, handle, revision, request, build_error.problems, now)
            raise build_error
        return await _converge(request, api, runner, result, loaded, state, handle, revision, now, actual)


async def _check_event_log(request: ReconcileRequest, api: PrefectAPI, spec: EnvironmentFile,
                           state: EnvironmentState, revision: str, now: dt.datetime,
                           result: ReconcileResult) -> dt.datetime | None:
    """Git unchanged and the last check in sync: ask the server's event log whether a managed target
    may have changed since. Returns the time the check covers up to when none did, else None (and
    the reason for reading every target goes in `result.drift_check`)."""
    if request.full_check:
        result.drift_check = "full read: asked for"
        return None
    if revision != state.last_applied_revision:
        return None  # a new revision: not a drift check
    why_not = state.may_check_by_events(revision, now, spec.drift.full_read_interval_seconds)
    if why_not is None:
        checked_until = covered_after_event_check(state.drift_checked_until, utcnow())
        why_not = await _reason_in_event_log(api, spec, state)
        if why_not is None:
            result.drift_check = "event log"
            return checked_until
    result.drift_check = f"full read: {why_not}"
    return None


EVENTS_AT_LEAST = 200  # change events worth reading however few the targets


async def _reason_in_event_log(api: PrefectAPI, spec: EnvironmentFile, state: EnvironmentState) -> str | None:
    """What the event log holds since the last check that may concern a managed value (None: nothing)."""
    names = _actual_names(spec, state)
    # a page of 50 events costs about what a page of 200 deployments does: past a quarter as many
    # events as targets, reading the targets is cheaper
    at_most = max(EVENTS_AT_LEAST, len(names["deployment_names"]) // 4)
    try:
        events = await api.read_change_events(state.drift_checked_until, at_most)
    except GitOpsError as exc:  # the log is an optimisation: without it, read everything
        return f"the event log could not be read ({exc})"
    if events is None:
        return f"more than {at_most} change events since the last check: reading every target is cheaper"
    watched = Watched(work_pools=frozenset(names["pool_names"] | names["queue_pools"]),
                      deployments=frozenset(names["deployment_names"]), queue_pools=frozenset(names["queue_pools"]))
    reasons = reasons_to_read(events, watched, state.inventory)
    if not reasons:
        return None
    return reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")


async def _record_quiet_check(api: PrefectAPI, state: EnvironmentState, handle, checked_until: dt.datetime,
                              spec: EnvironmentFile, revision: str, result: ReconcileResult) -> ReconcileResult:
    since = state.drift_checked_until
    state.last_drift_check_at = utcnow()
    state.drift_checked_until = checked_until
    state.drift_check_interval_seconds = spec.drift.check_interval_seconds
    state.condition = Condition(
        ready=True, reason="InSync",
        message=f"in sync at {revision[:12]}: the server's event log shows no change to a managed target since "
                f"{since:%Y-%m-%d %H:%M:%S} UTC (every target was last read at "
                f"{state.last_full_read_at:%Y-%m-%d %H:%M:%S} UTC)")
    await api.write_state(state, handle)
    result.status, result.message = "in-sync", state.condition.message
    return result


async def _converge(request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None,
                    result: ReconcileResult, loaded, state: EnvironmentState, handle, revision: str,
                    now: dt.datetime, actual: ActualState | None = None) -> ReconcileResult:
    spec = loaded.spec
    drift_mode = request.drift_mode or spec.drift.mode

    # diff
    if actual is None:
        actual = await api.read_actual(**_actual_names(spec, state))
    the_plan = plan(spec, actual, state.inventory, drift_mode)
    result.plan = the_plan
    _remember_targets(result, actual)
    problems = the_plan.problems or policy_problems(spec, actual)
    if problems:
        result.problems = [loaded.problem(p.path, p.message) for p in problems]
        if not request.dry_run:
            await _record_failure(api, state, handle, revision, request, result.problems, now)
        raise ConfigError(result.problems)
    result.waves = assign_waves(the_plan.to_apply, spec, actual)
    result.smoke_tests = smoke_tests_for(the_plan.to_apply, spec, actual)
    if request.dry_run:
        if the_plan.changes:
            result.status = "planned"
            result.message = (f"{len(the_plan.changes)} change(s) pending in {len(result.waves)} wave(s), "
                              f"{len(result.smoke_tests)} smoke test(s) to run")
        else:  # a plan with nothing in it is news too: the environment matches Git
            result.status = "in-sync"
            result.message = f"{len(the_plan.noops)} managed key(s) match Git (dry run: nothing was written)"
        return result

    # gates that hold the whole revision: suspension, sync windows, promotion
    hold = await _gates(request, api, spec, state, the_plan, now)
    if hold is not None:
        status, reason, message = hold
        result.status, result.message, result.held = status, message, list(the_plan.to_apply)
        state.condition = Condition(ready=False, reason=reason, message=message[:2000])
        await api.write_state(state, handle)
        return result

    state.last_attempted_revision, state.last_attempted_at = revision, now
    state.source, state.ref = request.source.display, request.ref
    result.smoke_tests = []
    for wave in result.waves:
        handle = await _roll_out_wave(request, api, runner, result, spec, actual, state, handle, the_plan,
                                      wave, revision, now)
        if wave.state != "applied":
            for later in result.waves[result.waves.index(wave) + 1:]:
                later.state = "not started"
                result.held.extend(later.changes)
            if wave.state == "rolled-back":
                return result
            break
    return await _record(api, state, handle, the_plan, spec.drift.check_interval_seconds, revision,
                         request.flow_run_id, result, now)


def _actual_names(spec: EnvironmentFile, state: EnvironmentState) -> dict[str, set[str]]:
    """What to read from the server: everything the file names and everything the inventory holds."""
    return {"pool_names": set(spec.work_pools) | set(state.inventory.work_pools),
            "deployment_names": set(spec.deployments) | set(state.inventory.deployments) | _canary_deployments(spec),
            "queue_pools": _queue_pools(spec, state)}


def _queue_pools(spec: EnvironmentFile, state: EnvironmentState) -> set[str]:
    from prefect_gitops.model import desired_work_queues

    names = set(desired_work_queues(spec)) | set(state.inventory.work_queues)
    return {n.split("/", 1)[0] for n in names}


def _canary_deployments(spec: EnvironmentFile) -> set[str]:
    named = {spec.smoke_test.post_apply.deployment, spec.smoke_test.canary.deployment if spec.smoke_test.canary else None}
    for target in [*spec.work_pools.values(), *spec.deployments.values()]:
        if target.smoke_test and target.smoke_test.canary:
            named.add(target.smoke_test.canary.deployment)
    return {n for n in named if n}


async def _gates(request: ReconcileRequest, api: PrefectAPI, spec: EnvironmentFile, state: EnvironmentState,
                 the_plan: Plan, now: dt.datetime) -> tuple[str, str, str] | None:
    """(status, condition reason, message) when the revision must wait; None to go ahead."""
    if state.suspended is not None:
        return ("suspended", "Suspended", f"reconciliation of {request.environment} is suspended since "
                f"{state.suspended.at:%Y-%m-%d %H:%M:%S} UTC ({state.suspended.reason or 'no reason given'}); "
                f"{len(the_plan.changes)} change(s) pending, nothing applied")
    if spec.sync_windows and the_plan.to_apply:
        verdict = evaluate_windows(spec.sync_windows, now)
        if not verdict.allowed and not request.override_windows:
            return ("window-closed", "SyncWindowClosed", f"{verdict.reason}; {len(the_plan.to_apply)} change(s) "
                    "planned, nothing applied (run with the window override to apply anyway)")
    gate = spec.rollout.promotion
    if gate is not None and the_plan.to_apply:
        previous, handle = await api.read_state(gate.from_, history=False)
        refused = unsoaked_images(the_plan.to_apply, gate, previous if handle is not None else None, now)
        if refused:
            return ("waiting", "PromotionPending", "promotion gate: " + "; ".join(
                f"{image}: {why}" for image, why in refused.items()) + "; nothing applied")
    return None


async def _roll_out_wave(request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None,
                         result: ReconcileResult, spec: EnvironmentFile, actual: ActualState, state: EnvironmentState,
                         handle, the_plan: Plan, wave: Wave, revision: str, now: dt.datetime):
    """smoke-test -> apply -> check for one wave; sets wave.state."""
    tests = smoke_tests_for(the_plan.to_apply, spec, actual,
                            only={(c.target_type, c.target) for c in wave.changes})
    result.smoke_tests.extend(t for t in tests if t.id not in result.smoke_results)
    allowed = wave.changes
    if tests:
        if runner is None:
            raise PermanentError("smoke tests are required by the policy but no runner is available here")
        # an image proven in an earlier wave of this run (same policy) is not tested again
        outcomes = await runner.run_all([t for t in tests if t.id not in result.smoke_results])
        result.smoke_results.update(outcomes)
        outcomes = {t.id: result.smoke_results[t.id] for t in tests}
        allowed, held = gate(wave.changes, tests, outcomes, spec.smoke_test.gate)
        result.held.extend(held)
    inventory_before = state.inventory
    applied_before, failed_before = len(result.applied), len(result.failed)
    # both bounds hold: the wave's max_parallel (file) and the run's write concurrency (--concurrency)
    handle = await _apply(api, state, handle, actual, allowed, revision,
                          min(wave.max_parallel, request.concurrency), result)
    wave_applied = result.applied[applied_before:]
    wave.state = "failed" if (len(result.failed) > failed_before or len(allowed) < len(wave.changes)) else "applied"
    wave.message = f"{len(wave_applied)} of {len(wave.changes)} change(s) applied"

    post = spec.smoke_test.post_apply
    if post.kind == "canary" and wave_applied and wave.state == "applied" and runner is not None:
        deployments = sorted({c.target for c in wave_applied if c.target_type == "deployment"})
        if post.deployment and any(c.target_type == "work_pool" for c in wave_applied):
            deployments = sorted(set(deployments) | {post.deployment})
        checks = await runner.post_apply(deployments, post.parameters, post.timeout_seconds)
        result.post_apply_results.update(checks)
        if any(not r.passed for r in checks.values()):
            await _automatic_rollback(api, state, handle, actual, inventory_before, the_plan, wave_applied,
                                      revision, request, result, now)
            wave.state, wave.message = "rolled-back", f"post-apply check failed; {len(result.reverted)} change(s) rolled back"
    return handle


def _remember_targets(result: ReconcileResult, actual: ActualState) -> None:
    result.targets = {("work_pool", n): p.id for n, p in actual.work_pools.items()}
    result.targets.update({("deployment", n): d.id for n, d in actual.deployments.items()})
    result.targets.update({("work_queue", n): q.id for n, q in actual.work_queues.items() if q.id})


async def _apply(api: PrefectAPI, state: EnvironmentState, handle, actual: ActualState, changes: list[Change],
                 revision: str, concurrency: int, result: ReconcileResult):
    """Write-ahead record, then only the changed targets, concurrently with a bound."""
    if changes:
        state.inventory = begin_apply(state.inventory, changes, revision)
        handle = await api.write_state(state, handle)
    applied, failed, failures = await _write(api, actual, changes, concurrency)
    result.applied.extend(applied)
    result.failed.extend(failed)
    result.errors.extend(failures)
    return handle


async def _write(api: PrefectAPI, actual: ActualState, changes: list[Change], concurrency: int):
    by_target = changes_by_target(changes)

    def job(target_type: str, name: str, target_changes: list[Change]):
        if target_type == "work_pool":
            return lambda: api.write_work_pool(actual.work_pools[name], target_changes)
        if target_type == "work_queue":
            queue = actual.work_queues.get(name) or QueueActual(name=name, id=None, values={})
            return lambda: api.write_work_queue(queue, target_changes)
        return lambda: api.write_deployment(actual.deployments[name], target_changes)

    # pools and deployments concurrently; then queues one at a time, highest priority first, because
    # the server shifts the other queues of a pool down when one takes a priority
    keys = [k for k in by_target if k[0] != "work_queue"]
    outcomes = await bounded_gather(concurrency, [job(t, n, by_target[(t, n)]) for t, n in keys])
    queue_keys = sorted((k for k in by_target if k[0] == "work_queue"), key=lambda k: _queue_priority(by_target[k], actual, k[1]))
    for key in queue_keys:
        try:
            await job(key[0], key[1], by_target[key])()
            outcomes.append(None)
        except GitOpsError as exc:
            outcomes.append(exc)
    keys += queue_keys
    applied: list[Change] = []
    failed: list[Change] = []
    failures: list[str] = []
    for key, outcome in zip(keys, outcomes):
        if isinstance(outcome, GitOpsError):
            failed.extend(by_target[key])
            failures.append(str(outcome))
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            applied.extend(by_target[key])
    return applied, failed, failures


def _queue_priority(changes: list[Change], actual: ActualState, name: str) -> int:
    for change in changes:
        if change.key == "priority" and change.action == "set" and isinstance(change.new, int):
            return change.new
    queue = actual.work_queues.get(name)
    return (queue.values.get("priority") if queue else None) or 10**6


async def _record(api: PrefectAPI, state: EnvironmentState, handle, the_plan: Plan, check_interval: int,
                  revision: str, flow_run_id: str | None, result: ReconcileResult, now: dt.datetime,
                  outcome_if_ok: str = "applied") -> ReconcileResult:
    finished = utcnow()
    state.inventory = finish_apply(state.inventory, the_plan, result.applied, revision)
    state.last_drift_check_at = finished
    # every target was read after `now`: the next drift check asks the event log from there
    state.last_full_read_at, state.drift_checked_until = now, covered_after_full_read(now)
    state.drift_check_interval_seconds = check_interval
    not_applied = result.failed or result.held
    if not_applied:
        reasons = list(result.errors)
        reasons += [f"smoke test failed: {t.describe()}: {r.message}" for t, r in result.failed_smoke_tests]
        state.condition = Condition(ready=False, reason="ApplyFailed" if result.failed else "SmokeTestFailed",
                                    message="; ".join(reasons)[:2000])
        if result.applied or result.failed:
            state.add_history(HistoryEntry(
                revision=revision, outcome="partial" if result.applied else "failed", started_at=now,
                finished_at=finished, flow_run_id=flow_run_id, changes=result.applied, failures=reasons))
        await api.write_state(state, handle)
        kinds = [e for e in result.errors if not ("answered 5" in e or "reach" in e)]
        result.error_kind = "transient" if result.failed and not kinds else "permanent"
        result.status = "failed"
        result.message = (f"{len(result.applied)} change(s) applied, {len(result.failed)} failed, "
                          f"{len(result.held)} held back by smoke tests; {revision[:12]} is not applied: "
                          + "; ".join(reasons))
        return result

    warned = [c for c in the_plan.changes if not c.apply]
    state.last_applied_revision, state.last_applied_at = revision, finished
    if result.applied:
        state.add_history(HistoryEntry(
            revision=revision, outcome=outcome_if_ok, started_at=now, finished_at=finished,
            flow_run_id=flow_run_id, changes=result.applied))
    reason = "DriftWarned" if warned else ("Applied" if result.applied else "InSync")
    if state.rolled_back is not None:
        reason = "RolledBack"
    state.condition = Condition(
        ready=not warned and state.rolled_back is None, reason=reason,
        message=f"{len(result.applied)} change(s) applied at {revision[:12]}"
        + (f"; {len(warned)} drifted value(s) left as they are (drift mode warn)" if warned else ""))
    await api.write_state(state, handle)
    result.status = "drift-warned" if warned else ("applied" if result.applied else "in-sync")
    result.message = state.condition.message
    return result


def _after(actual: ActualState, applied: list[Change]) -> ActualState:
    """The server's targets as they are once `applied` was written."""
    pools = dict(actual.work_pools)
    deployments = dict(actual.deployments)
    queues = dict(actual.work_queues)
    for (kind, name), changes in changes_by_target(applied).items():
        if kind == "work_queue":
            queue = queues.get(name) or QueueActual(name=name, id=None, values={})
            values = {**queue.values, **{c.key: c.new for c in changes if c.action == "set"}}
            queues[name] = QueueActual(name=name, id=queue.id, values=values)
        elif kind == "work_pool":
            pools[name] = PoolActual(name, pools[name].id, pool_template_after(pools[name], changes))
        else:
            d = deployments[name]
            deployments[name] = DeploymentActual(name, d.id, d.work_pool_name, deployment_job_variables_after(d, changes))
    return ActualState(work_pools=pools, deployments=deployments, work_queues=queues)


def _reverse(change: Change) -> Change:
    return Change(target_type=change.target_type, target=change.target, key=change.key,
                  action="set" if change.old_present else "unset", old=change.new,
                  old_present=change.action == "set", new=copy.deepcopy(change.old) if change.old_present else None,
                  reason="desired", removed_from_git=False)


async def _automatic_rollback(api: PrefectAPI, state: EnvironmentState, handle, actual: ActualState,
                              inventory_before, the_plan: Plan, wave_applied: list[Change], revision: str,
                              request: ReconcileRequest, result: ReconcileResult, now: dt.datetime) -> None:
    """The post-apply check failed: put back what this wave changed, and hold this revision."""
    reverse = [_reverse(c) for c in reversed(wave_applied)]
    applied, failed, failures = await _write(api, _after(actual, result.applied), reverse, request.concurrency)
    result.reverted = applied
    failing = [f"{d}: {r.message}" for d, r in result.post_apply_results.items() if not r.passed]
    finished = utcnow()
    if failed:  # could not undo everything: keep the inventory honest about what is on the server now
        state.inventory = finish_apply(state.inventory, the_plan, wave_applied, revision)
        result.errors.extend(failures)
    else:
        state.inventory = inventory_before
    state.rolled_back = RolledBack(from_revision=revision, to_revision=state.last_applied_revision,
                                   reason="automatic", flow_run_id=request.flow_run_id,
                                   message="post-apply check failed: " + "; ".join(failing))
    state.condition = Condition(ready=False, reason="RolledBack", message=state.rolled_back.message[:2000])
    earlier = [c for c in result.applied if not any(c is w for w in wave_applied)]
    if earlier:  # earlier waves stay applied: record them as a partial apply of this revision
        state.inventory = finish_apply(state.inventory, Plan(), earlier, revision)
    state.add_history(HistoryEntry(revision=revision, outcome="rolled-back", started_at=now, finished_at=finished,
                                   flow_run_id=request.flow_run_id, changes=result.applied, reverted=applied,
                                   failures=failing + failures))
    await api.write_state(state, handle)
    result.rolled_back = state.rolled_back
    result.status = "failed"
    result.error_kind = "permanent"
    result.message = (f"post-apply check failed ({'; '.join(failing)}); {len(applied)} change(s) rolled back"
                      + (f", {len(failed)} could not be rolled back: {'; '.join(failures)}" if failed else ""))


async def _record_failure(api: PrefectAPI, state: EnvironmentState, handle, revision: str,
                          request: ReconcileRequest, problems: list[ConfigProblem], now: dt.datetime) -> None:
    """A refused revision is recorded as attempted (never as applied); no target is touched."""
    state.last_attempted_revision, state.last_attempted_at = revision, now
    state.source, state.ref = request.source.display, request.ref
    state.condition = Condition(ready=False, reason="ValidationFailed",
                                message="; ".join(str(p) for p in problems)[:2000] or "invalid input")
    await api.write_state(state, handle)


async def _record_source_failure(api: PrefectAPI, request: ReconcileRequest, message: str) -> None:
    """Best effort: let `status` show that the source could not be read."""
    try:
        state, handle = await api.read_state(request.environment, history=False)
        state.condition = Condition(ready=False, reason="SourceFailed", message=message[:2000])
        await api.write_state(state, handle)
    except GitOpsError:
        pass  # the server is what failed; the run's own state says so


# -- manual rollback ---------------------------------------------------------------------------

@dataclass
class RollbackRequest:
    environment: str
    to_revision: str | None = None
    steps: int | None = None
    concurrency: int = 4
    flow_run_id: str | None = None
    lock_timeout_seconds: float = 300


async def rollback(request: RollbackRequest, api: PrefectAPI, lock=None) -> ReconcileResult:
    """Restore the job variables as they were applied at an earlier revision, from the history."""
    result = ReconcileResult(environment=request.environment, flow_run_id=request.flow_run_id)
    try:
        if lock is None:
            return await _rollback(request, api, result)
        async with lock(request.environment, request.lock_timeout_seconds):
            return await _rollback(request, api, result)
    except RolloutBusy as exc:
        result.status, result.message = "busy", str(exc)
        return result


async def _rollback(request: RollbackRequest, api: PrefectAPI, result: ReconcileResult) -> ReconcileResult:
    try:
        now = utcnow()
        state, handle = await api.read_state(request.environment)
        if handle is None:
            raise PermanentError(f"environment {request.environment!r} has never been reconciled")
        try:
            index = find_rollback_target(state, request.to_revision, request.steps)
        except ValueError as exc:
            raise PermanentError(str(exc)) from None
        to_revision = state.history[index].revision
        values = values_at(state, index)
        result.revision = to_revision
        pools: dict[str, dict] = {n: {"job_variables": v} for n, v in values["work_pool"].items()}
        for name, fields in values["work_queue"].items():
            pool, queue = name.split("/", 1)
            pools.setdefault(pool, {"job_variables": {}}).setdefault("work_queues", {})[queue] = fields
        desired = EnvironmentFile.model_validate({
            "work_pools": pools,
            "deployments": {n: {"job_variables": v} for n, v in values["deployment"].items()},
        })
        actual = await api.read_actual(pool_names=set(desired.work_pools) | set(state.inventory.work_pools),
                                       deployment_names=set(desired.deployments) | set(state.inventory.deployments),
                                       queue_pools={n.split("/", 1)[0] for n in state.inventory.work_queues})
        the_plan = plan(desired, actual, state.inventory, "correct")
        result.plan = the_plan
        _remember_targets(result, actual)
        if the_plan.problems:
            raise PermanentError("cannot roll back: " + "; ".join(p.message for p in the_plan.problems))
        from_revision = state.rolled_back.from_revision if state.rolled_back else state.last_applied_revision
        state.rolled_back = RolledBack(from_revision=from_revision or "", to_revision=to_revision, reason="manual",
                                       flow_run_id=request.flow_run_id,
                                       message=f"rolled back to {to_revision} by hand")
        handle = await _apply(api, state, handle, actual, the_plan.to_apply, to_revision, request.concurrency, result)
        await _record(api, state, handle, the_plan, state.drift_check_interval_seconds, to_revision,
                      request.flow_run_id, result, now, outcome_if_ok="rollback")
        if result.ok:
            result.status = "rolled-back"
            result.rolled_back = state.rolled_back
            result.message = (f"rolled back to {to_revision}: {len(result.applied)} change(s) applied; "
                              f"reconciles hold until Git moves past {from_revision[:12] if from_revision else '-'} "
                              f"(or --force)")
    except (TransientError, PermanentError) as exc:
        _fail(result, exc)
    return result


async def set_suspended(api: PrefectAPI, environment: str, suspend: bool, reason: str = "",
                        lock=None, lock_timeout_seconds: float = 300) -> EnvironmentState:
    """Suspend or resume reconciliation (and drift correction) of an environment."""
    async def change() -> EnvironmentState:
        state, handle = await api.read_state(environment, history=False)
        if suspend:
            state.suspended = Suspension(reason=reason)
            state.condition = Condition(ready=False, reason="Suspended", message=reason or "suspended")
        else:
            state.suspended = None
            state.last_drift_check_at = None  # the next reconcile checks everything again
            state.condition = Condition(ready=False, reason="Resumed", message="resumed; waiting for a reconcile")
        await api.write_state(state, handle)
        return state

    if lock is None:
        return await change()
    async with lock(environment, lock_timeout_seconds):
        return await change()
