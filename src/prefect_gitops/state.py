"""What prefect-gitops remembers per environment, stored in Prefect (see adapters/prefect_api.py).

Pure data and pure transitions. The inventory is written ahead of every
apply (entries marked applied=False) and completed after, so a reconcile
killed at any point leaves enough behind for the next one to converge
without losing the values that existed before prefect-gitops took a key over.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, Field

from prefect_gitops.kinds import KINDS, kind
from prefect_gitops.plan import Change, NoOp, Plan, TargetType
from prefect_gitops.targets import same_value
from prefect_gitops.status import Reason

HISTORY_LIMIT = 50


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class ManagedKey(BaseModel):
    value: Any = Field(description="The value Git asks for (and, once applied, the value written).")
    applied: bool = Field(description="False while a write of `value` is in flight or failed.")
    had_previous: bool = Field(description="Whether the key existed before prefect-gitops first set it.")
    previous: Any = Field(default=None, description="Its value then; restored for pool defaults.")
    revision: str | None = None
    applied_at: dt.datetime | None = Field(default=None, description="When `value` was first applied.")
    # While applied is False: what the key held before this write, so that a later run which finds the
    # write landed (its run was killed before recording it) can put the change in the history.
    pending_old: Any = Field(default=None, description="While not applied: the value before this write.")
    pending_old_present: bool = Field(default=False, description="While not applied: whether the key existed.")


class Inventory(BaseModel):
    """Managed keys by target, one field per registered kind (its `section`)."""

    work_pools: dict[str, dict[str, ManagedKey]] = Field(default_factory=dict)
    deployments: dict[str, dict[str, ManagedKey]] = Field(default_factory=dict)
    work_queues: dict[str, dict[str, ManagedKey]] = Field(default_factory=dict)

    def section(self, target_type: TargetType) -> dict[str, dict[str, ManagedKey]]:
        section: dict[str, dict[str, ManagedKey]] = getattr(self, kind(target_type).section)
        return section

    def get(self, target_type: TargetType, target: str, key: str) -> ManagedKey | None:
        return self.section(target_type).get(target, {}).get(key)

    def put(self, target_type: TargetType, target: str, key: str, entry: ManagedKey) -> None:
        self.section(target_type).setdefault(target, {})[key] = entry

    def drop(self, target_type: TargetType, target: str, key: str) -> None:
        keys = self.section(target_type).get(target)
        if keys is not None:
            keys.pop(key, None)
            if not keys:
                del self.section(target_type)[target]

    def count(self) -> int:
        return sum(len(keys) for k in KINDS for keys in self.section(k.name).values())


class Condition(BaseModel):
    ready: bool
    reason: Reason
    message: str = ""
    at: dt.datetime = Field(default_factory=utcnow)


class HistoryEntry(BaseModel):
    revision: str
    seq: int | None = Field(default=None, description="Its number in the environment's history (None until stored).")
    outcome: Literal["applied", "partial", "failed", "rolled-back", "rollback"]
    started_at: dt.datetime
    finished_at: dt.datetime
    flow_run_id: str | None = None
    changes: list[Change] = Field(default_factory=list, description="What was written, in order.")
    reverted: list[Change] = Field(
        default_factory=list, description="Automatic rollback: the writes that undid `changes`.")
    failures: list[str] = Field(default_factory=list)


class HistorySummary(BaseModel):
    """A history entry without its changes: what the index in the state keeps of every stored entry, so
    that status and rollback can choose entries without reading them all."""

    seq: int | None
    revision: str
    outcome: Literal["applied", "partial", "failed", "rolled-back", "rollback"]
    started_at: dt.datetime
    finished_at: dt.datetime
    flow_run_id: str | None = None
    changes: int = 0
    failures: int = 0
    document: str | None = Field(default=None, description="Its block document's id, once stored.")

    @classmethod
    def of(cls, entry: HistoryEntry) -> HistorySummary:
        return cls(seq=entry.seq, revision=entry.revision, outcome=entry.outcome, started_at=entry.started_at,
                   finished_at=entry.finished_at, flow_run_id=entry.flow_run_id, changes=len(entry.changes),
                   failures=len(entry.failures))


class RolledBack(BaseModel):
    """The environment runs an older revision than Git on purpose; reconciles hold until Git moves."""

    from_revision: str
    to_revision: str | None
    at: dt.datetime = Field(default_factory=utcnow)
    reason: Literal["manual", "automatic"]
    flow_run_id: str | None = None
    message: str = ""


class Suspension(BaseModel):
    at: dt.datetime = Field(default_factory=utcnow)
    reason: str = ""


class EnvironmentState(BaseModel):
    environment: str
    source: str | None = None  # URL without credentials
    ref: str | None = None
    last_attempted_revision: str | None = None
    last_attempted_at: dt.datetime | None = None
    last_applied_revision: str | None = None
    last_applied_at: dt.datetime | None = None
    last_applied_source: str | None = Field(
        default=None, description="The repository (URL without credentials) the last applied revision came from.")
    last_drift_check_at: dt.datetime | None = None
    drift_check_interval_seconds: int = 300
    last_full_read_at: dt.datetime | None = Field(
        default=None, description="When a drift check last read every target (not just the event log).")
    drift_checked_until: dt.datetime | None = Field(
        default=None, description="Changes that occurred before this are reflected in the condition; a "
        "drift check asks the event log for those since (drift_events.py says how far each check covers).")
    condition: Condition | None = None
    rolled_back: RolledBack | None = None
    suspended: Suspension | None = None
    inventory: Inventory = Field(default_factory=Inventory)
    history: list[HistoryEntry] = Field(default_factory=list, description=(
        "Newest first: the stored entries when read with their history, else only those added since the read."))
    history_index: list[HistorySummary] = Field(default_factory=list, description=(
        "Every stored history entry (and those added since the read), newest first, without its changes."))

    def drift_check_due(self, now: dt.datetime) -> bool:
        if self.last_drift_check_at is None:
            return True
        elapsed = (now - self.last_drift_check_at).total_seconds()
        return elapsed >= self.drift_check_interval_seconds

    def may_check_by_events(self, revision: str, now: dt.datetime, full_read_interval: int) -> str | None:
        """None if a drift check may ask the event log instead of reading every target, else why not."""
        if full_read_interval <= 0:
            return "drift.full_read_interval_seconds is 0"
        if revision != self.last_applied_revision:
            return "the revision is not the one applied"
        if self.rolled_back is not None or self.suspended is not None:
            return "the environment is rolled back or suspended"
        if self.condition is None or not self.condition.ready:
            return "the last check did not end in sync"
        if self.has_unfinished_writes():
            return "a write is unfinished"
        if self.drift_checked_until is None or self.last_full_read_at is None:
            return "no full read is recorded"
        if (now - self.last_full_read_at).total_seconds() >= full_read_interval:
            return "a full read is due"
        return None

    def has_unfinished_writes(self) -> bool:
        return any(
            not entry.applied
            for k in KINDS
            for keys in self.inventory.section(k.name).values()
            for entry in keys.values()
        )

    def add_history(self, entry: HistoryEntry) -> None:
        self.history.insert(0, entry)
        del self.history[HISTORY_LIMIT:]
        self.history_index.insert(0, HistorySummary.of(entry))


def _copy(inventory: Inventory) -> Inventory:
    """A copy to change: new mappings and new entries. (Much cheaper than a deep copy for thousands of
    keys; the JSON values inside entries are shared, and nothing changes them in place.)"""
    sections: dict[str, Any] = {
        section: {target: {key: entry.model_copy() for key, entry in keys.items()}
                  for target, keys in getattr(inventory, section).items()}
        for section in (k.section for k in KINDS)}
    return Inventory.model_construct(None, **sections)


def begin_apply(inventory: Inventory, changes: list[Change], revision: str) -> Inventory:
    """Write-ahead: claim every key about to be set, remembering what it held before."""
    out = _copy(inventory)
    for change in changes:
        if change.removed_from_git:
            continue  # the entry (with its previous value) stays until the removal succeeds
        entry = out.get(change.target_type, change.target, change.key)
        if entry is None:
            entry = ManagedKey(value=change.new, applied=False, had_previous=change.old_present, previous=change.old)
        else:
            entry = entry.model_copy(update={"value": change.new, "applied": False})
        entry.revision = revision
        entry.pending_old, entry.pending_old_present = change.old, change.old_present
        out.put(change.target_type, change.target, change.key, entry)
    return out


def finish_apply(inventory: Inventory, plan: Plan, applied: list[Change], revision: str) -> Inventory:
    """Record what was actually written, and adopt keys already in sync."""
    out = _copy(inventory)
    for change in applied:
        if change.removed_from_git:
            out.drop(change.target_type, change.target, change.key)
        else:
            entry = out.get(change.target_type, change.target, change.key)
            if entry is not None:
                out.put(change.target_type, change.target, change.key, entry.model_copy(
                    update={"applied": True, "value": change.new, "revision": revision, "applied_at": utcnow()}))
    for noop in plan.noops:
        entry = out.get(noop.target_type, noop.target, noop.key)
        if noop.reason in ("already-absent", "target-gone", "released"):
            out.drop(noop.target_type, noop.target, noop.key)
        elif noop.reason == "in-sync":
            if entry is None:
                # Git and the server already agree: take the key over, its current value is its "before".
                entry = ManagedKey(value=noop.value, applied=True, had_previous=True, previous=noop.value,
                                   revision=revision, applied_at=utcnow())
            else:
                entry = entry.model_copy(update={"applied": True, "value": noop.value,
                                                 "applied_at": entry.applied_at or utcnow()})
            out.put(noop.target_type, noop.target, noop.key, entry)
    return out


def completed_writes(inventory: Inventory, plan: Plan, recorded: list[Change] | None = None) -> list[Change]:
    """Writes an earlier run made but never recorded (it was killed after the server applied them):
    keys still marked unapplied that the server now holds at the value written, less those `recorded`
    names (the newest history entry: a run killed between its history write and its state write). They
    belong in the history of the run that finds them, or no entry would name them (and a rollback
    would miss them)."""
    def named(noop: NoOp) -> bool:
        return any((c.target_type, c.target, c.key) == (noop.target_type, noop.target, noop.key)
                   and c.action == "set" and same_value(c.new, noop.value) for c in recorded or [])

    found = []
    for noop in plan.noops:
        entry = inventory.get(noop.target_type, noop.target, noop.key)
        if (noop.reason == "in-sync" and entry is not None and not entry.applied
                and same_value(entry.value, noop.value) and not named(noop)):
            found.append(Change(target_type=noop.target_type, target=noop.target, key=noop.key, action="set",
                                old=entry.pending_old, old_present=entry.pending_old_present, new=noop.value,
                                reason="desired"))
    return found


def managed_values(inventory: Inventory) -> dict[TargetType, dict[str, dict[str, Any]]]:
    """The values prefect-gitops has applied, by target."""
    return {
        target_kind.name: {t: {k: e.value for k, e in keys.items() if e.applied}
                           for t, keys in inventory.section(target_kind.name).items()}
        for target_kind in KINDS
    }


def values_at(state: EnvironmentState, newer: list[HistoryEntry]) -> dict[TargetType, dict[str, dict[str, Any]]]:
    """Managed values right before the `newer` entries (newest first: every entry after the one to go
    back to), by undoing them from the current inventory."""
    values = managed_values(state.inventory)
    for entry in newer:
        for change in reversed(entry.changes + entry.reverted):
            keys = values[change.target_type].setdefault(change.target, {})
            if change.old_present:
                keys[change.key] = change.old
            else:
                keys.pop(change.key, None)
    return {kind: {t: keys for t, keys in targets.items() if keys} for kind, targets in values.items()}


def find_rollback_target(state: EnvironmentState, to_revision: str | None, steps: int | None) -> int:
    """Index in the history index of the apply to go back to. Raises ValueError with a readable reason.

    Steps count distinct Git revisions that reconciles applied, newest first, from the one
    applied now; rollbacks themselves are not steps.
    """
    history = state.history_index
    applied = [i for i, h in enumerate(history) if h.outcome == "applied"]
    if to_revision is not None:
        if len(to_revision) >= 7:
            for i in applied + [i for i, h in enumerate(history) if h.outcome == "rollback"]:
                if history[i].revision.startswith(to_revision):
                    return i
        raise ValueError(f"revision {to_revision!r} is not in the recorded history of {state.environment!r} "
                         f"(the last {len(history)} applies are kept)")
    if steps is None or steps < 1:
        raise ValueError("give --to REVISION or --steps N (N >= 1)")
    newest: dict[str, int] = {}
    for i in applied:
        newest.setdefault(history[i].revision, i)
    revisions = list(newest)
    current = state.last_applied_revision
    start = revisions.index(current) if current in revisions else -1
    if start + steps >= len(revisions):
        raise ValueError(f"only {len(revisions) - 1 - start} earlier applied revision(s) are recorded "
                         f"for {state.environment!r}")
    return newest[revisions[start + steps]]
