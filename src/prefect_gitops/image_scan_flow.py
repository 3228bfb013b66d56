"""The `gitops-image-scan` flow: pull mode of image automation. Thin: read the environment file at the
source's branch, scan (image_scan), hand the decisions to the write-back, keep the status, report."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

from prefect import State, flow, get_client, get_run_logger
from prefect.states import Failed
from pydantic import Field

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.errors import GitOpsError
from prefect_gitops.flows import (
    _flow_run_id,
    failed_run,
    git_source,
    keeps_what_it_returns,
    load_block,
    param,
    source_settings,
)
from prefect_gitops.image_policy import ImageDecision
from prefect_gitops.image_scan import ScanResult, WriteBack, WriteBackOutcome, scan, write_decisions
from prefect_gitops.loader import load_environment
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN

if TYPE_CHECKING:
    from prefect_gitops.blocks import GitOpsSource


@flow(name="gitops-image-scan",
      description="Pull mode: list the tags of each image_policy's registry repository, pick the newest allowed "
                  "tag and write it back to the environment file (a commit or a merge request).")
@keeps_what_it_returns
async def image_scan(
    environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "Environment", description="Whose file's image policies to scan: ENVIRONMENT.yaml in the environments folder."),
    source_block: str | None = param(None, "GitOps Source block", description="Name of a saved GitOps Source block: the repository to read the policies from and write the images to. The fields below override it when set."),
    source_url: str | None = param(None, "GitOps repository URL", description="The repository (push access needed to write back)."),
    branch: str | None = param(None, "Branch", description="Branch to read and write (default: the block's ref, else main)."),
    path: str | None = param(None, "Environments folder", description="Folder of the environment files (default: the block's, else environments)."),
    merge_request: bool = param(False, "Merge request", description="Open a GitLab merge request per target instead of committing to the branch."),
    dry_run: bool = param(False, "Dry run", description="Scan and report; write nothing back."),
    policy_block: str | None = param(None, "GitOps Policy block", description="Name of the GitOps Policy block the chosen images must keep to, as the reconcile's policy_block; a block named here must exist. Left empty: the gitops-policy block if there is one."),
) -> dict[str, Any] | State[Any]:
    block = await load_block("GitOpsSource", source_block) if source_block else None
    where = source_settings(block, source_url, branch, path)
    url, branch, folder = where.url, where.ref, where.path
    if not url:
        message = "give source_url or source_block: where is the GitOps repo?"
        return failed_run(environment, message)
    source = git_source(block, url)
    write_back = image_write_back(source, block, branch, folder, merge_request, policy_block=policy_block)
    return await run_image_scan(environment, source, branch, folder, write_back, dry_run=dry_run,
                                flow_run_id=_flow_run_id())


async def run_image_scan(environment: str, source: GitSource, branch: str, folder: str, write_back: WriteBack,
                         *, dry_run: bool = False, flow_run_id: str | None = None) -> dict[str, Any] | State[Any]:
    """The flow's body, with the write-back given in (the tests give a local one)."""
    from prefect_gitops.adapters.image_scan_io import (emit_scan_failed, open_registry, publish_scan_artifact,
                                                       read_scan_status, save_scan_status)

    logger = get_run_logger()
    try:
        revision = await asyncio.to_thread(source.resolve, branch)
        loaded = await asyncio.to_thread(_load, source, revision, folder, environment)
    except GitOpsError as exc:
        message = f"image scan of {environment}: {exc}"
        return failed_run(environment, message, exc)
    result: ScanResult = await scan(loaded, revision, open_registry, flow_run_id=flow_run_id)
    if not dry_run:
        result = await write_decisions(result, write_back)
    async with get_client() as client:
        status = result.status.carry_over(await read_scan_status(client, environment))
        await save_scan_status(client, status)
    emit_scan_failed(status)
    await publish_scan_artifact(status)
    for t in status.targets:
        log = logger.warning if t.outcome == "failed" else logger.info
        log("%s %s: %s%s (newest tag %s of %d, %d unparseable)", t.target_type, t.target, t.outcome,
            f": {t.message}" if t.message else "", t.newest_tag or "-", t.tags_seen, t.tags_ignored)
    report = {"environment": environment, "revision": revision, "dry_run": dry_run,
              "status": "failed" if status.failed else "scanned",
              "decisions": [{"target_type": d.target_type, "target": d.target, "old": d.previous, "new": d.image}
                            for d in result.decisions],
              "targets": [t.model_dump(mode="json") for t in status.targets]}
    if status.failed:
        message = (f"image scan of {environment}: {len(status.failed)} of {len(status.targets)} target(s) failed: "
                   + "; ".join(f"{t.target}: {t.message}" for t in status.failed))
        return Failed(message=message[:5000], data=report)
    return report


def _load(source: GitSource, revision: str, folder: str, environment: str) -> Any:
    with source.checkout(revision) as tree:
        return load_environment(tree, folder, environment)


def image_write_back(source: GitSource, block: GitOpsSource | None, branch: str, folder: str,
                     merge_request: bool, *, policy_block: str | None = None) -> WriteBack:
    """The seam: push mode's write-back (flows.write_images), the same commit or merge request `set-image` makes."""

    async def write(decisions: list[ImageDecision], message: str) -> WriteBackOutcome:
        from prefect_gitops.flows import write_images
        from prefect_gitops.image_write import ImageWrite, WriteBackResult

        combined = WriteBackResult(writes=[], revision=None, merge_request_url=None)
        for as_merge_request in (False, True):  # a policy's write_back: merge-request, or the flow's parameter
            group = [ImageWrite(d.environment, d.target_type, d.target, d.image) for d in decisions
                     if (merge_request or d.merge_request) == as_merge_request]
            if group:
                done = await write_images(block, source, group, branch=branch, folder=folder,
                                          merge_request=as_merge_request, message=message,
                                          policy_block=policy_block)
                combined.writes += done.writes
                combined.revision = done.revision or combined.revision
                combined.merge_request_url = done.merge_request_url or combined.merge_request_url
        return combined

    return write
