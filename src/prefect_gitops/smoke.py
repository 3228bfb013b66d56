"""Deciding smoke tests: which images to prove, with which policy, and what a failure holds back. Pure."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefect_gitops.model import (
    CanarySpec,
    deep_merge,
    EnvironmentFile,
    KubernetesSmokeSpec,
    ProcessSpec,
    SmokeTestOverride,
)
from prefect_gitops.kinds import KINDS, kind
from prefect_gitops.plan import ActualState, Change, PlanProblem, TargetType

Target = tuple[TargetType, str]
DEFAULT_TIMEOUT = 300


class ResolvedSmoke(BaseModel):
    """A target's effective policy: the environment's smoke_test with the target's override on top."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["kubernetes", "canary", "process", "none"] = "none"
    when: Literal["image-changed", "always"] = "image-changed"
    timeout_seconds: int = DEFAULT_TIMEOUT
    kubernetes: KubernetesSmokeSpec = Field(default_factory=KubernetesSmokeSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    process: ProcessSpec | None = None

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


def _override(desired: EnvironmentFile, target: Target) -> SmokeTestOverride | None:
    spec = kind(target[0]).spec_of(desired, target[1])
    return spec.smoke_test if spec is not None else None


def resolve(desired: EnvironmentFile, target: Target) -> ResolvedSmoke:
    """Raises ValueError with a readable message when the merged policy is incomplete."""
    base = desired.smoke_test.model_dump(exclude_unset=True, exclude={"gate", "post_apply"})
    override = _override(desired, target)
    merged = deep_merge(base, override.model_dump(exclude_unset=True) if override else {})
    try:
        policy = ResolvedSmoke.model_validate(merged)
    except ValidationError as exc:
        raise ValueError("; ".join(e["msg"] for e in exc.errors())) from None
    if policy.kind == "process" and policy.process is None:
        raise ValueError("kind process needs process.command")
    target_kind = kind(target[0])
    if policy.kind == "canary" and target_kind.proving_deployment(target[1], policy.canary.deployment) is None:
        raise ValueError(f"a canary for a {target_kind.label} needs canary.deployment (the deployment to run)")
    return policy


def policy_problems(desired: EnvironmentFile, actual: ActualState) -> list[PlanProblem]:
    """Refuse incomplete or dangling policies before anything runs."""
    problems: list[PlanProblem] = []
    targets: list[Target] = [(k.name, n) for k in KINDS if k.runs_images for n in k.desired(desired)]
    for target in targets:
        path = (kind(target[0]).section, target[1], "smoke_test")
        try:
            policy = resolve(desired, target)
        except ValueError as exc:
            problems.append(PlanProblem(path, f"smoke_test: {exc}"))
            continue
        canary = policy.canary.deployment
        if policy.kind == "canary" and canary and canary not in actual.deployments:
            problems.append(PlanProblem(path, f"smoke_test: canary deployment {canary!r} does not exist on the Prefect server"))
    post = desired.smoke_test.post_apply
    if post.kind == "canary" and post.deployment and post.deployment not in actual.deployments:
        problems.append(PlanProblem(("smoke_test", "post_apply", "deployment"),
                                    f"post_apply deployment {post.deployment!r} does not exist on the Prefect server"))
    return problems


@dataclass
class SmokeTest:
    kind: Literal["kubernetes", "canary", "process"]
    image: str
    policy: ResolvedSmoke
    targets: list[Target] = field(default_factory=list)
    deployment: str | None = None  # canary: the deployment run with the candidate image

    @property
    def id(self) -> str:
        who = self.deployment or ""
        return hashlib.sha256(f"{self.kind}|{self.image}|{who}|{self.policy.fingerprint()}".encode()).hexdigest()[:10]

    def describe(self) -> str:
        names = ", ".join(n for _, n in self.targets)
        how = f"canary run of {self.deployment}" if self.kind == "canary" else f"{self.kind} test"
        return f"{how} of {self.image} for {names}"


@dataclass
class SmokeResult:
    test_id: str
    passed: bool
    reason: str  # passed | failed | timeout | error
    message: str = ""
    log_tail: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # job name, flow run id, ...


def changes_by_target(changes: list[Change]) -> dict[Target, list[Change]]:
    out: dict[Target, list[Change]] = {}
    for change in changes:
        out.setdefault((change.target_type, change.target), []).append(change)
    return out


def _image_after(target: Target, changes: list[Change], actual: ActualState,
                 by_target: dict[Target, list[Change]]) -> Any:
    """The image the target runs with once the plan is applied (its own change, else as its kind says)."""
    for change in changes:
        if change.key == "image":
            if change.action == "set":
                return change.new
            break  # unset: falls back to what the kind says (a deployment's pool)
    return kind(target[0]).image_after(actual, target[1], changes, by_target)


def smoke_tests_for(to_apply: list[Change], desired: EnvironmentFile, actual: ActualState,
                    only: set[Target] | None = None) -> list[SmokeTest]:
    """One test per distinct (kind, image, policy) for kubernetes/process; one canary per target.

    `only` restricts the tests to some targets (a wave) while images still resolve against the whole plan.
    """
    by_target = changes_by_target(to_apply)
    tests: dict[tuple[str, ...] | tuple[str, str, str | None, str], SmokeTest] = {}
    for target, changes in by_target.items():
        target_kind = kind(target[0])
        if not target_kind.runs_images or (only is not None and target not in only):
            continue
        if all(c.removed_from_git for c in changes) and target_kind.spec_of(desired, target[1]) is None:
            continue  # a target leaving Git is not rolled out
        policy = resolve(desired, target)
        if policy.kind == "none":
            continue
        brings_image = any(c.key == "image" and c.action == "set" and c.reason == "desired" for c in changes)
        if policy.when == "image-changed" and not brings_image:
            continue
        image = _image_after(target, changes, actual, by_target)
        if not isinstance(image, str) or not image:
            continue  # nothing to prove: no image resolves for this target
        if policy.kind == "canary":
            deployment = target_kind.proving_deployment(target[1], policy.canary.deployment)
            key: tuple[str, ...] | tuple[str, str, str | None, str] = ("canary", image, deployment,
                                                                       policy.fingerprint())
        else:
            deployment = None
            key = (policy.kind, image, policy.fingerprint())
        test = tests.setdefault(key, SmokeTest(kind=policy.kind, image=image, policy=policy, deployment=deployment))
        test.targets.append(target)
    return list(tests.values())


def gate(changes: list[Change], tests: list[SmokeTest], results: dict[str, SmokeResult],
         mode: Literal["all-or-nothing", "per-target"]) -> tuple[list[Change], list[Change]]:
    """Split changes into (allowed, held back) by the smoke-test results."""
    failed_targets = {t for test in tests if not results[test.id].passed for t in test.targets}
    if failed_targets and mode == "all-or-nothing":
        return [], list(changes)
    allowed = [c for c in changes if (c.target_type, c.target) not in failed_targets]
    held = [c for c in changes if (c.target_type, c.target) in failed_targets]
    return allowed, held
