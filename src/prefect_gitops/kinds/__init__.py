"""The kinds of target prefect-gitops manages, registered in write order (pools, then deployments, then
queues). Adding a kind is one new module (a TargetKind, see base.py) plus its registration here: its
`register` line and its writes protocol among PrefectWrites' bases (adapters/prefect_api.py implements it).
"""

from __future__ import annotations

from typing import Protocol

from prefect_gitops.kinds.base import KINDS, TargetKind, change_event_names, kind, kind_of_event, register
from prefect_gitops.kinds.deployment import DEPLOYMENT, DeploymentWrites
from prefect_gitops.kinds.work_pool import WORK_POOL, WorkPoolWrites
from prefect_gitops.kinds.work_queue import WORK_QUEUE, WorkQueueWrites

register(WORK_POOL)
register(DEPLOYMENT)
register(WORK_QUEUE)


class PrefectWrites(WorkPoolWrites, DeploymentWrites, WorkQueueWrites, Protocol):
    """Every registered kind's writes: what `TargetKind.write` is handed."""


__all__ = ["KINDS", "PrefectWrites", "TargetKind", "change_event_names", "kind", "kind_of_event", "register"]
