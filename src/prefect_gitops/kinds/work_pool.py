"""Work pools: prefect-gitops manages the defaults of a pool's base job template variables
(base_job_template.variables.properties.KEY.default). Pure.

The pool's template also declares which job variables exist and their JSON Schemas: deployments'
keys are checked against it here too (`check_job_variable`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from prefect_gitops.kinds.base import ByTarget, TargetKind, mismatch
from prefect_gitops.targets import ABSENT, ActualState, Change, PlanProblem

if TYPE_CHECKING:
    from prefect_gitops.drift_events import ChangeEvent, Watched
    from prefect_gitops.model import EnvironmentFile, WaveSelector, WorkPoolSpec
    from prefect_gitops.state import ManagedKey


@dataclass(frozen=True)
class PoolActual:
    name: str
    id: str
    base_job_template: dict[str, Any]

    @property
    def variables(self) -> dict[str, Any]:
        return self.base_job_template.get("variables") or {}

    @property
    def properties(self) -> dict[str, Any]:
        return self.variables.get("properties") or {}

    def default(self, key: str) -> Any:
        prop = self.properties.get(key)
        if not isinstance(prop, dict) or "default" not in prop:
            return ABSENT
        return prop["default"]

    def defaults(self) -> dict[str, Any]:
        return {k: self.default(k) for k in self.properties if self.default(k) is not ABSENT}


class WorkPoolWrites(Protocol):
    async def update_work_pool(self, name: str, base_job_template: dict[str, Any]) -> None: ...


def template_after(pool: PoolActual, changes: list[Change]) -> dict[str, Any]:
    """The base job template to write: the pool's, with the changed keys' defaults set or taken out."""
    template = copy.deepcopy(pool.base_job_template)
    properties = template.setdefault("variables", {}).setdefault("properties", {})
    for change in changes:
        prop = properties.setdefault(change.key, {})
        if change.action == "set":
            prop["default"] = change.new
        else:
            prop.pop("default", None)
    return template


def image_of(pool: PoolActual) -> Any:
    value = pool.default("image")
    return None if value is ABSENT else value


# -- job variables against a pool's template (pools' defaults and deployments' own values) ----------------

def check_job_variable(path: tuple[str, ...], pool: PoolActual, key: str, value: Any, owner: str,
                       cache: dict[Any, Any]) -> PlanProblem | None:
    """A problem when the pool's template does not declare `key` or its schema refuses `value`."""
    if key not in pool.properties:
        declared = ", ".join(sorted(pool.properties)) or "none"
        return PlanProblem(path, f"job variable {key!r} of {owner} is not declared by the base job template of "
                                 f"work pool {pool.name!r} (declared: {declared})")
    message = _schema_violation(pool, key, value, cache)
    return PlanProblem(path, f"job variable {key!r} of {owner}: {message}") if message else None


def _schema_violation(pool: PoolActual, key: str, value: Any, cache: dict[Any, Any]) -> str | None:
    """`cache`: one JSON Schema validator per (pool, key), not per target."""
    import jsonschema  # imported lazily: only planning with values needs it

    validator = cache.get((pool.name, key))
    try:
        if validator is None:
            schema = dict(pool.properties[key])
            for defs in ("definitions", "$defs"):
                if defs in pool.variables:
                    schema[defs] = pool.variables[defs]
            schema.pop("default", None)
            validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
            validator = cache[(pool.name, key)] = validator_cls(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
    except jsonschema.exceptions.SchemaError:
        return None  # a broken template is the pool's problem, not this value's
    return None if error is None else str(error.message)


class WorkPoolKind(TargetKind):
    name = "work_pool"
    section = "work_pools"
    label = "work pool"
    event_resource = "prefect.work-pool"
    restores_previous = True  # a default that leaves Git gets the pool's default before back
    runs_images = True

    def actuals(self, actual: ActualState) -> Mapping[str, PoolActual]:
        return actual.work_pools

    def desired(self, spec: EnvironmentFile) -> dict[str, dict[str, Any]]:
        return {name: dict(pool.job_variables) for name, pool in spec.work_pools.items()}

    def current_values(self, actual: ActualState, target: str) -> dict[str, Any] | None:
        pool = actual.work_pools.get(target)
        return None if pool is None else pool.defaults()

    def validate(self, spec: EnvironmentFile, actual: ActualState, cache: dict[Any, Any]) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        for name, pool_spec in spec.work_pools.items():
            pool = actual.work_pools.get(name)
            if pool is None:
                problems.append(PlanProblem((self.section, name),
                                            f"work pool {name!r} does not exist on the Prefect server"))
                continue
            for key, value in pool_spec.job_variables.items():
                problem = check_job_variable((self.section, name, "job_variables", key), pool, key, value,
                                             f"work pool {name!r}", cache)
                problems.extend([problem] if problem else [])
        return problems

    def after(self, actual: ActualState, target: str, changes: list[Change]) -> PoolActual:
        pool = actual.work_pools[target]
        return replace(pool, base_job_template=template_after(pool, changes))

    async def write(self, api: WorkPoolWrites, actual: ActualState, target: str, changes: list[Change]) -> None:
        await api.update_work_pool(target, template_after(actual.work_pools[target], changes))

    def spec_of(self, spec: EnvironmentFile, target: str) -> WorkPoolSpec | None:
        return spec.work_pools.get(target)

    def selected_by(self, selector: WaveSelector, target: str, actual: ActualState) -> bool:
        return any(fnmatchcase(target, pattern) for pattern in selector.work_pools)

    def proving_deployment(self, target: str, configured: str | None) -> str | None:
        return configured  # a pool runs nothing itself: the policy names the deployment to run

    def image_after(self, actual: ActualState, target: str, changes: list[Change], by_target: ByTarget) -> Any:
        return image_of(actual.work_pools[target])

    def add_to_file(self, file: dict[str, Any], target: str, values: dict[str, Any]) -> None:
        file.setdefault(self.section, {}).setdefault(target, {})["job_variables"] = values

    def watched(self, target: str, watched: Watched) -> bool:
        return target in watched.work_pools

    def event_reason(self, what: str, events: list[ChangeEvent], managed: dict[str, ManagedKey]) -> str | None:
        updates = [e.updates["base_job_template"] for e in events if "base_job_template" in e.updates]
        if not updates:
            return None
        before, after = updates[0].get("from"), updates[-1].get("to")
        if not isinstance(before, dict) or not isinstance(after, dict):
            return f"{what}: base job template changed"
        if _without_defaults(before, managed) != _without_defaults(after, managed):
            return f"{what}: base job template changed beyond the defaults prefect-gitops manages"
        return mismatch(what, managed, PoolActual("", "", after).defaults())


def _without_defaults(template: dict[str, Any], managed: Mapping[str, Any]) -> dict[str, Any]:
    """The template with the managed keys' defaults taken out (what else changing matters)."""
    out = {**template, "variables": {**(template.get("variables") or {})}}
    properties = {**(out["variables"].get("properties") or {})}
    for key in managed:
        if isinstance(properties.get(key), dict):
            properties[key] = {k: v for k, v in properties[key].items() if k != "default"}
    out["variables"]["properties"] = properties
    return out


WORK_POOL = WorkPoolKind()
