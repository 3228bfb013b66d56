"""Image automation, pull mode: scan the registries an environment file's image policies name, and hand
the newest allowed images to the write-back (push mode's entry point) as decisions.

Orchestration: the deciding is image_policy's (which tag), the reading is the registry adapter's, the
writing is the `WriteBack` given in (prefect_gitops.image_write's write_back, wired by the flow). One
target's registry failing does not stop the others: it is reported (scan-failed) and the rest go on.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from prefect_gitops.errors import GitOpsError, TransientError
from prefect_gitops.image_policy import ImageDecision, ImagePolicy, TagSelector, image_for
from prefect_gitops.image_status import ScanStatus, TargetScan
from prefect_gitops.targets import ImageTargetType
from prefect_gitops.loader import LoadedEnvironment
from prefect_gitops.model import EnvironmentFile


class TagSource(Protocol):
    """What a scan needs of a registry (adapters.registry.Registry)."""

    def tag_pages(self, path: str) -> AsyncIterator[list[str]]: ...

    async def digest(self, path: str, tag: str) -> str: ...


# the registry for a policy (its host, its credentials block), and the repository's path on it
OpenRegistry = Callable[[ImagePolicy], AbstractAsyncContextManager[tuple[TagSource, str]]]


class Written(Protocol):
    """One write's outcome, as image_write.WrittenImage reports it (read-only: it is a frozen dataclass)."""

    @property
    def target_type(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def new(self) -> str: ...
    @property
    def outcome(self) -> str: ...  # committed / merge-request / unchanged
    @property
    def revision(self) -> str | None: ...
    @property
    def merge_request_url(self) -> str | None: ...


class WriteBackOutcome(Protocol):
    """image_write.WriteBackResult, as far as the scan reads it."""

    @property
    def writes(self) -> Sequence[Written]: ...


# The seam: the decisions and a commit message in, what was written out. In the flow it is push mode's
# write-back (image_scan_flow.image_write_back -> flows.write_images); tests may give their own.
WriteBack = Callable[[list[ImageDecision], str], Awaitable[WriteBackOutcome]]


@dataclass(frozen=True)
class PolicyTarget:
    target_type: ImageTargetType
    target: str
    policy: ImagePolicy
    current: str | None  # job_variables.image in the file


def policy_targets(spec: EnvironmentFile) -> list[PolicyTarget]:
    out = []
    for name, pool in sorted(spec.work_pools.items()):
        if pool.image_policy is not None:
            out.append(PolicyTarget("work_pool", name, pool.image_policy, _image(pool.job_variables)))
    for name, deployment in sorted(spec.deployments.items()):
        if deployment.image_policy is not None:
            out.append(PolicyTarget("deployment", name, deployment.image_policy, _image(deployment.job_variables)))
    return out


def _image(job_variables: dict[str, object]) -> str | None:
    image = job_variables.get("image")
    return image if isinstance(image, str) else None


@dataclass
class ScanResult:
    status: ScanStatus
    decisions: list[ImageDecision] = field(default_factory=list)
    write_error: str | None = None


async def scan(loaded: LoadedEnvironment, revision: str | None, open_registry: OpenRegistry,
               now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc),
               flow_run_id: str | None = None) -> ScanResult:
    """Read every policy's registry and decide; nothing is written here."""
    rows: list[TargetScan] = []
    decisions: list[ImageDecision] = []
    for t in policy_targets(loaded.spec):
        row, decision = await _scan_one(loaded.name, t, open_registry, now)
        rows.append(row)
        if decision is not None:
            decisions.append(decision)
    status = ScanStatus(environment=loaded.name, scanned_at=now(), revision=revision, flow_run_id=flow_run_id,
                        targets=rows)
    return ScanResult(status=status, decisions=decisions)


async def _scan_one(environment: str, t: PolicyTarget, open_registry: OpenRegistry,
                    now: Callable[[], dt.datetime]) -> tuple[TargetScan, ImageDecision | None]:
    row = TargetScan(target_type=t.target_type, target=t.target, policy=t.policy.describe(),
                     repository=t.policy.repository, scanned_at=now(), outcome="current")
    selector = TagSelector(t.policy)
    try:
        async with open_registry(t.policy) as (registry, path):
            async for page in registry.tag_pages(path):
                selector.feed(page)
            chosen = selector.result()
            counts = {"tags_seen": chosen.seen, "tags_ignored": chosen.unparseable,
                      "tags_filtered_out": chosen.filtered_out, "tags_out_of_range": chosen.out_of_range}
            if chosen.tag is None:
                return row.model_copy(update={**counts, "outcome": "no-tag", "scanned_at": now(), "message":
                    f"none of the {chosen.seen} tags is allowed by the policy"}), None
            digest = await registry.digest(path, chosen.tag) if t.policy.pin_digest else None
    except GitOpsError as exc:
        kind = "transient" if isinstance(exc, TransientError) else "permanent"
        return row.model_copy(update={"outcome": "failed", "error_kind": kind, "message": str(exc)[:500],
                                      "scanned_at": now()}), None
    image = image_for(t.policy, chosen.tag, digest)
    row = row.model_copy(update={**counts, "newest_tag": chosen.tag, "image": image, "scanned_at": now()})
    if image == t.current:
        return row, None
    decision = ImageDecision(environment=environment, target_type=t.target_type, target=t.target, image=image,
                             previous=t.current, tag=chosen.tag, merge_request=t.policy.write_back == "merge-request")
    return row.model_copy(update={"outcome": "updated"}), decision


def commit_message(environment: str, decisions: list[ImageDecision]) -> str:
    lines = [f"{environment}: newest allowed image{'s' if len(decisions) > 1 else ''} from the registry", ""]
    for d in decisions:
        lines.append(f"{d.target_type.replace('_', ' ')} {d.target}: {d.previous or '(none)'} -> {d.image}")
    lines += ["", "Written by prefect-gitops gitops-image-scan (image_policy)."]
    return "\n".join(lines)


async def write_decisions(result: ScanResult, write_back: WriteBack,
                          now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> ScanResult:
    """Hand the decisions to the write-back and note on each row what was written where. A write-back
    that fails marks the rows it would have written failed (typed), and is returned as write_error."""
    if not result.decisions:
        return result
    message = commit_message(result.status.environment, result.decisions)
    wanted = {(d.target_type, d.target) for d in result.decisions}
    try:
        outcome = await write_back(result.decisions, message)
    except GitOpsError as exc:
        kind = "transient" if isinstance(exc, TransientError) else "permanent"
        rows = [r.model_copy(update={"outcome": "failed", "error_kind": kind,
                                     "message": f"write-back failed: {exc}"[:500]})
                if (r.target_type, r.target) in wanted else r for r in result.status.targets]
        return ScanResult(result.status.model_copy(update={"targets": rows}), result.decisions, str(exc))
    written = {(w.target_type, w.target): w for w in outcome.writes if w.outcome != "unchanged"}
    at = now()
    rows = []
    for r in result.status.targets:
        w = written.get((r.target_type, r.target))
        if w is not None:
            r = r.model_copy(update={"written_image": w.new, "written_at": at,
                                     "written_to": w.merge_request_url or w.revision})
        rows.append(r)
    return ScanResult(result.status.model_copy(update={"targets": rows}), result.decisions)
