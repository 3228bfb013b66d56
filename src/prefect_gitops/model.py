"""The GitOps repo's contract: one environment file, as typed models.

Pure: no I/O. `EnvironmentFile.model_json_schema()` is what
`prefect-gitops schema` publishes for editors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ENVIRONMENT_NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"

EnvironmentName = Annotated[str, StringConstraints(pattern=ENVIRONMENT_NAME_PATTERN)]
WorkPoolName = Annotated[str, StringConstraints(min_length=1, pattern=r"^[^/%&><]+$")]
DeploymentName = Annotated[str, StringConstraints(pattern=r"^[^/]+/[^/]+$")]
JobVariables = dict[Annotated[str, StringConstraints(min_length=1)], Any]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class WorkPoolSpec(_Strict):
    job_variables: JobVariables = Field(
        default_factory=dict,
        description="Defaults of the pool's base job template variables "
        "(base_job_template.variables.properties.KEY.default).",
    )


class DeploymentSpec(_Strict):
    job_variables: JobVariables = Field(
        default_factory=dict,
        description="The deployment's own job variables; they override the work pool's defaults.",
    )


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


def json_schema() -> dict:
    return EnvironmentFile.model_json_schema()
