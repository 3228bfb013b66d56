"""The planner: desired (Git) + actual (server) + inventory -> a plan, as data.

Pure: no I/O. Every change says why it is there, every no-op says why
nothing is needed, every problem names the key it is about. What differs
between target kinds (reading values, validating, removal) is in kinds/;
the planner walks the registered kinds in write order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from prefect_gitops.kinds import KINDS, TargetKind
from prefect_gitops.kinds.deployment import DeploymentActual
from prefect_gitops.kinds.work_pool import PoolActual
from prefect_gitops.kinds.work_queue import QueueActual
from prefect_gitops.targets import ActualState, Change, NoOp, PlanProblem, TargetType, same_value

if TYPE_CHECKING:
    from prefect_gitops.model import EnvironmentFile
    from prefect_gitops.state import Inventory, ManagedKey

__all__ = ["ActualState", "Change", "DeploymentActual", "DriftMode", "NoOp", "Plan", "PlanProblem", "PoolActual",
           "QueueActual", "TargetType", "plan", "same_value"]

DriftMode = Literal["correct", "warn"]


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    noops: list[NoOp] = field(default_factory=list)
    problems: list[PlanProblem] = field(default_factory=list)

    @property
    def to_apply(self) -> list[Change]:
        return [c for c in self.changes if c.apply]

    @property
    def drift(self) -> list[Change]:
        return [c for c in self.changes if c.reason == "drift"]

    def targets(self, changes: list[Change] | None = None) -> list[tuple[TargetType, str]]:
        seen: dict[tuple[TargetType, str], None] = {}
        for c in self.to_apply if changes is None else changes:
            seen[(c.target_type, c.target)] = None
        return list(seen)


def plan(desired: EnvironmentFile, actual: ActualState, inventory: Inventory, drift_mode: DriftMode) -> Plan:
    result = Plan()
    cache: dict[Any, Any] = {}  # shared by the kinds' checks (one JSON Schema validator per pool and key)
    for target_kind in KINDS:
        result.problems.extend(target_kind.validate(desired, actual, cache))
    if result.problems:
        return result  # nothing is planned from input we refused
    for target_kind in KINDS:
        _plan_kind(result, target_kind, desired, actual, inventory, drift_mode)
    return result


def _plan_kind(result: Plan, target_kind: TargetKind, desired: EnvironmentFile, actual: ActualState,
               inventory: Inventory, drift_mode: DriftMode) -> None:
    wanted = target_kind.desired(desired)
    section = inventory.section(target_kind.name)
    for target in sorted(set(wanted) | set(section)):
        current = target_kind.current_values(actual, target)
        desired_keys = wanted.get(target, {})
        for key in sorted(desired_keys):
            _plan_desired_key(result, target_kind.name, target, key, desired_keys[key], current,
                              inventory.get(target_kind.name, target, key), drift_mode)
        # a target the server no longer has gets nothing back (a missing queue would be created to restore it)
        exists = target in target_kind.actuals(actual)
        for key in sorted(set(section.get(target, {})) - set(desired_keys)):
            _plan_removed_key(result, target_kind, target, key, current if exists else None, section[target][key])


def _plan_desired_key(result: Plan, target_type: TargetType, target: str, key: str, value: Any,
                      current: dict[str, Any] | None, entry: ManagedKey | None, drift_mode: DriftMode) -> None:
    assert current is not None  # the kind's validate refused missing targets
    present = key in current
    if present and same_value(current[key], value):
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="in-sync", value=value))
        return
    drifted = entry is not None and entry.applied and same_value(entry.value, value)
    result.changes.append(Change(
        target_type=target_type, target=target, key=key, action="set",
        old=current.get(key), old_present=present, new=value,
        reason="drift" if drifted else "desired",
        apply=not (drifted and drift_mode == "warn"),
    ))


def _plan_removed_key(result: Plan, target_kind: TargetKind, target: str, key: str,
                      current: dict[str, Any] | None, entry: ManagedKey) -> None:
    target_type = target_kind.name
    if current is None:
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="target-gone"))
        return
    if target_kind.releases_created and not entry.had_previous:
        # prefect-gitops created it: never deleted (runs may wait on it), just no longer managed
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="released"))
        return
    if target_kind.restores_previous and entry.had_previous:
        if key in current and same_value(current[key], entry.previous):
            result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="already-absent"))
            return
        result.changes.append(Change(
            target_type=target_type, target=target, key=key, action="set", old=current.get(key),
            old_present=key in current, new=entry.previous, reason="desired", removed_from_git=True))
        return
    if key not in current:
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="already-absent"))
        return
    result.changes.append(Change(
        target_type=target_type, target=target, key=key, action="unset", old=current[key],
        new=None, reason="desired", removed_from_git=True))
