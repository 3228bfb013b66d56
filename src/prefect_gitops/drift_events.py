"""Decide from the server's event log whether a drift check must read the targets (pure).

Prefect's server emits an event whenever a deployment, work pool or work queue is created,
changed or deleted, with the changed fields' old and new values. When the last check found
everything in sync, a change since then is visible there; a drift check asks the event log
first and reads every target only when a managed one may have changed (Argo CD diffs against
its watch cache the same way). Anything this module cannot rule out is a reason to read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prefect_gitops.plan import ActualState, PoolActual, TargetType, current_values, same_value
from prefect_gitops.state import Inventory

# How far back a drift check asks the log, from the point the last check covered:
# - a full read that started at t reflects every change committed before it; an event may be stamped
#   a moment before its change commits, and this machine's clock and the server's may differ;
SKEW = dt.timedelta(seconds=5)
# - the server persists events in batches, a few seconds after they occurred: a check that asked the
#   log at t may not have seen what happened just before t, so the next one asks from this far back.
PERSIST_LAG = dt.timedelta(seconds=60)


def covered_after_full_read(started: dt.datetime) -> dt.datetime:
    """Events that occurred before this are reflected in what a full read (started then) saw."""
    return started - SKEW


def covered_after_event_check(previous: dt.datetime, started: dt.datetime) -> dt.datetime:
    """Events that occurred before this were persisted when a check that asked the log at `started` ran."""
    return max(previous, started - PERSIST_LAG)


CHANGE_EVENTS = [
    *(f"prefect.deployment.{a}" for a in ("created", "updated", "deleted")),
    *(f"prefect.work-pool.{a}" for a in ("created", "updated", "deleted")),
    *(f"prefect.work-queue.{a}" for a in ("created", "updated", "deleted", "paused", "ready", "not-ready")),
]


@dataclass(frozen=True)
class ChangeEvent:
    target_type: TargetType
    target: str | None  # "<flow>/<deployment>", "<pool>", "<pool>/<queue>"; None: the event does not say
    action: str  # created, updated, deleted; for queues also paused, ready, not-ready
    occurred: dt.datetime
    updates: dict[str, Any] = field(default_factory=dict)  # field -> {"from": ..., "to": ...}


@dataclass(frozen=True)
class Watched:
    """What a full read would read: the file's and the inventory's targets. (A full read also reads
    the pools of managed deployments the file does not name, to validate their keys; a change to one
    of those templates is seen at the next full read.)"""

    work_pools: frozenset[str]
    deployments: frozenset[str]
    queue_pools: frozenset[str]  # pools whose queues are managed (any queue there shifts priorities)


def reasons_to_read(events: list[ChangeEvent], watched: Watched, inventory: Inventory) -> list[str]:
    """Why the targets must be read (empty: no managed value changed since the last check)."""
    by_target: dict[tuple[TargetType, str | None], list[ChangeEvent]] = {}
    for event in sorted(events, key=lambda e: e.occurred):
        by_target.setdefault((event.target_type, event.target), []).append(event)
    reasons = []
    for (target_type, target), target_events in by_target.items():
        reason = _reason(target_type, target, target_events, watched, inventory)
        if reason:
            reasons.append(reason)
    return reasons


def _reason(target_type: TargetType, target: str | None, events: list[ChangeEvent], watched: Watched,
            inventory: Inventory) -> str | None:
    what = f"{target_type.replace('_', ' ')} {target!r}"
    if target is None:
        return f"a {target_type.replace('_', ' ')} event that names no target"
    if target_type == "work_queue":
        if target.split("/", 1)[0] not in watched.queue_pools:
            return None
    elif target not in (watched.work_pools if target_type == "work_pool" else watched.deployments):
        return None
    created_or_deleted = [e.action for e in events if e.action in ("created", "deleted")]
    if created_or_deleted:
        return f"{what} was {created_or_deleted[-1]}"
    managed = inventory.section(target_type).get(target, {})
    if target_type == "deployment":
        if any("work_queue_id" in e.updates for e in events):
            return f"{what} moved to another work queue"
        latest = _latest_value(events, "infra_overrides")
        if latest is _NONE:
            return None  # only fields prefect-gitops does not manage changed
        return _mismatch(what, managed, latest if isinstance(latest, dict) else {})
    if target_type == "work_pool":
        updates = [e.updates["base_job_template"] for e in events if "base_job_template" in e.updates]
        if not updates:
            return None
        before, after = updates[0].get("from"), updates[-1].get("to")
        if not isinstance(before, dict) or not isinstance(after, dict):
            return f"{what}: base job template changed"
        if _without_defaults(before, managed) != _without_defaults(after, managed):
            return f"{what}: base job template changed beyond the defaults prefect-gitops manages"
        current = current_values(ActualState(work_pools={target: PoolActual(target, "", after)}), "work_pool", target)
        return _mismatch(what, managed, current)
    # work queues: the server shifts a pool's other queues when one takes a priority, without an event
    # for them, so a priority set anywhere in the pool is a reason to read
    if any("priority" in e.updates or "name" in e.updates for e in events):
        return f"{what}: priority or name changed"
    values: dict[str, Any] = {}  # the managed fields the events say something about
    limit = _latest_value(events, "concurrency_limit")
    if limit is not _NONE:
        values["concurrency_limit"] = limit
    statuses = [e.action for e in events if e.action in ("paused", "ready", "not-ready")]
    if statuses:
        values["paused"] = statuses[-1] == "paused"
    return _mismatch(what, {k: v for k, v in managed.items() if k in values}, values)


_NONE = object()


def _latest_value(events: list[ChangeEvent], name: str) -> Any:
    for event in reversed(events):
        if name in event.updates:
            change = event.updates[name]
            return change.get("to") if isinstance(change, dict) else _NONE
    return _NONE


def _mismatch(what: str, managed: dict, current: dict[str, Any] | None) -> str | None:
    if current is None:
        return f"{what} is gone"
    for key, entry in managed.items():
        if key not in current or not same_value(current[key], entry.value):
            return f"{what}: {key} changed"
    return None


def _without_defaults(template: dict, managed: dict) -> dict:
    """The template with the managed keys' defaults taken out (what else changing matters)."""
    out = {**template, "variables": {**(template.get("variables") or {})}}
    properties = {**(out["variables"].get("properties") or {})}
    for key in managed:
        if isinstance(properties.get(key), dict):
            properties[key] = {k: v for k, v in properties[key].items() if k != "default"}
    out["variables"]["properties"] = properties
    return out
