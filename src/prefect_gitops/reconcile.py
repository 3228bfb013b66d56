"""One reconcile, read as Flux's: fetch -> build -> diff -> gates -> (smoke-test -> apply -> check) per
wave -> record.

This layer decides nothing itself (the planner, the smoke planner, waves and windows do) and does no
I/O itself (the adapters do); it walks the steps and keeps the record honest: the inventory is
written ahead of every write, and a revision is recorded as applied only when every change of it was
applied and proven. Manual rollback lives in rollback.py, suspend/resume in suspend.py, the event-log
drift check in drift_check.py, the record in record.py.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Protocol

from prefect_gitops.adapters.environment_server import environment_api
from prefect_gitops.adapters.git import Source, default_cache_dir
from prefect_gitops.adapters.policy_store import read_policy
from prefect_gitops.adapters.prefect_api import PrefectAPI, read_together
from prefect_gitops.drift_check import check_event_log, names_to_read, record_quiet_check
from prefect_gitops.errors import ConfigError, PermanentError, RolloutBusy, RolloutHeld, TransientError
from prefect_gitops.errors import RevisionRefused
from prefect_gitops.kinds import kind
from prefect_gitops.loader import LoadedEnvironment, load_environment
from prefect_gitops.plan import ActualState, Change, DriftMode, Plan, plan
from prefect_gitops.policy import check_policy
from prefect_gitops.record import record_outcome, record_refused, record_source_failure
from prefect_gitops.result import ReconcileResult
from prefect_gitops import revision_gates
from prefect_gitops.rollback import RollbackRequest, WaveToUndo, rollback, undo_wave
from prefect_gitops.signature_check import verify_revision
from prefect_gitops.signatures import SignaturePolicy
from prefect_gitops.smoke import SmokeResult, SmokeTest, gate, policy_problems, smoke_tests_for
from prefect_gitops.state import Condition, EnvironmentState, Inventory, utcnow
from prefect_gitops.status import Reason, Status
from prefect_gitops.steps import InlineSteps, Lock, Steps
from prefect_gitops.suspend import set_suspended
from prefect_gitops.waves import Wave, assign_waves, unsoaked_images
from prefect_gitops.windows import evaluate as evaluate_windows
from prefect_gitops.writes import apply_changes, remember_targets

__all__ = ["ReconcileRequest", "ReconcileResult", "RollbackRequest", "Status", "reconcile", "rollback",
           "set_suspended"]

class SmokeRunnerLike(Protocol):
    async def run_all(self, tests: list[SmokeTest]) -> dict[str, SmokeResult]: ...
    async def post_apply(self, deployments: list[str], parameters: dict[str, Any], timeout: int) -> dict[str, SmokeResult]: ...


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
    defaults: dict[str, Any] | None = None  # sections from the policy default blocks; the file wins
    signatures: SignaturePolicy | None = None  # the source block's signers; None: revisions are not verified
    policy_block: str | None = None  # GitOps Policy block (None: gitops-policy if it exists)
    allow_mass_release: bool = False  # consent to an emptied file / releasing most managed keys (release_gate.py)
    allow_history_rewrite: bool = False  # consent to a revision that does not descend from the last applied one


async def reconcile(request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None = None,
                    lock: Lock | None = None, steps: Steps | None = None) -> ReconcileResult:
    """`lock(environment, timeout)` serialises writers of one environment (None: no lock, e.g. plan);
    `steps` runs the slow or failable steps (task runs inside a flow)."""
    return await Reconciler(request, api, runner, lock, steps or InlineSteps()).run()


class Reconciler:
    """One reconcile of one environment: the request, the API, the recorded state and its handle, and
    the result, carried from step to step."""

    def __init__(self, request: ReconcileRequest, api: PrefectAPI, runner: SmokeRunnerLike | None,
                 lock: Lock | None, steps: Steps):
        self.request, self.api, self.runner, self.lock, self.steps = request, api, runner, lock, steps
        self.result = ReconcileResult(environment=request.environment, flow_run_id=request.flow_run_id)
        self.now = utcnow()
        self.revision = ""
        self.state = EnvironmentState(environment=request.environment)
        self.handle: Any = None
        self.loaded: LoadedEnvironment | None = None
        self.build_error: ConfigError | None = None
        self.actual: ActualState | None = None
        self.plan = Plan()
        self.source_failed = False  # the revision was resolved but could not be fetched or checked out

    async def run(self) -> ReconcileResult:
        try:
            await self._walk()
        except RolloutBusy as exc:
            self.result.status, self.result.message = Status.BUSY, str(exc)
        except RevisionRefused as exc:
            revision_gates.refused(self.result, exc)
        except (ConfigError, TransientError, PermanentError) as exc:
            self.result.fail(exc)
            if (self.result.revision is None or self.source_failed) and not self.request.dry_run:
                await record_source_failure(self.api, self.request.environment, self.result.message)
        return self.result

    async def _walk(self) -> None:
        if not await self.fetch():
            return
        await verify_revision(self.request.source, self.revision, self.request.signatures,  # before build
                              environment=self.request.environment, api=self.api, lock=self.lock,
                              record=not self.request.dry_run, ref=self.request.ref, at=self.now)
        self.build()
        if self.request.dry_run or self.lock is None:
            if self.build_error:
                raise self.build_error
            await self.converge()
            return
        checked_until = await self.check_event_log()
        applied_at_fetch = self.state.last_applied_revision
        async with self.lock(self.request.environment, self.lock_timeout):
            if checked_until is not None and await self.record_quiet_check(checked_until):
                return
            await self.read_under_lock()
            if self.superseded(applied_at_fetch):
                return
            if self.holds_after_rollback():
                return
            if self.build_error:
                await record_refused(self.api, self.state, self.handle, self.revision, self.request.source.display,
                                     self.request.ref, self.build_error.problems, self.now)
                raise self.build_error
            await self.converge()

    @property
    def lock_timeout(self) -> float:
        return self.loaded.spec.rollout.lock_timeout_seconds if self.loaded else 300

    # -- fetch and build ---------------------------------------------------------------------------

    async def fetch(self) -> bool:
        """The recorded state, then one remote lookup. False when there is nothing more to do."""
        request, result = self.request, self.result
        # the record first: a run that applies a later revision after this read shows as a change of the
        # record once this run holds the lock, so superseded() sees it (read after the lookup, a revision
        # applied in between looked like history rewritten; found by the storm trial)
        self.state, self.handle = await self.api.read_state(request.environment, history=False)
        self.revision = result.revision = request.revision or request.source.resolve(request.ref)
        if self.holds_after_rollback():
            return False
        state = self.state
        if (not request.dry_run and not request.full_check and self.revision == state.last_applied_revision
                and not state.drift_check_due(self.now) and not state.has_unfinished_writes()
                and state.suspended is None):
            result.status = Status.UP_TO_DATE
            result.message = f"{self.revision[:12]} is applied and no drift check is due"
            return False
        return True

    def build(self) -> None:
        """The environment file at the revision, validated (a refusal is kept for the record)."""
        try:
            with self.request.source.checkout(self.revision) as tree:
                self.loaded = load_environment(tree, self.request.path, self.request.environment,
                                               defaults=self.request.defaults,
                                               cache_dir=default_cache_dir() / "parsed")
            self.result.file = self.loaded.file
        except ConfigError as exc:
            self.build_error = exc
        except (TransientError, PermanentError):
            self.source_failed = True  # status shows SourceFailed, as when the ref cannot be resolved
            raise

    def superseded(self, applied_at_fetch: str | None) -> bool:
        message = revision_gates.superseded(self.request, self.state, self.revision, applied_at_fetch)
        if message is not None:
            self.result.status, self.result.message = Status.UP_TO_DATE, message
        return message is not None

    def holds_after_rollback(self) -> bool:
        state, result = self.state, self.result
        if state.rolled_back is None or self.request.dry_run:
            return False
        if self.revision == state.rolled_back.from_revision and not self.request.force:
            result.status, result.rolled_back = Status.ROLLED_BACK, state.rolled_back
            result.message = (f"rolled back ({state.rolled_back.reason}) from {self.revision[:12]} to "
                              f"{(state.rolled_back.to_revision or 'the values before it')[:12]}; out of sync with "
                              f"Git until Git moves to a new revision or a reconcile is forced")
            return True
        state.rolled_back = None  # Git moved on (or --force): reconcile normally
        return False

    # -- the drift check by the event log, and the reads under the lock ------------------------------

    async def check_event_log(self) -> dt.datetime | None:
        if self.loaded is None:
            return None
        return await check_event_log(self.api, self.loaded.spec, self.state, self.revision,
                                     self.request.full_check, self.now, self.result)

    async def record_quiet_check(self, checked_until: dt.datetime) -> bool:
        """Record the event log's all-clear, unless another run recorded the state during the check."""
        assert self.loaded is not None
        spec = self.loaded.spec
        fresh, handle = await self.api.read_state(self.request.environment, history=False)
        if (fresh.drift_checked_until == self.state.drift_checked_until
                and fresh.may_check_by_events(self.revision, self.now, spec.drift.full_read_interval_seconds) is None):
            await record_quiet_check(self.api, fresh, handle, checked_until, spec, self.revision, self.result)
            return True
        self.result.drift_check = "full read: another run recorded the state during the check"
        return False

    async def read_under_lock(self) -> None:
        """Fresh state (another rollout may just have ended), with the server's side read at the same
        time for the targets known before the lock; read again only if the fresh inventory names others."""
        environment = self.request.environment
        if self.loaded is None:
            self.state, self.handle = await self.api.read_state(environment, history=False)
            return
        names = names_to_read(self.loaded.spec, self.state)
        (self.state, self.handle), self.actual = await read_together(
            self.api.read_state(environment, history=False), self.api.read_actual(**names))
        if names_to_read(self.loaded.spec, self.state) != names:
            self.actual = None

    # -- diff, gates, waves, record ------------------------------------------------------------------

    async def converge(self) -> None:
        await self.diff()
        if self.request.dry_run:
            self.report_plan()
            return
        assert self.loaded is not None  # safety gates first: they refuse the revision as a whole
        await self.refuse_if(revision_gates.history_refusal(self.request, self.state, self.revision))
        await self.refuse_if(revision_gates.mass_release_refusal(self.request, self.loaded, self.state))
        try:
            await self.check_gates()
        except RolloutHeld as held:
            await self.hold(held)
            return
        self.state.last_attempted_revision, self.state.last_attempted_at = self.revision, self.now
        self.state.source, self.state.ref = self.request.source.display, self.request.ref
        if await self.roll_out():
            await self.record()

    async def diff(self) -> None:
        assert self.loaded is not None
        spec, result = self.loaded.spec, self.result
        if self.actual is None:
            self.actual = await self.api.read_actual(**names_to_read(spec, self.state))
        self.plan = result.plan = plan(spec, self.actual, self.state.inventory,
                                       self.request.drift_mode or spec.drift.mode)
        remember_targets(result, self.actual)
        problems = self.plan.problems or policy_problems(spec, self.actual)
        policy = await read_policy(self.api.control, self.request.policy_block)  # a platform block: control server
        problems = [*problems, *check_policy(policy, self.request.environment, spec, self.actual)]
        if problems:
            result.problems = [self.loaded.problem(p.path, p.message) for p in problems]
            if not self.request.dry_run:
                await record_refused(self.api, self.state, self.handle, self.revision, self.request.source.display,
                                     self.request.ref, result.problems, self.now)
            raise ConfigError(result.problems)
        result.waves = assign_waves(self.plan.to_apply, spec, self.actual)
        result.smoke_tests = smoke_tests_for(self.plan.to_apply, spec, self.actual)

    def report_plan(self) -> None:
        result, changes = self.result, self.plan.changes
        if changes:
            result.status = Status.PLANNED
            result.message = (f"{len(changes)} change(s) pending in {len(result.waves)} wave(s), "
                              f"{len(result.smoke_tests)} smoke test(s) to run")
        else:  # a plan with nothing in it is news too: the environment matches Git
            result.status = Status.IN_SYNC
            result.message = f"{len(self.plan.noops)} managed key(s) match Git (dry run: nothing was written)"

    async def check_gates(self) -> None:
        """Gates that hold the whole revision: suspension, sync windows, promotion (RolloutHeld)."""
        assert self.loaded is not None
        spec, state, to_apply = self.loaded.spec, self.state, self.plan.to_apply
        if state.suspended is not None:
            raise RolloutHeld(Status.SUSPENDED, Reason.SUSPENDED,
                              f"reconciliation of {self.request.environment} is suspended since "
                              f"{state.suspended.at:%Y-%m-%d %H:%M:%S} UTC ({state.suspended.reason or 'no reason given'}); "
                              f"{len(self.plan.changes)} change(s) pending, nothing applied")
        if spec.sync_windows and to_apply:
            verdict = evaluate_windows(spec.sync_windows, self.now)
            if not verdict.allowed and not self.request.override_windows:
                raise RolloutHeld(Status.WINDOW_CLOSED, Reason.SYNC_WINDOW_CLOSED,
                                  f"{verdict.reason}; {len(to_apply)} change(s) planned, nothing applied "
                                  "(run with the window override to apply anyway)")
        promotion = spec.rollout.promotion
        if promotion is not None and to_apply:
            # the source environment's record, on the server that environment lives on
            async with environment_api(self.api.control, promotion.from_) as source_api:
                previous, handle = await source_api.read_state(promotion.from_, history=False)
            refused = unsoaked_images(to_apply, promotion, previous if handle is not None else None, self.now)
            if refused:
                raise RolloutHeld(Status.WAITING, Reason.PROMOTION_PENDING, "promotion gate: " + "; ".join(
                    f"{image}: {why}" for image, why in refused.items()) + "; nothing applied")

    async def refuse_if(self, refusal: RevisionRefused | None) -> None:
        """A safety gate refused the revision (revision_gates.py): record it, under the lock, and stop."""
        if refusal is not None:
            await revision_gates.record_refusal(self.api, self.state, self.handle, self.request, self.revision,
                                                refusal, self.now)
            raise refusal

    async def hold(self, held: RolloutHeld) -> None:
        self.result.status, self.result.message = Status(held.status), held.message
        self.result.held = list(self.plan.to_apply)
        self.state.condition = Condition(ready=False, reason=Reason(held.reason), message=held.message[:2000])
        await self.api.write_state(self.state, self.handle)

    async def roll_out(self) -> bool:
        """Each wave in turn; a wave that did not apply stops the later ones. False: a wave was rolled
        back (its record is written) and there is nothing left to record."""
        self.result.smoke_tests = []
        waves = self.result.waves
        for index, wave in enumerate(waves):
            await self.roll_out_wave(wave)
            if wave.state != "applied":
                for later in waves[index + 1:]:
                    later.state = "not started"
                    self.result.held.extend(later.changes)
                return wave.state != "rolled-back"
        return True

    async def roll_out_wave(self, wave: Wave) -> None:
        """smoke-test -> apply -> check for one wave; sets wave.state."""
        allowed = await self.smoke_test(wave)
        inventory_before = self.state.inventory
        applied = await self.apply_wave(wave, allowed)
        if applied and wave.state == "applied":
            await self.post_apply_check(wave, applied, inventory_before)

    async def smoke_test(self, wave: Wave) -> list[Change]:
        """The wave's changes the smoke-test gate lets through (all of them when no test is due)."""
        assert self.loaded is not None and self.actual is not None
        spec, result = self.loaded.spec, self.result
        tests = smoke_tests_for(self.plan.to_apply, spec, self.actual,
                                only={(c.target_type, c.target) for c in wave.changes})
        result.smoke_tests.extend(t for t in tests if t.id not in result.smoke_results)
        if not tests:
            return wave.changes
        if self.runner is None:
            raise PermanentError("smoke tests are required by the policy but no runner is available here")
        # an image proven in an earlier wave of this run (same policy) is not tested again
        result.smoke_results.update(await self.runner.run_all([t for t in tests if t.id not in result.smoke_results]))
        allowed, held = gate(wave.changes, tests, {t.id: result.smoke_results[t.id] for t in tests},
                             spec.smoke_test.gate)
        result.held.extend(held)
        return allowed

    async def apply_wave(self, wave: Wave, allowed: list[Change]) -> list[Change]:
        """Write the wave's allowed changes; returns those applied. Both bounds hold: the wave's
        max_parallel (file) and the run's write concurrency (--concurrency)."""
        result = self.result
        applied_before, failed_before = len(result.applied), len(result.failed)

        async def write() -> list[Change]:
            assert self.actual is not None
            self.handle = await apply_changes(self.api, self.state, self.handle, self.actual, allowed, self.revision,
                                              min(wave.max_parallel, self.request.concurrency), result)
            return result.applied[applied_before:]

        def failed_if(_: list[Change]) -> str | None:
            failed = len(result.failed) - failed_before
            return f"{failed} write(s) failed: " + "; ".join(result.errors[-failed:]) if failed else None

        name = f"{wave.name}: write {len(allowed)} change(s)" if allowed else ""
        applied = await (self.steps.run(name, write, failed_if) if allowed else write())
        wave.state = "failed" if (len(result.failed) > failed_before or len(allowed) < len(wave.changes)) else "applied"
        wave.message = f"{len(applied)} of {len(wave.changes)} change(s) applied"
        return applied

    async def post_apply_check(self, wave: Wave, applied: list[Change], inventory_before: Inventory) -> None:
        """Canary runs of the deployments the wave changed; a failure rolls the wave back."""
        assert self.loaded is not None
        post = self.loaded.spec.smoke_test.post_apply
        if post.kind != "canary" or self.runner is None:
            return
        # the deployments the wave changed, and the policy's deployment for pools it changed
        proving = (kind(c.target_type).proving_deployment(c.target, post.deployment) for c in applied)
        deployments = sorted({d for d in proving if d})
        runner = self.runner
        checks = await self.steps.run(
            f"post-apply check: {', '.join(deployments)}",
            lambda: runner.post_apply(deployments, post.parameters, post.timeout_seconds),
            lambda found: "; ".join(f"{d}: {r.reason} {r.message}" for d, r in found.items() if not r.passed) or None)
        self.result.post_apply_results.update(checks)
        failing = [f"{d}: {r.message}" for d, r in checks.items() if not r.passed]
        if failing:
            assert self.actual is not None
            await undo_wave(self.api, self.state, self.handle, self.actual, self.plan,
                            WaveToUndo(applied, inventory_before, failing), self.revision, self.request.concurrency,
                            self.result, self.now)
            wave.state = "rolled-back"
            wave.message = f"post-apply check failed; {len(self.result.reverted)} change(s) rolled back"

    async def record(self) -> None:
        assert self.loaded is not None
        interval = self.loaded.spec.drift.check_interval_seconds

        async def write() -> ReconcileResult:
            return await record_outcome(self.api, self.state, self.handle, self.plan, interval, self.revision,
                                        self.result, self.now)

        if not self.plan.to_apply:  # the no-op path: no task run for it
            await write()
            return
        await self.steps.run(f"record {self.revision[:12]}", write)
