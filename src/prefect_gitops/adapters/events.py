"""Prefect events and artifacts for a finished reconcile, so Automations can notify."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from prefect.artifacts import acreate_markdown_artifact
from prefect.events import emit_event

from prefect_gitops.image_write import WrittenImage
from prefect_gitops.kinds import KINDS, kind
from prefect_gitops.plan import Change
from prefect_gitops.report import markdown
from prefect_gitops.result import ReconcileResult
from prefect_gitops.status import FAILED_EVENT, outcome as outcome_of

APPLIED = "prefect-gitops.reconcile.applied"
DRIFT_DETECTED = "prefect-gitops.reconcile.drift-detected"
FAILED = FAILED_EVENT
SMOKE_TEST_FAILED = "prefect-gitops.smoke-test.failed"
ROLLBACK = "prefect-gitops.rollback"
IMAGE_UPDATED = "prefect-gitops.image.updated"

def environment_resource(result: ReconcileResult) -> dict[str, str]:
    return {
        "prefect.resource.id": f"prefect-gitops.environment.{result.environment}",
        "prefect.resource.name": result.environment,
        "prefect-gitops.revision": result.revision or "",
    }


def _related(result: ReconcileResult, changes: list[Change]) -> list[dict[str, str]]:
    seen: dict[str, dict[str, str]] = {}
    for c in changes:
        target_id = result.targets.get((c.target_type, c.target))
        if target_id:
            rid = f"{kind(c.target_type).event_resource}.{target_id}"
            seen[rid] = {"prefect.resource.id": rid, "prefect.resource.role": "gitops-target",
                         "prefect.resource.name": c.target}
    return list(seen.values())


def _payload(result: ReconcileResult, changes: list[Change]) -> dict[str, Any]:
    return {
        "environment": result.environment,
        "revision": result.revision,
        "status": str(result.status),
        "flow_run_id": result.flow_run_id,
        **{k.section: sorted({c.target for c in changes if c.target_type == k.name}) for k in KINDS},
        "changes": [c.describe() for c in changes[:200]],
        "message": result.message[:2000],
    }


def emit_reconcile_events(result: ReconcileResult) -> list[str]:
    """Emit only what something happened for; return the event names sent."""
    sent = []
    plan = result.plan
    if result.applied:
        emit_event(APPLIED, environment_resource(result), related=_related(result, result.applied),
                   payload=_payload(result, result.applied))
        sent.append(APPLIED)
    if plan is not None and plan.drift:
        emit_event(DRIFT_DETECTED, environment_resource(result), related=_related(result, plan.drift),
                   payload=_payload(result, plan.drift))
        sent.append(DRIFT_DETECTED)
    for test, outcome in result.failed_smoke_tests:
        held = [c for c in result.held if (c.target_type, c.target) in test.targets]
        payload = _payload(result, held)
        payload.update(image=test.image, kind=test.kind, result=outcome.reason, smoke_message=outcome.message,
                       targets=[n for _, n in test.targets], log_tail=outcome.log_tail[-2000:])
        emit_event(SMOKE_TEST_FAILED, environment_resource(result),
                   related=_related(result, held or result.held), payload=payload)
        sent.append(SMOKE_TEST_FAILED)
    if result.rolled_back is not None and (result.reverted or result.rolled_back.reason == "manual") and (
            result.applied or result.reverted):
        changes = result.reverted or result.applied
        payload = _payload(result, changes)
        payload.update(rolled_back=result.rolled_back.model_dump(mode="json"))
        emit_event(ROLLBACK, environment_resource(result), related=_related(result, changes), payload=payload)
        sent.append(ROLLBACK)
    run_event = outcome_of(result.status).event  # the run as a whole (only a failed run has one)
    if run_event is not None:
        changes = result.failed or (plan.to_apply if plan else [])
        emit_event(run_event, environment_resource(result), related=_related(result, changes),
                   payload=_payload(result, changes))
        sent.append(run_event)
    return sent


def emit_image_updated(written: WrittenImage, repository: str) -> None:
    """A new image written back into the GitOps repo (a commit, or a merge request to review);
    `repository` is the source's display URL (no credentials)."""
    resource = {"prefect.resource.id": f"prefect-gitops.environment.{written.environment}",
                "prefect.resource.name": written.environment,
                "prefect-gitops.revision": written.revision or ""}
    payload = {"environment": written.environment, "target_type": written.target_type, "target": written.target,
               "old_image": written.old, "new_image": written.new, "outcome": written.outcome,
               "revision": written.revision, "branch": written.branch, "file": written.file,
               "merge_request_url": written.merge_request_url, "repository": repository}
    emit_event(IMAGE_UPDATED, resource, payload=payload)


async def publish_artifact(result: ReconcileResult) -> None:
    await acreate_markdown_artifact(
        key=f"gitops-{result.environment}",
        markdown=markdown(result),
        description=f"prefect-gitops reconcile of {result.environment}: {result.status}",
    )


def flush_to_api() -> None:
    """Send the logs and events still buffered in this process now, before it exits or its server
    stops. Prefect would drain them at exit anyway, warning "Still processing items" while it does:
    that warning is noise at the end of a CLI command, so it is held back here."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogHandler

    # Prefect's services share one instance registry: the log handler's flush drains the events
    # worker too, so both loggers are quiet before either is flushed.
    worker_loggers = [logging.getLogger(name) for name in ("EventsWorker", "APILogWorker")]
    levels = [logger.level for logger in worker_loggers]
    for logger in worker_loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.suppress(Exception):
            APILogHandler().flush()  # the handler instance tells the log worker to send what it holds
        with contextlib.suppress(Exception):
            EventsWorker.drain_all(timeout=30)
    finally:
        for logger, level in zip(worker_loggers, levels):
            logger.setLevel(level)
