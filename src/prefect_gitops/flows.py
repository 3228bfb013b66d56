"""The control flows. Thin: parameters for the UI's run form, then the reconcile layer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_client, get_run_logger
from prefect.states import Cancelled, Failed
from prefect.runtime import flow_run
from pydantic import Field

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.adapters.locks import environment_lock
from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN
from prefect_gitops.adapters.smoke_runner import SmokeRunner
from prefect_gitops.errors import GitOpsError
from prefect_gitops.reconcile import ReconcileRequest, RollbackRequest, reconcile as run_reconcile
from prefect_gitops.reconcile import rollback as run_rollback
from prefect_gitops.report import text


@flow(name="gitops-reconcile", description="Plan and apply a GitOps environment's job variables to Prefect.")
async def reconcile(
    environment: Annotated[str, Field(
        title="Environment",
        description="Which environment file to reconcile: <path>/<environment>.yaml in the GitOps repo.",
        pattern=ENVIRONMENT_NAME_PATTERN)],
    source_url: Annotated[str, Field(
        title="GitOps repository URL",
        description="Any URL git can fetch: https://, ssh://, git@host:path, file:// or a local path.")],
    ref: Annotated[str, Field(
        title="Git ref", description="Branch, tag or full commit SHA to follow.")] = "main",
    path: Annotated[str, Field(
        title="Environments folder", description="Folder of the environment files inside the repo.")] = "environments",
    revision: Annotated[str | None, Field(
        title="Pinned revision",
        description="A full commit SHA to apply instead of resolving the ref (for example from CI).",
        pattern=r"^[0-9a-f]{40}$")] = None,
    dry_run: Annotated[bool, Field(
        title="Dry run", description="Plan and publish the plan artifact, write nothing.")] = False,
    drift_mode: Annotated[Literal["from-file", "correct", "warn"], Field(
        title="Drift mode",
        description="correct: revert values changed outside Git; warn: report only; "
                    "from-file: the environment file's drift.mode (default correct).")] = "from-file",
    concurrency: Annotated[int, Field(
        title="Write concurrency", description="Targets updated at once.", ge=1, le=32)] = 4,
    force: Annotated[bool, Field(
        title="Force", description="Apply even the revision a rollback moved away from.")] = False,
    override_windows: Annotated[bool, Field(
        title="Override sync windows",
        description="Apply even inside a deny window or outside every allow window.")] = False,
) -> dict[str, Any]:
    logger = get_run_logger()
    request = ReconcileRequest(
        environment=environment, source=GitSource(source_url), ref=ref, path=path, revision=revision,
        dry_run=dry_run, drift_mode=None if drift_mode == "from-file" else drift_mode,
        concurrency=concurrency, flow_run_id=_flow_run_id(), force=force, override_windows=override_windows,
    )
    async with get_client() as client:
        runner = SmokeRunner(client, environment, logger, concurrency=SMOKE_CONCURRENCY)
        lock = lambda env, timeout: environment_lock(client, env, timeout)  # noqa: E731
        result = await run_reconcile(request, PrefectAPI(client), runner, lock=lock)
    return await _finish(result, "reconcile")


@flow(name="gitops-rollback", description="Restore an environment's job variables as applied at an earlier revision.")
async def rollback(
    environment: Annotated[str, Field(
        title="Environment", description="The environment to roll back.", pattern=ENVIRONMENT_NAME_PATTERN)],
    to_revision: Annotated[str | None, Field(
        title="To revision", description="A revision from the history (at least 7 characters of its SHA).",
        pattern=r"^[0-9a-f]{7,40}$")] = None,
    steps: Annotated[int | None, Field(
        title="Steps back", description="Go back this many applied revisions (used when no revision is given).",
        ge=1, le=50)] = None,
    concurrency: Annotated[int, Field(
        title="Write concurrency", description="Targets updated at once.", ge=1, le=32)] = 4,
) -> dict[str, Any]:
    request = RollbackRequest(environment=environment, to_revision=to_revision, steps=steps,
                              concurrency=concurrency, flow_run_id=_flow_run_id())
    async with get_client() as client:
        lock = lambda env, timeout: environment_lock(client, env, timeout)  # noqa: E731
        result = await run_rollback(request, PrefectAPI(client), lock=lock)
    return await _finish(result, "rollback")


@flow(name="gitops-promote", description="Commit the images an environment runs into the next environment's file.")
async def promote(
    from_environment: Annotated[str, Field(
        title="From environment", description="Whose applied images to promote (e.g. qa).",
        pattern=ENVIRONMENT_NAME_PATTERN)],
    to_environment: Annotated[str, Field(
        title="To environment", description="Whose file in the GitOps repo gets them (e.g. prod).",
        pattern=ENVIRONMENT_NAME_PATTERN)],
    source_url: Annotated[str, Field(
        title="GitOps repository URL", description="The repository to commit to (push access needed).")],
    branch: Annotated[str, Field(title="Branch", description="Branch to commit the promotion to.")] = "main",
    path: Annotated[str, Field(
        title="Environments folder", description="Folder of the environment files inside the repo.")] = "environments",
) -> dict[str, Any]:
    from prefect_gitops.adapters.git_write import GitWriter
    from prefect_gitops.promote import promote as run_promote

    logger = get_run_logger()
    async with get_client() as client:
        state, handle = await PrefectAPI(client).read_state(from_environment)
    if handle is None:
        message = f"environment {from_environment!r} has never been reconciled: nothing to promote"
        return Failed(message=message, data={"status": "failed", "message": message, "environment": to_environment,
                                             "errors": [{"message": message}], "changes": [], "applied": 0})
    try:
        sha, plan = run_promote(state, to_environment, GitWriter(source_url), branch, path)
    except GitOpsError as exc:
        return Failed(message=str(exc), data={"status": "failed", "message": str(exc), "environment": to_environment,
                                              "errors": [{"message": str(exc)}], "changes": [], "applied": 0})
    changes = [{"target_type": section.rstrip("s"), "target": target,
                "key": "image", "old": plan.current.get((section, target)), "new": image}
               for (section, target), image in sorted(plan.updates.items())]
    for (section, target), why in sorted(plan.skipped.items()):
        logger.warning("left %s %s alone: %s", section, target, why)
    message = (f"committed {sha} to {branch}: {len(changes)} image(s) from {from_environment}" if sha
               else f"{to_environment} already runs {from_environment}'s images: nothing to commit")
    logger.info("%s", message)
    return {"status": "promoted" if sha else "in-sync", "environment": to_environment, "revision": sha,
            "message": message, "changes": changes, "applied": len(changes), "errors": [],
            "skipped": [{"target": t, "reason": why} for (_, t), why in sorted(plan.skipped.items())]}


SMOKE_CONCURRENCY = 4


def _flow_run_id() -> str | None:
    return str(flow_run.get_id() or "") or None


async def _finish(result, what: str) -> dict[str, Any]:
    """Log, publish the artifact and the events, and end the run Failed when it failed."""
    from prefect_gitops.adapters.events import emit_reconcile_events, publish_artifact

    get_run_logger().info("%s", text(result))
    await publish_artifact(result)
    emit_reconcile_events(result)
    report = result.to_json()
    if result.status == "busy":
        # not a success and not a failure of this run: another rollout holds the environment
        get_run_logger().warning("%s", result.message)
        return Cancelled(name="Busy", message=result.message[:5000], data=report)
    if not result.ok:
        # A Failed state, not an exception: the run ends Failed with the reason and the report, no traceback.
        message = f"{what} of {result.environment} failed ({result.error_kind}): {result.message}"
        get_run_logger().error("%s", message)
        return Failed(message=message[:5000], data=report)
    return report
