"""The records the planner and the target kinds share (pure): the server's targets as read, and the
changes, no-ops and problems a plan is made of.

Below both plan.py and kinds/: the kinds build and read these, the planner puts them together.
plan.py re-exports them, so `from prefect_gitops.plan import Change` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    from prefect_gitops.kinds.deployment import DeploymentActual
    from prefect_gitops.kinds.work_pool import PoolActual
    from prefect_gitops.kinds.work_queue import QueueActual

# the registered kinds' names (kinds/): the stored records' `target_type`, so it stays a closed set
TargetType = Literal["work_pool", "deployment", "work_queue"]
ImageTargetType = Literal["work_pool", "deployment"]  # the kinds of target that run an image
ABSENT: Any = object()  # a key that is not there (None is a value)


class Change(BaseModel):
    target_type: TargetType
    target: str
    key: str
    action: Literal["set", "unset"]
    old: Any = None  # None with old_present=False: the key was absent
    new: Any = None
    reason: Literal["desired", "drift"]
    old_present: bool = True
    removed_from_git: bool = False  # the key left Git: unset it / restore the pool's old default
    apply: bool = True  # False: drift reported only (drift mode "warn")

    def describe(self) -> str:
        old = repr(self.old) if self.old_present else "(absent)"
        new = repr(self.new) if self.action == "set" else "(unset)"
        return f"{self.target_type} {self.target} {self.key}: {old} -> {new} [{self.reason}]"


class NoOp(BaseModel):
    target_type: TargetType
    target: str
    key: str
    reason: Literal["in-sync", "already-absent", "target-gone", "released"]
    value: Any = None


@dataclass(frozen=True)
class PlanProblem:
    path: tuple[str, ...]
    message: str


@dataclass(frozen=True)
class ActualState:
    """The server's side of every kind, by the kind's section (kinds/: `TargetKind.section`)."""

    work_pools: dict[str, PoolActual] = field(default_factory=dict)
    deployments: dict[str, DeploymentActual] = field(default_factory=dict)
    work_queues: dict[str, QueueActual] = field(default_factory=dict)  # existing queues of the managed pools


def same_value(a: Any, b: Any) -> bool:
    # JSON equality: 1 == 1.0 but True != 1, at any depth (Python's == says [False] == [0])
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    return bool(a == b)
