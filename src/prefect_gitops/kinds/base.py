"""What a target kind is (the TargetKind protocol), the registry of kinds, and helpers the kinds share.

Pure: a kind reads and builds records (targets.py) and hands its writes to a small client-side
protocol of its own that adapters/prefect_api.py implements. Everything that differs between work
pools, deployments and work queues is a method or an attribute here; the planner, the writes, the
waves, the smoke-test selection, the drift events, the events and the inventory only iterate
`KINDS` or look a kind up by name with `kind()`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol

from prefect_gitops.targets import ActualState, Change, PlanProblem, TargetType, same_value

if TYPE_CHECKING:
    from prefect_gitops.drift_events import ChangeEvent, Watched
    from prefect_gitops.model import EnvironmentFile, SmokeTestOverride, WaveSelector
    from prefect_gitops.state import ManagedKey

ByTarget = Mapping[tuple[TargetType, str], list[Change]]  # (kind name, target) -> its changes


class RolloutSpec(Protocol):
    """The file's entry that carries a target's rollout settings (a work pool's or a deployment's)."""

    @property
    def wave(self) -> int | None: ...

    @property
    def smoke_test(self) -> SmokeTestOverride | None: ...


class TargetKind(ABC):
    """One kind of target prefect-gitops manages keys of."""

    name: ClassVar[TargetType]  # "work_pool": Change.target_type, the inventory's and the report's kind
    section: ClassVar[str]  # "work_pools": its field in the inventory, ActualState and the events' payload
    label: ClassVar[str]  # "work pool": in messages
    event_resource: ClassVar[str]  # "prefect.work-pool": the server's resource (ids and change events)
    change_actions: ClassVar[tuple[str, ...]] = ("created", "updated", "deleted")  # the server's events
    event_parent_role: ClassVar[str | None] = None  # its name is "<parent>/<name>": the related resource's role
    restores_previous: ClassVar[bool] = False  # a key leaving Git gets its value before back (else: unset)
    releases_created: ClassVar[bool] = False  # a target prefect-gitops created is released, never deleted
    writes_serially: ClassVar[bool] = False  # written one at a time, in `write_order`, after the others
    runs_images: ClassVar[bool] = False  # its values hold the image runs use: smoke-tested, soaked, promoted

    # -- what Git wants and what the server has ------------------------------------------------------

    @abstractmethod
    def actuals(self, actual: ActualState) -> Mapping[str, Any]:
        """The kind's targets on the server, by name."""

    @abstractmethod
    def desired(self, spec: EnvironmentFile) -> dict[str, dict[str, Any]]:
        """target -> key -> value, as the environment file asks."""

    @abstractmethod
    def current_values(self, actual: ActualState, target: str) -> dict[str, Any] | None:
        """The target's managed-level values on the server, or None when the target is gone."""

    @abstractmethod
    def validate(self, spec: EnvironmentFile, actual: ActualState, cache: dict[Any, Any]) -> list[PlanProblem]:
        """What the file asks of this kind that the server cannot take (`cache`: shared by one plan's checks)."""

    # -- writing ---------------------------------------------------------------------------------------

    @abstractmethod
    def after(self, actual: ActualState, target: str, changes: list[Change]) -> Any:
        """The target as it is on the server once `changes` were written."""

    @abstractmethod
    async def write(self, api: Any, actual: ActualState, target: str, changes: list[Change]) -> None:
        """Write the target's changes as one body (`api`: the kind's writes protocol, see kinds/__init__.py)."""

    def write_order(self, actual: ActualState, target: str, changes: list[Change]) -> int:
        """Where the target goes among its kind's serial writes (lowest first)."""
        return 0

    # -- rollout: waves, smoke tests, post-apply checks, rollback -----------------------------------------

    @abstractmethod
    def spec_of(self, spec: EnvironmentFile, target: str) -> RolloutSpec | None:
        """The file's entry whose wave and smoke_test the target follows (None: the file does not name it)."""

    @abstractmethod
    def selected_by(self, selector: WaveSelector, target: str, actual: ActualState) -> bool:
        """Whether a rollout.waves selector picks the target."""

    def proving_deployment(self, target: str, configured: str | None) -> str | None:
        """The deployment whose runs prove the target (canary, post-apply check); `configured`: the
        deployment the policy names."""
        return None

    def image_after(self, actual: ActualState, target: str, changes: list[Change], by_target: ByTarget) -> Any:
        """The image the target runs with once the plan is applied, when its own changes do not say."""
        return None

    @abstractmethod
    def add_to_file(self, file: dict[str, Any], target: str, values: dict[str, Any]) -> None:
        """Put the target's managed values into an environment file (as a dict), to plan a rollback against."""

    # -- drift: the server's change events -------------------------------------------------------------

    @abstractmethod
    def watched(self, target: str, watched: Watched) -> bool:
        """Whether a full read would read the target."""

    @abstractmethod
    def event_reason(self, what: str, events: list[ChangeEvent], managed: dict[str, ManagedKey]) -> str | None:
        """Why the target's update events (oldest first) may have changed a managed value (None: they did not)."""


# -- the registry (filled in kinds/__init__.py, in write order) -------------------------------------------

KINDS: list[TargetKind] = []
_BY_NAME: dict[str, TargetKind] = {}


def register(target_kind: TargetKind) -> None:
    if target_kind.name in _BY_NAME:
        raise ValueError(f"target kind {target_kind.name!r} is registered twice")
    KINDS.append(target_kind)
    _BY_NAME[target_kind.name] = target_kind


def kind(name: str) -> TargetKind:
    """The registered kind called `name` ("work_pool", ...); KeyError when there is none."""
    return _BY_NAME[name]


def kind_of_event(event: str) -> tuple[TargetKind, str] | None:
    """The kind and action of a server change event ("prefect.work-pool.updated"), None if not a kind's."""
    resource, _, action = event.rpartition(".")
    for target_kind in KINDS:
        if resource == target_kind.event_resource:
            return target_kind, action
    return None


def change_event_names() -> list[str]:
    """Every server event that says a target of a registered kind was created, changed or deleted."""
    return [f"{k.event_resource}.{action}" for k in KINDS for action in k.change_actions]


# -- helpers for the kinds' event_reason -------------------------------------------------------------------

NO_UPDATE: Any = object()


def latest_update(events: list[ChangeEvent], field: str) -> Any:
    """The newest value the events give `field`, or NO_UPDATE when none of them says."""
    for event in reversed(events):
        if field in event.updates:
            change = event.updates[field]
            return change.get("to") if isinstance(change, dict) else NO_UPDATE
    return NO_UPDATE


def mismatch(what: str, managed: Mapping[str, ManagedKey], current: dict[str, Any] | None) -> str | None:
    """Why the managed values and `current` differ (None: every managed key holds its value)."""
    if current is None:
        return f"{what} is gone"
    for key, entry in managed.items():
        if key not in current or not same_value(current[key], entry.value):
            return f"{what}: {key} changed"
    return None
