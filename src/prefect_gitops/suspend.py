"""Suspend and resume: pause reconciliation (and drift correction) of an environment, under its lock."""

from __future__ import annotations

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.state import Condition, EnvironmentState, Suspension
from prefect_gitops.status import Reason
from prefect_gitops.steps import Lock


async def set_suspended(api: PrefectAPI, environment: str, suspend: bool, reason: str = "",
                        lock: Lock | None = None,
                        lock_timeout_seconds: float = 300) -> EnvironmentState:
    """Suspend or resume reconciliation (and drift correction) of an environment."""
    async def change() -> EnvironmentState:
        state, handle = await api.read_state(environment, history=False)
        if suspend:
            state.suspended = Suspension(reason=reason)
            state.condition = Condition(ready=False, reason=Reason.SUSPENDED, message=reason or "suspended")
        else:
            state.suspended = None
            state.last_drift_check_at = None  # the next reconcile checks everything again
            state.condition = Condition(ready=False, reason=Reason.RESUMED, message="resumed; waiting for a reconcile")
        await api.write_state(state, handle)
        return state

    if lock is None:
        return await change()
    async with lock(environment, lock_timeout_seconds):
        return await change()
