"""The planner: desired (Git) + actual (server) + inventory -> a plan, as data.

Pure: no I/O. Every change says why it is there, every no-op says why
nothing is needed, every problem names the key it is about. The payload
builders at the bottom turn a target's changes into the body to write.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from prefect_gitops.model import EnvironmentFile
    from prefect_gitops.state import Inventory

TargetType = Literal["work_pool", "deployment", "work_queue"]
DriftMode = Literal["correct", "warn"]
_ABSENT = object()


class Change(BaseModel):
    target_type: TargetType
    target: str
    key: str
    action: Literal["set", "unset"]
    old: Any = None  # None with old_present=False: the key was absent
    new: Any = None
    reason: Literal["desired", "drift"]
    old_present: bool = True
    removed_from_git: bool = False  # the key left Git: unset it / restore the pool's old default
    apply: bool = True  # False: drift reported only (drift mode "warn")

    def describe(self) -> str:
        old = repr(self.old) if self.old_present else "(absent)"
        new = repr(self.new) if self.action == "set" else "(unset)"
        return f"{self.target_type} {self.target} {self.key}: {old} -> {new} [{self.reason}]"


class NoOp(BaseModel):
    target_type: TargetType
    target: str
    key: str
    reason: Literal["in-sync", "already-absent", "target-gone", "released"]
    value: Any = None


@dataclass(frozen=True)
class PlanProblem:
    path: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class PoolActual:
    name: str
    id: str
    base_job_template: dict

    @property
    def variables(self) -> dict:
        return self.base_job_template.get("variables") or {}

    @property
    def properties(self) -> dict:
        return self.variables.get("properties") or {}

    def default(self, key: str) -> Any:
        prop = self.properties.get(key)
        if not isinstance(prop, dict) or "default" not in prop:
            return _ABSENT
        return prop["default"]


@dataclass(frozen=True)
class DeploymentActual:
    name: str  # "<flow>/<deployment>"
    id: str
    work_pool_name: str | None
    job_variables: dict
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueActual:
    name: str  # "pool/queue"
    id: str | None  # None: does not exist yet
    values: dict  # priority, concurrency_limit, paused


@dataclass(frozen=True)
class ActualState:
    work_pools: dict[str, PoolActual] = field(default_factory=dict)
    deployments: dict[str, DeploymentActual] = field(default_factory=dict)
    work_queues: dict[str, QueueActual] = field(default_factory=dict)  # existing queues of the managed pools


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
    _validate(desired, actual, result)
    if result.problems:
        return result  # nothing is planned from input we refused

    from prefect_gitops.model import desired_work_queues

    wanted: dict[TargetType, dict[str, dict[str, Any]]] = {
        "work_pool": {name: dict(spec.job_variables) for name, spec in desired.work_pools.items()},
        "deployment": {name: dict(spec.job_variables) for name, spec in desired.deployments.items()},
        "work_queue": desired_work_queues(desired),
    }
    for target_type in ("work_pool", "deployment", "work_queue"):
        section = inventory.section(target_type)
        for target in sorted(set(wanted[target_type]) | set(section)):
            current = current_values(actual, target_type, target)
            desired_keys = wanted[target_type].get(target, {})
            for key in sorted(desired_keys):
                _plan_desired_key(result, target_type, target, key, desired_keys[key], current,
                                  inventory.get(target_type, target, key), drift_mode)
            for key in sorted(set(section.get(target, {})) - set(desired_keys)):
                _plan_removed_key(result, target_type, target, key, current, section[target][key])
    return result


def current_values(actual: ActualState, target_type: TargetType, target: str) -> dict[str, Any] | None:
    """The target's managed-level values on the server, or None when the target is gone."""
    if target_type == "work_pool":
        pool = actual.work_pools.get(target)
        if pool is None:
            return None
        return {k: pool.default(k) for k in pool.properties if pool.default(k) is not _ABSENT}
    if target_type == "work_queue":
        queue = actual.work_queues.get(target)
        if queue is None:  # a queue to create: nothing set yet, but its pool must still exist
            return {} if target.split("/", 1)[0] in actual.work_pools else None
        return dict(queue.values)
    deployment = actual.deployments.get(target)
    return None if deployment is None else dict(deployment.job_variables)


def _plan_desired_key(result: Plan, target_type: TargetType, target: str, key: str, value: Any,
                      current: dict[str, Any] | None, entry, drift_mode: DriftMode) -> None:
    assert current is not None  # _validate refused missing targets
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


def _plan_removed_key(result: Plan, target_type: TargetType, target: str, key: str,
                      current: dict[str, Any] | None, entry) -> None:
    if current is None:
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="target-gone"))
        return
    if target_type == "work_queue" and not entry.had_previous:
        # prefect-gitops created it: never deleted (runs may wait on it), just no longer managed
        result.noops.append(NoOp(target_type=target_type, target=target, key=key, reason="released"))
        return
    restore = target_type in ("work_pool", "work_queue") and entry.had_previous
    if restore:
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


def same_value(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0 but True != 1
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _validate(desired: EnvironmentFile, actual: ActualState, result: Plan) -> None:
    validators: dict[tuple[str, str], Any] = {}  # one JSON Schema validator per (pool, key), not per target
    control = desired.rollout.control_queue
    for pool in (control.work_pools or []) if control else []:
        if pool not in actual.work_pools:
            result.problems.append(PlanProblem(("rollout", "control_queue", "work_pools"),
                                               f"work pool {pool!r} does not exist on the Prefect server"))
    for name, spec in desired.work_pools.items():
        pool = actual.work_pools.get(name)
        if pool is None:
            result.problems.append(PlanProblem(("work_pools", name), f"work pool {name!r} does not exist on the Prefect server"))
            continue
        for key, value in spec.job_variables.items():
            _check_key(result, ("work_pools", name, "job_variables", key), pool, key, value, f"work pool {name!r}",
                       validators)
    for name, spec in desired.deployments.items():
        deployment = actual.deployments.get(name)
        if deployment is None:
            result.problems.append(PlanProblem(("deployments", name), f"deployment {name!r} does not exist on the Prefect server"))
            continue
        if not spec.job_variables:
            continue
        pool = actual.work_pools.get(deployment.work_pool_name or "")
        if pool is None:
            result.problems.append(PlanProblem(
                ("deployments", name),
                f"deployment {name!r} has no work pool ({deployment.work_pool_name!r}), so it takes no job variables"))
            continue
        for key, value in spec.job_variables.items():
            _check_key(result, ("deployments", name, "job_variables", key), pool, key, value,
                       f"deployment {name!r} (work pool {pool.name!r})", validators)


def _check_key(result: Plan, path: tuple[str, ...], pool: PoolActual, key: str, value: Any, owner: str,
               validators: dict[tuple[str, str], Any] | None = None) -> None:
    if key not in pool.properties:
        declared = ", ".join(sorted(pool.properties)) or "none"
        result.problems.append(PlanProblem(
            path, f"job variable {key!r} of {owner} is not declared by the base job template of "
                  f"work pool {pool.name!r} (declared: {declared})"))
        return
    message = _schema_violation(pool, key, value, validators)
    if message:
        result.problems.append(PlanProblem(path, f"job variable {key!r} of {owner}: {message}"))


def _schema_violation(pool: PoolActual, key: str, value: Any,
                      validators: dict[tuple[str, str], Any] | None = None) -> str | None:
    import jsonschema  # imported lazily: only planning with values needs it

    validator = validators.get((pool.name, key)) if validators is not None else None
    try:
        if validator is None:
            schema = dict(pool.properties[key])
            for defs in ("definitions", "$defs"):
                if defs in pool.variables:
                    schema[defs] = pool.variables[defs]
            schema.pop("default", None)
            validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validator = validator_cls(schema)
            if validators is not None:
                validators[(pool.name, key)] = validator
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except jsonschema.exceptions.SchemaError:
        return None  # a broken template is the pool's problem, not this value's
    return None if error is None else error.message


# -- payload builders: the body to write for one target -----------------------------------------

def pool_template_after(pool: PoolActual, changes: list[Change]) -> dict:
    template = copy.deepcopy(pool.base_job_template)
    properties = template.setdefault("variables", {}).setdefault("properties", {})
    for change in changes:
        prop = properties.setdefault(change.key, {})
        if change.action == "set":
            prop["default"] = change.new
        else:
            prop.pop("default", None)
    return template


def deployment_job_variables_after(deployment: DeploymentActual, changes: list[Change]) -> dict:
    variables = copy.deepcopy(deployment.job_variables)
    for change in changes:
        if change.action == "set":
            variables[change.key] = change.new
        else:
            variables.pop(change.key, None)
    return variables
