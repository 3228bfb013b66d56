"""Work queues of the managed pools ("<pool>/<queue>"): priority, concurrency limit, paused. Pure.

A declared queue that does not exist is created; one prefect-gitops created is never deleted (runs
may wait on it), only released. Queues roll out with their pool, and are written one at a time,
highest priority first, because the server shifts a pool's other queues down when one takes a priority.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Protocol

from prefect_gitops.kinds.base import TargetKind, latest_update, mismatch, NO_UPDATE
from prefect_gitops.kinds.work_pool import WORK_POOL
from prefect_gitops.model import desired_work_queues
from prefect_gitops.targets import ActualState, Change, PlanProblem

if TYPE_CHECKING:
    from prefect_gitops.drift_events import ChangeEvent, Watched
    from prefect_gitops.model import EnvironmentFile, WaveSelector, WorkPoolSpec
    from prefect_gitops.state import ManagedKey

LAST = 10**6  # the write order of a queue that has no priority


@dataclass(frozen=True)
class QueueActual:
    name: str  # "pool/queue"
    id: str | None  # None: does not exist yet
    values: dict[str, Any]  # priority, concurrency_limit, paused


class WorkQueueWrites(Protocol):
    async def create_or_update_work_queue(self, pool: str, name: str, queue_id: str | None,
                                          fields: dict[str, Any]) -> None: ...


def pool_of(target: str) -> str:
    return target.split("/", 1)[0]


def _queue(actual: ActualState, target: str) -> QueueActual:
    return actual.work_queues.get(target) or QueueActual(name=target, id=None, values={})


class WorkQueueKind(TargetKind):
    name = "work_queue"
    section = "work_queues"
    label = "work queue"
    event_resource = "prefect.work-queue"
    change_actions = ("created", "updated", "deleted", "paused", "ready", "not-ready")
    event_parent_role = "work-pool"  # known by "<pool>/<queue>"
    restores_previous = True  # a field that leaves Git gets its value before back
    releases_created = True
    writes_serially = True

    def actuals(self, actual: ActualState) -> Mapping[str, QueueActual]:
        return actual.work_queues

    def desired(self, spec: EnvironmentFile) -> dict[str, dict[str, Any]]:
        return desired_work_queues(spec)

    def current_values(self, actual: ActualState, target: str) -> dict[str, Any] | None:
        queue = actual.work_queues.get(target)
        if queue is None:  # a queue to create: nothing set yet, but its pool must still exist
            return {} if pool_of(target) in actual.work_pools else None
        return dict(queue.values)

    def validate(self, spec: EnvironmentFile, actual: ActualState, cache: dict[Any, Any]) -> list[PlanProblem]:
        control = spec.rollout.control_queue
        return [PlanProblem(("rollout", "control_queue", "work_pools"),
                            f"work pool {pool!r} does not exist on the Prefect server")
                for pool in ((control.work_pools or []) if control else []) if pool not in actual.work_pools]

    def after(self, actual: ActualState, target: str, changes: list[Change]) -> QueueActual:
        queue = _queue(actual, target)
        values = {**queue.values, **{c.key: c.new for c in changes if c.action == "set"}}
        return QueueActual(name=target, id=queue.id, values=values)

    async def write(self, api: WorkQueueWrites, actual: ActualState, target: str, changes: list[Change]) -> None:
        fields = {"is_paused" if c.key == "paused" else c.key: c.new for c in changes if c.action == "set"}
        pool, name = target.split("/", 1)
        await api.create_or_update_work_queue(pool, name, _queue(actual, target).id, fields)

    def write_order(self, actual: ActualState, target: str, changes: list[Change]) -> int:
        """Its priority as written (highest, i.e. lowest number, first)."""
        for change in changes:
            if change.key == "priority" and change.action == "set" and isinstance(change.new, int):
                return change.new
        queue = actual.work_queues.get(target)
        return (queue.values.get("priority") if queue else None) or LAST

    def spec_of(self, spec: EnvironmentFile, target: str) -> WorkPoolSpec | None:
        return spec.work_pools.get(pool_of(target))  # queues roll out with their pool

    def selected_by(self, selector: WaveSelector, target: str, actual: ActualState) -> bool:
        return WORK_POOL.selected_by(selector, pool_of(target), actual)

    def add_to_file(self, file: dict[str, Any], target: str, values: dict[str, Any]) -> None:
        pool, queue = target.split("/", 1)
        file.setdefault(WORK_POOL.section, {}).setdefault(pool, {}).setdefault(self.section, {})[queue] = values

    def watched(self, target: str, watched: Watched) -> bool:
        return pool_of(target) in watched.queue_pools  # any queue there shifts the managed ones' priorities

    def event_reason(self, what: str, events: list[ChangeEvent], managed: dict[str, ManagedKey]) -> str | None:
        # the server shifts a pool's other queues when one takes a priority, without an event for them,
        # so a priority set anywhere in the pool is a reason to read
        if any("priority" in e.updates or "name" in e.updates for e in events):
            return f"{what}: priority or name changed"
        values: dict[str, Any] = {}  # the managed fields the events say something about
        limit = latest_update(events, "concurrency_limit")
        if limit is not NO_UPDATE:
            values["concurrency_limit"] = limit
        statuses = [e.action for e in events if e.action in ("paused", "ready", "not-ready")]
        if statuses:
            values["paused"] = statuses[-1] == "paused"
        return mismatch(what, {k: v for k, v in managed.items() if k in values}, values)


WORK_QUEUE = WorkQueueKind()
