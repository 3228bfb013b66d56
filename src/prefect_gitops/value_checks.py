"""Checks of a validated environment file's values that the typed model does not express. Pure.

Images are checked against the OCI reference grammar wherever the file sets one (a pool's default
and a deployment's job variable `image`; smoke tests and canaries run those same images). Names and
job variables are bounded: Prefect's server accepts names of any length and job variables of any
size, but a work queue the file declares is created as named, and whatever is written is read back
by every worker; limits of our own keep a mistaken or hostile file from storing megabytes.
"""

from __future__ import annotations

import json
from typing import Any

from prefect_gitops.image_ref import describe, reference_problem
from prefect_gitops.model import EnvironmentFile

MAX_NAME_LENGTH = 255  # a work pool, work queue, flow or deployment name (Prefect's own cap on variable names)
MAX_JOB_VARIABLES_BYTES = 128 * 1024  # one target's job variables, as JSON
Problem = tuple[tuple[str, ...], str]


def value_problems(spec: EnvironmentFile) -> list[Problem]:
    problems: list[Problem] = []
    sections: list[tuple[str, dict[str, Any]]] = [("work_pools", dict(spec.work_pools)),
                                                  ("deployments", dict(spec.deployments))]
    for section, targets in sections:
        for name, target in targets.items():
            path = (section, name)
            problems += _name_problems(path, name)
            problems += _job_variables_problems(path + ("job_variables",), target.job_variables)
    for pool, pool_spec in spec.work_pools.items():
        for queue in pool_spec.work_queues:
            problems += _name_problems(("work_pools", pool, "work_queues", queue), queue)
    control = spec.rollout.control_queue
    if control is not None:
        problems += _name_problems(("rollout", "control_queue", "name"), control.name)
    return problems


def _name_problems(path: tuple[str, ...], name: str) -> list[Problem]:
    for part in name.split("/"):
        if len(part) > MAX_NAME_LENGTH:
            return [(path, f"name {part[:40]!r}... is {len(part)} characters long; at most {MAX_NAME_LENGTH}")]
    return []


def _job_variables_problems(path: tuple[str, ...], job_variables: dict[str, Any]) -> list[Problem]:
    size = len(json.dumps(job_variables).encode())
    if size > MAX_JOB_VARIABLES_BYTES:
        return [(path, f"job variables are {size} bytes as JSON; at most {MAX_JOB_VARIABLES_BYTES}")]
    image = job_variables.get("image")
    if isinstance(image, str):  # other types are the template schema's to refuse
        problem = reference_problem(image)
        if problem:
            return [(path + ("image",), describe(image, problem))]
    return []
