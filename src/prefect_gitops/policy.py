"""The GitOps policy: what an environment file may set, decided outside the repository it governs. Pure.

The policy lives in a Prefect block (blocks.GitOpsPolicy) that only people who can edit blocks change;
committers of the GitOps repo cannot loosen it. It has rules for all targets and rules per work pool
(both apply: a pool's rules can only narrow), each with:

- job variable keys: an allowlist or a denylist of the top-level keys the file may set;
- images: an allowlist of registry/repository prefixes the `image` key may name;
- digests: the environments in which every `image` must be pinned by `@sha256:` digest.

A deployment runs on its work pool, so it gets the rules of the pool the server reports for it.
Only values the file sets are checked: a key leaving Git (its old value restored) is not the
repository setting anything. Every violation is a PlanProblem at the key's path, so it is reported
with file, line and key, and the reconcile writes nothing.
"""

from __future__ import annotations

import re
from fnmatch import fnmatchcase
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefect_gitops.image_ref import normalize as normalize_image, normalize_prefix
from prefect_gitops.model import EnvironmentFile
from prefect_gitops.targets import ActualState, PlanProblem

DEFAULT_POLICY_BLOCK = "gitops-policy"  # loaded when it exists; a policy block named explicitly must exist
IMAGE_KEY = "image"


class PolicyRules(BaseModel):
    """One scope's rules (all targets, or one work pool's)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_keys: list[str] | None = Field(
        default=None, description="Job variable keys the repository may set (none given: any key not denied).")
    denied_keys: list[str] = Field(
        default_factory=list, description="Job variable keys the repository may not set, e.g. service_account_name.")
    allowed_images: list[str] | None = Field(
        default=None,
        description="Registry/repository prefixes an image must start with, e.g. harbor.corp/team/ (none given: "
                    "any image; an empty list: no image). Names without a registry host are docker.io's.")
    require_digest_in: list[str] = Field(
        default_factory=list,
        description="Environments (names or fnmatch patterns such as prod*) in which images must be pinned "
                    "by digest (@sha256:...).")

    @model_validator(mode="after")
    def _allow_or_deny(self) -> Self:
        # both in one scope would leave readers guessing which wins
        if self.allowed_keys is not None and self.denied_keys:
            raise ValueError("give allowed_keys or denied_keys, not both")
        return self

    @field_validator("allowed_images")
    @classmethod
    def _prefixes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if any(not prefix.strip() for prefix in value):
            raise ValueError("an allowed image prefix must not be empty")
        return [normalize_prefix(prefix) for prefix in value]


class Policy(BaseModel):
    """The whole policy, as stored in the GitOps Policy block (`name`: the block's, for messages)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = DEFAULT_POLICY_BLOCK
    all_targets: PolicyRules = Field(default_factory=PolicyRules)
    work_pools: dict[str, PolicyRules] = Field(
        default_factory=dict, description="Rules per work pool (name or fnmatch pattern); they add to all_targets'.")


def check_policy(policy: Policy | None, environment: str, spec: EnvironmentFile,
                 actual: ActualState) -> list[PlanProblem]:
    """Every value the file sets that the policy refuses, at the path of its key."""
    if policy is None:
        return []
    problems: list[PlanProblem] = []
    for pool, pool_spec in spec.work_pools.items():
        path = ("work_pools", pool, "job_variables")
        problems += _check_values(policy, environment, pool, path, pool_spec.job_variables)
    for name, deployment_spec in spec.deployments.items():
        # a deployment runs on its work pool: the pool's rules apply to it (a deployment the server
        # does not know is refused by the planner; the rules for all targets still apply to it)
        deployed = actual.deployments.get(name)
        pool_name = deployed.work_pool_name if deployed is not None else None
        path = ("deployments", name, "job_variables")
        problems += _check_values(policy, environment, pool_name, path, deployment_spec.job_variables)
    return problems


def _scopes(policy: Policy, pool: str | None) -> list[tuple[str, PolicyRules]]:
    scopes = [("for all targets", policy.all_targets)]
    if pool is not None:
        scopes += [(f"for work pool {pattern!r}" if pattern == pool else f"for work pools {pattern!r}", rules)
                   for pattern, rules in policy.work_pools.items() if fnmatchcase(pool, pattern)]
    return scopes


def _check_values(policy: Policy, environment: str, pool: str | None, path: tuple[str, ...],
                  values: dict[str, Any]) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    for scope, rules in _scopes(policy, pool):
        why = f"policy block {policy.name!r}, rules {scope}"
        for key, value in values.items():
            message = _key_refused(rules, key)
            # a null image is checked too: the worker would fall back to its own default image
            if message is None and key == IMAGE_KEY:
                message = _image_refused(rules, environment, value)
            if message is not None:
                problems.append(PlanProblem(path + (key,), f"{message} ({why})"))
    return problems


def _key_refused(rules: PolicyRules, key: str) -> str | None:
    if key in rules.denied_keys:
        return f"job variable {key!r} is denied by the GitOps policy"
    if rules.allowed_keys is not None and key not in rules.allowed_keys:
        return (f"job variable {key!r} is not among the keys the GitOps policy allows "
                f"({', '.join(rules.allowed_keys) or 'none'})")
    return None


def _image_refused(rules: PolicyRules, environment: str, value: Any) -> str | None:
    if rules.allowed_images is None and not _digest_required(rules, environment):
        return None
    reference = normalize_image(value) if isinstance(value, str) else None
    if reference is None:
        return f"image {value!r} is not an image reference the GitOps policy can check"
    if rules.allowed_images is not None and not any(_starts_with(reference, p) for p in rules.allowed_images):
        return (f"image {value!r} ({reference}) is not from a registry the GitOps policy allows "
                f"({', '.join(rules.allowed_images) or 'none'})")
    if _digest_required(rules, environment) and not DIGEST.search(reference):
        return f"image {value!r} is not pinned by digest (@sha256:...), which the GitOps policy requires in {environment}"
    return None


def _digest_required(rules: PolicyRules, environment: str) -> bool:
    return any(fnmatchcase(environment, pattern) for pattern in rules.require_digest_in)


DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _starts_with(reference: str, prefix: str) -> bool:
    """A prefix matches at a boundary: harbor.corp/team matches harbor.corp/team/app and
    harbor.corp/team:1, never harbor.corp/team-evil/app or harbor.corp.evil.com/team."""
    if not reference.startswith(prefix):
        return False
    return prefix.endswith("/") or len(reference) == len(prefix) or reference[len(prefix)] in "/:@"
