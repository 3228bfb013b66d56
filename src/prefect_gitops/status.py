"""How a run ended, and everything that follows from it, in one table. Pure.

A run's `Status` decides the CLI's exit code, the artifact's outcome line, the GitLab commit
status, the state the flow run ends in and the event sent for it. They used to live in five
places; a new status is now one row here. `Reason` is the typed reason of the environment's
condition (what `status` and the record show).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    APPLIED = "applied"
    IN_SYNC = "in-sync"
    UP_TO_DATE = "up-to-date"
    PLANNED = "planned"
    DRIFT_WARNED = "drift-warned"
    ROLLED_BACK = "rolled-back"
    FAILED = "failed"
    BUSY = "busy"
    SUSPENDED = "suspended"
    WINDOW_CLOSED = "window-closed"
    WAITING = "waiting"
    PROMOTED = "promoted"
    REFUSED = "refused"  # a safety gate refused the revision (emptied, mass release, history rewritten)


class RunEnd(StrEnum):
    """The state the control flow's run ends in."""

    COMPLETED = "Completed"
    FAILED = "Failed"
    BUSY = "Busy"  # a Cancelled state named Busy: neither a success nor a failure of this run


EXIT_OK, EXIT_FAILED, EXIT_BUSY, EXIT_HELD = 0, 1, 3, 4
EXIT_REFUSED = 5  # the revision was refused by a safety gate (revision_gates.py); nothing written
FAILED_EVENT = "prefect-gitops.reconcile.failed"


@dataclass(frozen=True)
class Outcome:
    summary: str  # the artifact's and the terminal's outcome line
    exit_code: int
    commit_status: str  # GitLab: pending, running, success, failed, canceled
    run_end: RunEnd
    event: str | None = None  # sent for the run as a whole (change-level events are sent besides)

    @property
    def ok(self) -> bool:
        return self.run_end is RunEnd.COMPLETED

    @property
    def held(self) -> bool:
        """Planned and reported, deliberately not applied: a gate holds the revision."""
        return self.exit_code == EXIT_HELD


def _done(summary: str) -> Outcome:
    return Outcome(summary, exit_code=EXIT_OK, commit_status="success", run_end=RunEnd.COMPLETED)


def _held(summary: str) -> Outcome:
    return Outcome(summary, exit_code=EXIT_HELD, commit_status="success", run_end=RunEnd.COMPLETED)


OUTCOMES: dict[Status, Outcome] = {
    Status.APPLIED: _done("Applied"),
    Status.IN_SYNC: _done("In sync: nothing to change"),
    Status.UP_TO_DATE: _done("Up to date: Git has not moved and no drift check was due"),
    Status.PLANNED: _done("Planned only (dry run): nothing was written"),
    Status.DRIFT_WARNED: _done("Drift reported, not corrected (drift mode warn)"),
    Status.ROLLED_BACK: _done("Rolled back: the environment runs an earlier revision than Git"),
    Status.PROMOTED: _done("Promoted: the images were committed to the next environment's file"),
    Status.FAILED: Outcome("Failed", exit_code=EXIT_FAILED, commit_status="failed", run_end=RunEnd.FAILED,
                           event=FAILED_EVENT),
    Status.BUSY: Outcome("Another rollout of this environment is in progress: nothing was written",
                         exit_code=EXIT_BUSY, commit_status="canceled", run_end=RunEnd.BUSY),
    Status.SUSPENDED: _held("Suspended: planned and reported, nothing applied"),
    Status.WINDOW_CLOSED: _held("Sync window closed: planned and reported, nothing applied"),
    Status.WAITING: _held("Waiting for the promotion gate: nothing applied"),
    Status.REFUSED: Outcome("Refused: the revision needs explicit consent (see the message); nothing was written",
                            exit_code=EXIT_REFUSED, commit_status="failed", run_end=RunEnd.FAILED, event=FAILED_EVENT),
}


def outcome(status: Status | str) -> Outcome:
    return OUTCOMES[Status(status)]


def exit_code(status: Status | str | None, completed: bool) -> int:
    """The CLI's exit code for a run's report (`completed`: whether the flow run completed)."""
    if status is None or status not in Status.__members__.values():
        return EXIT_OK if completed else EXIT_FAILED
    row = outcome(status)
    if row.exit_code in (EXIT_BUSY, EXIT_HELD, EXIT_REFUSED):
        return row.exit_code
    return EXIT_OK if completed else EXIT_FAILED


class Reason(StrEnum):
    """Why the environment's condition is what it is (Flux's condition reasons)."""

    APPLIED = "Applied"
    IN_SYNC = "InSync"
    DRIFT_WARNED = "DriftWarned"
    APPLY_FAILED = "ApplyFailed"
    SMOKE_TEST_FAILED = "SmokeTestFailed"
    ROLLED_BACK = "RolledBack"
    VALIDATION_FAILED = "ValidationFailed"
    SOURCE_FAILED = "SourceFailed"
    SIGNATURE_INVALID = "SignatureInvalid"  # the revision is unsigned or signed by an untrusted signer
    SUSPENDED = "Suspended"
    RESUMED = "Resumed"
    SYNC_WINDOW_CLOSED = "SyncWindowClosed"
    PROMOTION_PENDING = "PromotionPending"
    EMPTY_REVISION = "EmptyRevision"  # the file manages nothing, or would release every managed key
    MASS_RELEASE = "MassRelease"  # would release more of the managed keys than rollout.release_limit allows
    HISTORY_REWRITTEN = "HistoryRewritten"  # does not descend from the last applied revision
    NO_CHANGE = "NoChange"  # written by the first releases; read back from old records
