"""The GitOps repo's contract: one environment file, as typed models.

Pure: no I/O. `EnvironmentFile.model_json_schema()` is what
`prefect-gitops schema` publishes for editors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from prefect_gitops.image_policy import ImagePolicy
from prefect_gitops.windows import SyncWindow
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

ENVIRONMENT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

EnvironmentName = Annotated[str, StringConstraints(pattern=ENVIRONMENT_NAME_PATTERN)]
WorkPoolName = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^/%&><]+$")]
DeploymentName = Annotated[str, StringConstraints(pattern=r"^[^/]+/[^/]+$")]
JobVariables = dict[Annotated[str, StringConstraints(min_length=1)], Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ClusterSpec(_Strict):
    """Which cluster smoke-test Jobs run on; at most one of the three ways."""

    credentials_block: str | None = Field(
        default=None, description="Name of a saved KubernetesCredentials block (prefect-kubernetes).")
    kubeconfig: str | None = Field(default=None, description="Path of a kubeconfig file on the worker.")
    context: str | None = Field(default=None, description="Context in the kubeconfig (default: its current one).")
    in_cluster: bool = Field(default=False, description="Use the pod's service account (the worker runs in the cluster).")

    @model_validator(mode="after")
    def _one_way(self) -> Self:
        ways = [self.credentials_block is not None, self.kubeconfig is not None, self.in_cluster]
        if sum(ways) > 1:
            raise ValueError("give one of credentials_block, kubeconfig or in_cluster")
        if self.context and not self.kubeconfig:
            raise ValueError("context needs kubeconfig")
        return self


class KubernetesSmokeSpec(_Strict):
    command: list[str] | None = Field(default=None, description="The container's command (entrypoint).")
    args: list[str] = Field(default_factory=list, description="The container's args.")
    env: dict[str, str] = Field(default_factory=dict, description="Environment variables of the container.")
    namespace: str = Field(default="default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    service_account: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list)
    resources: dict[str, dict[str, str]] = Field(
        default_factory=dict, description='{"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}}')
    backoff_limit: int = Field(default=0, ge=0, le=10)
    ttl_seconds_after_finished: int | None = Field(default=600, ge=0)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        unknown = set(value) - {"requests", "limits"}
        if unknown:
            raise ValueError(f"resources takes requests and limits, not {sorted(unknown)}")
        return value


class CanarySpec(_Strict):
    parameters: dict[str, Any] = Field(default_factory=dict, description="Parameters of the canary run.")
    deployment: DeploymentName | None = Field(
        default=None,
        description="Deployment to run as the canary of a work pool change (a deployment change runs itself).")


class ProcessSpec(_Strict):
    command: list[str] = Field(
        min_length=1, description="Runs locally with SMOKE_IMAGE set; does NOT isolate the image.")
    env: dict[str, str] = Field(default_factory=dict)


class PostApplySpec(_Strict):
    kind: Literal["canary", "none"] = "none"
    parameters: dict[str, Any] = Field(default_factory=dict)
    deployment: DeploymentName | None = Field(
        default=None, description="Deployment to run after a work pool change (deployment changes run themselves).")
    timeout_seconds: int = Field(default=600, ge=1, le=86400)


class SmokeTestOverride(_Strict):
    """A work pool's or deployment's smoke_test: any field overrides the environment's."""

    kind: Literal["kubernetes", "canary", "process", "none"] | None = None
    when: Literal["image-changed", "always"] | None = None
    timeout_seconds: int | None = Field(default=None, ge=1, le=86400)
    kubernetes: KubernetesSmokeSpec | None = None
    canary: CanarySpec | None = None
    process: ProcessSpec | None = None


class SmokeTestPolicy(SmokeTestOverride):
    """The environment's smoke_test."""

    gate: Literal["all-or-nothing", "per-target"] = Field(
        default="all-or-nothing",
        description="all-or-nothing: one failed test holds every change back; "
                    "per-target: changes that passed (or needed no test) are applied.")
    post_apply: PostApplySpec = Field(default_factory=PostApplySpec)


Wave = Annotated[int, Field(ge=-100, le=100)]
WorkQueueName = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^/%&><]+$")]


class WorkQueueSpec(_Strict):
    priority: int | None = Field(default=None, ge=1, description="1 is the highest; the server shifts others down.")
    concurrency_limit: int | None = Field(default=None, ge=0, description="Runs of this queue at once.")
    paused: bool | None = Field(default=None, description="A paused queue hands out no runs.")


class ControlQueueSpec(_Strict):
    """The queue prefect-gitops's own deployments run on, in each pool it manages."""

    name: WorkQueueName = "prefect-gitops"
    priority: int = Field(default=1, ge=1, description="1: ahead of every backlog of ordinary runs.")
    concurrency_limit: int = Field(default=2, ge=1, description="Control runs (reconcile, smoke, rollback) at once.")
    work_pools: list[WorkPoolName] | None = Field(
        default=None, description="Pools to keep it in (default: every work pool of this file).")


class WorkPoolSpec(_Strict):
    job_variables: JobVariables = Field(
        default_factory=dict,
        description="Defaults of the pool's base job template variables "
        "(base_job_template.variables.properties.KEY.default).",
    )
    smoke_test: SmokeTestOverride | None = None
    wave: Wave | None = Field(default=None, description="Rollout wave (lower first); wins over rollout.waves selectors.")
    image_policy: ImagePolicy | None = Field(
        default=None, description="Pull mode: the gitops-image-scan flow writes the newest allowed tag to job_variables.image.")
    work_queues: dict[WorkQueueName, WorkQueueSpec] = Field(
        default_factory=dict, description="Work queues of this pool: created when missing, kept as declared.")


class DeploymentSpec(_Strict):
    job_variables: JobVariables = Field(
        default_factory=dict,
        description="The deployment's own job variables; they override the work pool's defaults.",
    )
    smoke_test: SmokeTestOverride | None = None
    wave: Wave | None = Field(default=None, description="Rollout wave (lower first); wins over rollout.waves selectors.")
    image_policy: ImagePolicy | None = Field(
        default=None, description="Pull mode: the gitops-image-scan flow writes the newest allowed tag to job_variables.image.")


class WaveSelector(_Strict):
    wave: Wave
    name: str | None = Field(default=None, description="Shown in the artifact.")
    deployments: list[str] = Field(default_factory=list, description='fnmatch patterns of "flow/deployment" names.')
    work_pools: list[str] = Field(default_factory=list, description="fnmatch patterns of work pool names.")
    tags: list[str] = Field(default_factory=list, description="Deployments with any of these tags.")
    max_parallel: int | None = Field(default=None, ge=1, le=64, description="Targets written at once in this wave.")


class PromotionGate(_Strict):
    from_: EnvironmentName = Field(alias="from", description="The environment an image must pass through first.")
    soak_seconds: int = Field(default=0, ge=0, description="How long it must have run there, healthy.")


class ReleaseLimit(_Strict):
    """How many managed keys one revision may release (remove from Git) without explicit consent."""

    max_fraction: float = Field(
        default=0.5, ge=0, le=1,
        description="Refuse a revision that releases more than this fraction of the managed keys (1: no limit)...")
    min_keys: int = Field(
        default=5, ge=1, description="...and at least this many keys (small removals always pass).")


class RolloutPolicy(_Strict):
    lock_timeout_seconds: int = Field(
        default=300, ge=0, le=86400,
        description="How long a reconcile waits for another rollout of this environment before giving up.")
    max_parallel: int = Field(default=4, ge=1, le=64, description="Targets written at once (per wave).")
    waves: list[WaveSelector] = Field(
        default_factory=list, description="Targets matching a selector roll out in its wave; the rest in wave 0.")
    promotion: PromotionGate | None = Field(
        default=None, description="Require each new image to have soaked in an earlier environment.")
    control_queue: ControlQueueSpec | None = Field(
        default=None, description="Create and keep prefect-gitops's own high-priority queue in the managed pools.")
    release_limit: ReleaseLimit = Field(
        default_factory=ReleaseLimit,
        description="Refuse a revision that releases many managed keys at once, unless allow_empty is set.")


class DriftPolicy(_Strict):
    mode: Literal["correct", "warn"] = Field(
        default="correct",
        description="correct: revert managed values changed outside Git; warn: report them only.",
    )
    check_interval_seconds: int = Field(
        default=300,
        ge=0,
        description="When Git has not moved, a reconcile still reads the server to look for drift "
        "once this many seconds have passed since the last check (0: every reconcile).",
    )
    full_read_interval_seconds: int = Field(
        default=3600,
        ge=0,
        description="A drift check after one that ended in sync asks the server's event log what changed "
        "since, and reads every managed target only if one of them may have changed; it reads them all "
        "anyway once this many seconds have passed since the last full read (0: every check reads all).",
    )


class EnvironmentFile(_Strict):
    """environments/<env>.yaml"""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="prefect-gitops environment",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    work_pools: dict[WorkPoolName, WorkPoolSpec] = Field(
        default_factory=dict, description="Work pools by name."
    )
    deployments: dict[DeploymentName, DeploymentSpec] = Field(
        default_factory=dict,
        description='Deployments by "<flow name>/<deployment name>", as `prefect deployment ls` names them.',
    )
    drift: DriftPolicy = Field(default_factory=DriftPolicy)
    smoke_test: SmokeTestPolicy = Field(
        default_factory=SmokeTestPolicy,
        description="How new images are proven before they are applied; overridable per pool and deployment.")
    rollout: RolloutPolicy = Field(default_factory=RolloutPolicy, description="Locking, waves and promotion.")
    sync_windows: list[SyncWindow] = Field(
        default_factory=list,
        description="Argo CD-style allow/deny windows: outside them a reconcile plans and reports but does not apply.")
    allow_empty: bool = Field(
        default=False,
        description="Consent to a revision that manages nothing or releases every (or most) managed keys; "
        "without it such a revision is refused (Argo CD's allowEmpty).")


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` wins; mappings merge key by key."""
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def desired_work_queues(spec: EnvironmentFile) -> dict[str, dict[str, Any]]:
    """ "pool/queue" -> declared fields, the control queue included (an explicit declaration wins)."""
    out: dict[str, dict[str, Any]] = {}
    control = spec.rollout.control_queue
    if control is not None:
        for pool in control.work_pools if control.work_pools is not None else list(spec.work_pools):
            out[f"{pool}/{control.name}"] = {"priority": control.priority,
                                             "concurrency_limit": control.concurrency_limit, "paused": False}
    for pool, pool_spec in spec.work_pools.items():
        for name, queue in pool_spec.work_queues.items():
            out[f"{pool}/{name}"] = queue.model_dump(exclude_none=True)
    return out


def json_schema() -> dict[str, Any]:
    return EnvironmentFile.model_json_schema()
