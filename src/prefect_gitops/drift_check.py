"""The drift check through the server's event log: when Git has not moved and the last check ended in
sync, ask the log whether a managed target may have changed since, instead of reading every target.

The log is an optimisation: whenever it cannot answer for certain, the reconcile reads everything
(the reason goes in the report's `drift_check`). drift_events.py decides what matters, purely.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.drift_events import Watched, covered_after_event_check, reasons_to_read
from prefect_gitops.errors import GitOpsError
from prefect_gitops.model import DeploymentSpec, EnvironmentFile, WorkPoolSpec, desired_work_queues
from prefect_gitops.result import ReconcileResult
from prefect_gitops.state import Condition, EnvironmentState, utcnow
from prefect_gitops.status import Reason, Status

EVENTS_AT_LEAST = 200  # change events worth reading however few the targets


def names_to_read(spec: EnvironmentFile, state: EnvironmentState) -> dict[str, set[str]]:
    """What to read from the server: everything the file names and everything the inventory holds."""
    queues = set(desired_work_queues(spec)) | set(state.inventory.work_queues)
    return {"pool_names": set(spec.work_pools) | set(state.inventory.work_pools),
            "deployment_names": set(spec.deployments) | set(state.inventory.deployments) | _canary_deployments(spec),
            "queue_pools": {n.split("/", 1)[0] for n in queues}}


def _canary_deployments(spec: EnvironmentFile) -> set[str]:
    named = {spec.smoke_test.post_apply.deployment, spec.smoke_test.canary.deployment if spec.smoke_test.canary else None}
    targets: list[WorkPoolSpec | DeploymentSpec] = [*spec.work_pools.values(), *spec.deployments.values()]
    for target in targets:
        if target.smoke_test and target.smoke_test.canary:
            named.add(target.smoke_test.canary.deployment)
    return {n for n in named if n}


async def check_event_log(api: PrefectAPI, spec: EnvironmentFile, state: EnvironmentState, revision: str,
                          full_check: bool, now: dt.datetime, result: ReconcileResult) -> dt.datetime | None:
    """The time the check covers up to when no managed target changed, else None (and the reason to
    read every target goes in `result.drift_check`)."""
    if full_check:
        result.drift_check = "full read: asked for"
        return None
    if revision != state.last_applied_revision:
        return None  # a new revision: not a drift check
    why_not = state.may_check_by_events(revision, now, spec.drift.full_read_interval_seconds)
    if why_not is None:
        assert state.drift_checked_until is not None  # may_check_by_events said so
        checked_until = covered_after_event_check(state.drift_checked_until, utcnow())
        why_not = await _reason_in_event_log(api, spec, state)
        if why_not is None:
            result.drift_check = "event log"
            return checked_until
    result.drift_check = f"full read: {why_not}"
    return None


async def _reason_in_event_log(api: PrefectAPI, spec: EnvironmentFile, state: EnvironmentState) -> str | None:
    """What the event log holds since the last check that may concern a managed value (None: nothing)."""
    names = names_to_read(spec, state)
    # a page of 50 events costs about what a page of 200 deployments does: past a quarter as many
    # events as targets, reading the targets is cheaper
    at_most = max(EVENTS_AT_LEAST, len(names["deployment_names"]) // 4)
    assert state.drift_checked_until is not None  # may_check_by_events said so
    try:
        events = await api.read_change_events(state.drift_checked_until, at_most)
    except GitOpsError as exc:  # the log is an optimisation: without it, read everything
        return f"the event log could not be read ({exc})"
    if events is None:
        return f"more than {at_most} change events since the last check: reading every target is cheaper"
    watched = Watched(work_pools=frozenset(names["pool_names"] | names["queue_pools"]),
                      deployments=frozenset(names["deployment_names"]), queue_pools=frozenset(names["queue_pools"]))
    reasons = reasons_to_read(events, watched, state.inventory)
    if not reasons:
        return None
    return reasons[0] + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else "")


async def record_quiet_check(api: PrefectAPI, state: EnvironmentState, handle: Any, checked_until: dt.datetime,
                             spec: EnvironmentFile, revision: str, result: ReconcileResult) -> ReconcileResult:
    since = state.drift_checked_until
    state.last_drift_check_at = utcnow()
    state.drift_checked_until = checked_until
    state.drift_check_interval_seconds = spec.drift.check_interval_seconds
    state.condition = Condition(
        ready=True, reason=Reason.IN_SYNC,
        message=f"in sync at {revision[:12]}: the server's event log shows no change to a managed target since "
                f"{since:%Y-%m-%d %H:%M:%S} UTC (every target was last read at "
                f"{state.last_full_read_at:%Y-%m-%d %H:%M:%S} UTC)")
    await api.write_state(state, handle)
    result.status, result.message = Status.IN_SYNC, state.condition.message
    return result
