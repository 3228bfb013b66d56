"""Decide from the server's event log whether a drift check must read the targets (pure).

Prefect's server emits an event whenever a deployment, work pool or work queue is created,
changed or deleted, with the changed fields' old and new values. When the last check found
everything in sync, a change since then is visible there; a drift check asks the event log
first and reads every target only when a managed one may have changed (Argo CD diffs against
its watch cache the same way). Anything this module cannot rule out is a reason to read. What a
kind's update events say about its managed values is the kind's to tell (kinds/: event_reason).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from prefect_gitops.kinds import change_event_names, kind
from prefect_gitops.plan import TargetType
from prefect_gitops.state import Inventory

# How far back a drift check asks the log, from the point the last check covered:
# - a full read that started at t reflects every change committed before it; an event may be stamped
#   a moment before its change commits, and this machine's clock and the server's may differ;
SKEW = dt.timedelta(seconds=5)
# - the server persists events in batches, a few seconds after they occurred: a check that asked the
#   log at t may not have seen what happened just before t, so the next one asks from this far back.
#   Measured with the API replicas apart from the services (events through Redis to the persister,
#   tests/integration/test_production_server.py): a change's event is in the log 1-6 s later (the
#   persister flushes every 5 s), the controller's own events ~10-12 s (prefect-redis batches what
#   clients send for up to 10 s). 60 s covers both; only a stopped or backlogged persister exceeds it.
PERSIST_LAG = dt.timedelta(seconds=60)


def covered_after_full_read(started: dt.datetime) -> dt.datetime:
    """Events that occurred before this are reflected in what a full read (started then) saw."""
    return started - SKEW


def covered_after_event_check(previous: dt.datetime, started: dt.datetime) -> dt.datetime:
    """Events that occurred before this were persisted when a check that asked the log at `started` ran."""
    return max(previous, started - PERSIST_LAG)


CHANGE_EVENTS = change_event_names()  # the server's events for every registered kind


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
    target_kind = kind(target_type)
    what = f"{target_kind.label} {target!r}"
    if target is None:
        return f"a {target_kind.label} event that names no target"
    if not target_kind.watched(target, watched):
        return None
    created_or_deleted = [e.action for e in events if e.action in ("created", "deleted")]
    if created_or_deleted:
        return f"{what} was {created_or_deleted[-1]}"
    return target_kind.event_reason(what, events, inventory.section(target_type).get(target, {}))
