"""What a reconcile (or a rollback) did, as data, and its JSON report. Pure.

Filled in step by step by the reconcile; rendered by report.py, sent as events and the artifact by
adapters/events.py, returned by the flows and printed by the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from prefect_gitops.errors import ConfigError, ConfigProblem, GitOpsError, TransientError
from prefect_gitops.plan import Change, Plan
from prefect_gitops.smoke import SmokeResult, SmokeTest
from prefect_gitops.state import RolledBack
from prefect_gitops.status import Status, outcome
from prefect_gitops.waves import Wave


@dataclass
class ReconcileResult:
    environment: str
    status: Status = Status.FAILED
    revision: str | None = None
    plan: Plan | None = None
    problems: list[ConfigProblem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    error_kind: Literal["transient", "permanent"] | None = None
    applied: list[Change] = field(default_factory=list)
    failed: list[Change] = field(default_factory=list)
    write_errors: list[GitOpsError] = field(default_factory=list)  # why `failed` failed, typed
    held: list[Change] = field(default_factory=list)  # not applied because a smoke test failed or a gate held
    smoke_tests: list[SmokeTest] = field(default_factory=list)
    smoke_results: dict[str, SmokeResult] = field(default_factory=dict)
    post_apply_results: dict[str, SmokeResult] = field(default_factory=dict)
    reverted: list[Change] = field(default_factory=list)  # automatic rollback writes
    waves: list[Wave] = field(default_factory=list)
    rolled_back: RolledBack | None = None
    targets: dict[tuple[str, str], str] = field(default_factory=dict)  # (kind, name) -> server id
    file: str | None = None
    flow_run_id: str | None = None
    message: str = ""
    drift_check: str | None = None  # how Git-unchanged drift was looked for: "event log" or "full read: <why>"

    @property
    def ok(self) -> bool:
        return outcome(self.status).ok

    @property
    def failed_smoke_tests(self) -> list[tuple[SmokeTest, SmokeResult]]:
        return [(t, self.smoke_results[t.id]) for t in self.smoke_tests
                if t.id in self.smoke_results and not self.smoke_results[t.id].passed]

    @classmethod
    def failed_before_start(cls, environment: str, exc: GitOpsError, flow_run_id: str | None = None) -> ReconcileResult:
        """A run that could not start (the environment's GitOps Target block could not be read)."""
        result = cls(environment=environment, flow_run_id=flow_run_id)
        result.fail(exc)
        return result

    def fail(self, exc: GitOpsError) -> None:
        """End the run failed because of `exc` (its type says transient or permanent)."""
        if isinstance(exc, ConfigError):
            self.problems.extend(p for p in exc.problems if p not in self.problems)
        else:
            self.errors.append(str(exc))
        self.error_kind = "transient" if isinstance(exc, TransientError) else "permanent"
        self.status = Status.FAILED
        self.message = "; ".join([str(p) for p in self.problems] + self.errors)

    def record_writes(self, applied: list[Change], failed: list[Change], errors: list[GitOpsError]) -> None:
        self.applied.extend(applied)
        self.failed.extend(failed)
        self.write_errors.extend(errors)
        self.errors.extend(str(e) for e in errors)

    @property
    def writes_failed_transiently(self) -> bool:
        """Every failed write failed for a reason that retrying may cure (the server busy or away)."""
        return bool(self.failed) and all(isinstance(e, TransientError) for e in self.write_errors)

    def to_json(self) -> dict[str, Any]:
        changes = self.plan.changes if self.plan else []
        return {
            "environment": self.environment,
            "revision": self.revision,
            "status": str(self.status),
            "message": self.message,
            "changes": [c.model_dump(mode="json") for c in changes],
            "errors": [p.to_dict() for p in self.problems] + [{"message": e} for e in self.errors],
            "applied": len(self.applied),
            "held": len(self.held),
            "smoke_tests": [self._smoke_test_json(t) for t in self.smoke_tests],
            "post_apply": {d: {"result": r.reason, "message": r.message} for d, r in self.post_apply_results.items()},
            "rolled_back": self.rolled_back.model_dump(mode="json") if self.rolled_back else None,
            "waves": [{"wave": w.number, "name": w.name, "state": w.state, "changes": len(w.changes),
                       "max_parallel": w.max_parallel, "message": w.message} for w in self.waves],
            "flow_run_id": self.flow_run_id,
            "drift_check": self.drift_check,
        }

    def _smoke_test_json(self, test: SmokeTest) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": test.kind, "image": test.image, "targets": [n for _, n in test.targets],
                                 "deployment": test.deployment}
        if test.id in self.smoke_results:
            r = self.smoke_results[test.id]
            entry.update(result=r.reason, message=r.message, log_tail=r.log_tail)
        return entry
