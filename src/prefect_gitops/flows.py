"""The control flows. Thin: parameters for the UI's run form, then the reconcile layer."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from prefect import flow, get_client, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN
from prefect_gitops.reconcile import ReconcileRequest, reconcile as run_reconcile
from prefect_gitops.report import text


class ReconcileFailed(Exception):
    """The reconcile did not converge; `result` is its JSON report."""

    def __init__(self, message: str, result: dict[str, Any]):
        super().__init__(message)
        self.result = result


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
) -> dict[str, Any]:
    from prefect_gitops.adapters.events import emit_reconcile_events, publish_artifact

    logger = get_run_logger()
    request = ReconcileRequest(
        environment=environment, source=GitSource(source_url), ref=ref, path=path, revision=revision,
        dry_run=dry_run, drift_mode=None if drift_mode == "from-file" else drift_mode,
        concurrency=concurrency, flow_run_id=str(flow_run.get_id() or "") or None,
    )
    async with get_client() as client:
        result = await run_reconcile(request, PrefectAPI(client))
    logger.info("%s", text(result))
    await publish_artifact(result)
    emit_reconcile_events(result)
    report = result.to_json()
    if not result.ok:
        raise ReconcileFailed(f"reconcile of {environment} failed ({result.error_kind}): {result.message}", report)
    return report
