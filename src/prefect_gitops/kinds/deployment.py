"""Deployments: prefect-gitops manages keys of a deployment's own job variables (which override its work
pool's defaults). Pure. Their keys are checked against the deployment's pool's template.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from prefect_gitops.kinds.base import ByTarget, TargetKind, latest_update, mismatch, NO_UPDATE
from prefect_gitops.kinds.work_pool import WORK_POOL, check_job_variable, image_of
from prefect_gitops.targets import ActualState, Change, PlanProblem

if TYPE_CHECKING:
    from prefect_gitops.drift_events import ChangeEvent, Watched
    from prefect_gitops.model import DeploymentSpec, EnvironmentFile, WaveSelector
    from prefect_gitops.state import ManagedKey


@dataclass(frozen=True)
class DeploymentActual:
    name: str  # "<flow>/<deployment>"
    id: str
    work_pool_name: str | None
    job_variables: dict[str, Any]
    tags: tuple[str, ...] = ()


class DeploymentWrites(Protocol):
    async def update_deployment(self, name: str, deployment_id: str, job_variables: dict[str, Any]) -> None: ...


def job_variables_after(deployment: DeploymentActual, changes: list[Change]) -> dict[str, Any]:
    """The job variables to write: the deployment's, with the changed keys set or taken out."""
    variables = copy.deepcopy(deployment.job_variables)
    for change in changes:
        if change.action == "set":
            variables[change.key] = change.new
        else:
            variables.pop(change.key, None)
    return variables


class DeploymentKind(TargetKind):
    name = "deployment"
    section = "deployments"
    label = "deployment"
    event_resource = "prefect.deployment"
    event_parent_role = "flow"  # known by "<flow>/<deployment>"
    runs_images = True

    def actuals(self, actual: ActualState) -> Mapping[str, DeploymentActual]:
        return actual.deployments

    def desired(self, spec: EnvironmentFile) -> dict[str, dict[str, Any]]:
        return {name: dict(deployment.job_variables) for name, deployment in spec.deployments.items()}

    def current_values(self, actual: ActualState, target: str) -> dict[str, Any] | None:
        deployment = actual.deployments.get(target)
        return None if deployment is None else dict(deployment.job_variables)

    def validate(self, spec: EnvironmentFile, actual: ActualState, cache: dict[Any, Any]) -> list[PlanProblem]:
        problems: list[PlanProblem] = []
        for name, deployment_spec in spec.deployments.items():
            deployment = actual.deployments.get(name)
            if deployment is None:
                problems.append(PlanProblem((self.section, name),
                                            f"deployment {name!r} does not exist on the Prefect server"))
                continue
            if not deployment_spec.job_variables:
                continue
            pool = actual.work_pools.get(deployment.work_pool_name or "")
            if pool is None:
                problems.append(PlanProblem((self.section, name), (
                    f"deployment {name!r} has no work pool ({deployment.work_pool_name!r}), "
                    "so it takes no job variables")))
                continue
            for key, value in deployment_spec.job_variables.items():
                problem = check_job_variable((self.section, name, "job_variables", key), pool, key, value,
                                             f"deployment {name!r} (work pool {pool.name!r})", cache)
                problems.extend([problem] if problem else [])
        return problems

    def after(self, actual: ActualState, target: str, changes: list[Change]) -> DeploymentActual:
        deployment = actual.deployments[target]
        return replace(deployment, job_variables=job_variables_after(deployment, changes))

    async def write(self, api: DeploymentWrites, actual: ActualState, target: str, changes: list[Change]) -> None:
        deployment = actual.deployments[target]
        await api.update_deployment(deployment.name, deployment.id, job_variables_after(deployment, changes))

    def spec_of(self, spec: EnvironmentFile, target: str) -> DeploymentSpec | None:
        return spec.deployments.get(target)

    def selected_by(self, selector: WaveSelector, target: str, actual: ActualState) -> bool:
        deployment = actual.deployments.get(target)
        tags = set(deployment.tags) if deployment is not None else set()
        return any(fnmatchcase(target, pattern) for pattern in selector.deployments) or bool(tags & set(selector.tags))

    def proving_deployment(self, target: str, configured: str | None) -> str | None:
        return target  # a deployment proves itself

    def image_after(self, actual: ActualState, target: str, changes: list[Change], by_target: ByTarget) -> Any:
        """Its own image unless the plan takes it out, else its pool's (as the plan leaves the pool)."""
        deployment = actual.deployments[target]
        if "image" in deployment.job_variables and not any(c.key == "image" for c in changes):
            return deployment.job_variables["image"]
        pool = actual.work_pools.get(deployment.work_pool_name or "")
        if pool is None:
            return None
        for change in by_target.get((WORK_POOL.name, pool.name), []):
            if change.key == "image" and change.action == "set":
                return change.new
        return image_of(pool)

    def add_to_file(self, file: dict[str, Any], target: str, values: dict[str, Any]) -> None:
        file.setdefault(self.section, {})[target] = {"job_variables": values}

    def watched(self, target: str, watched: Watched) -> bool:
        return target in watched.deployments

    def event_reason(self, what: str, events: list[ChangeEvent], managed: dict[str, ManagedKey]) -> str | None:
        if any("work_queue_id" in e.updates for e in events):
            return f"{what} moved to another work queue"
        latest = latest_update(events, "infra_overrides")  # the server's name for the job variables
        if latest is NO_UPDATE:
            return None  # only fields prefect-gitops does not manage changed
        return mismatch(what, managed, latest if isinstance(latest, dict) else {})


DEPLOYMENT = DeploymentKind()
