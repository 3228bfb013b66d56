"""`canary` smoke tests and post-apply checks: a real run of the target deployment."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID, uuid4

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import arun_deployment
from prefect.states import Cancelling

from prefect_gitops.adapters.process import RunLogger, tail
from prefect_gitops.smoke import SmokeResult

CANARY_TAGS = ["prefect-gitops", "prefect-gitops-canary"]


async def run_canary(client: PrefectClient, test_id: str, deployment: str, parameters: dict[str, Any], timeout: int,
                     environment: str, image: str | None, logger: RunLogger, purpose: str = "canary",
                     as_subflow: bool = True) -> SmokeResult:
    """Run `deployment` once (with image override when given) and wait for a final state."""
    job_variables = {"image": image} if image else None
    tags = [*CANARY_TAGS, f"prefect-gitops-env:{environment}", f"prefect-gitops-{purpose}"]
    try:
        # The idempotency key makes Prefect's client's retry of the create (after a 503 or a lost answer, the
        # server having made the run) return that run, not a second one. New for each call: a later test of
        # the same image (another reconcile, or this flow run retried) must start a run of its own.
        flow_run = await arun_deployment(
            name=deployment, client=client, parameters=parameters, timeout=timeout, poll_interval=1,
            tags=tags, job_variables=job_variables, as_subflow=as_subflow, idempotency_key=uuid4().hex,
            flow_run_name=f"{purpose}-{environment}-{deployment.split('/')[-1]}")
    except Exception as exc:
        return SmokeResult(test_id, False, "error", f"cannot start a run of {deployment}: {exc}")
    detail = {"flow_run_id": str(flow_run.id), "deployment": deployment}
    logger.info("%s run %s of %s: %s", purpose, flow_run.id, deployment, flow_run.state_name)
    state = flow_run.state
    # the reason a run failed is in its logs, which reach the server a moment after its final state
    ended_badly = state is not None and state.is_final() and state.type != StateType.COMPLETED
    log = await _log_tail(client, flow_run.id, settle_seconds=10 if ended_badly else 0)
    if state is not None and state.type == StateType.COMPLETED:
        return SmokeResult(test_id, True, "passed", f"run {flow_run.name} completed", log, detail)
    if state is None or not state.is_final():
        await client.set_flow_run_state(flow_run.id, Cancelling(message="prefect-gitops: canary timed out"), force=True)
        return SmokeResult(test_id, False, "timeout", f"run {flow_run.name} not finished within {timeout}s "
                           f"(was {flow_run.state_name}); cancelled", log, detail)
    return SmokeResult(test_id, False, "failed", f"run {flow_run.name} ended {state.name}: {state.message or ''}",
                       log, detail)


async def _log_tail(client: PrefectClient, flow_run_id: UUID, settle_seconds: float = 0) -> str:
    """The run's last log lines; while there are none yet, look again for up to `settle_seconds`."""
    deadline = time.monotonic() + settle_seconds
    while True:
        try:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                          limit=200)
        except Exception:
            return ""
        if logs or time.monotonic() >= deadline:
            return tail("\n".join(log.message for log in logs))
        await asyncio.sleep(0.5)
