"""Grouping a plan's changes into ordered waves, and the promotion gate. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from prefect_gitops.kinds import KINDS, kind
from prefect_gitops.model import EnvironmentFile, PromotionGate
from prefect_gitops.plan import ActualState, Change
from prefect_gitops.state import EnvironmentState


@dataclass
class Wave:
    number: int
    name: str
    max_parallel: int
    changes: list[Change] = field(default_factory=list)
    state: str = "pending"  # pending | applied | failed | rolled-back | not started
    message: str = ""


def wave_of(change: Change, spec: EnvironmentFile, actual: ActualState) -> int:
    """The target's own `wave:`, else the first rollout.waves selector that picks it, else 0."""
    target_kind = kind(change.target_type)
    own = target_kind.spec_of(spec, change.target)
    if own is not None and own.wave is not None:
        return own.wave
    for selector in spec.rollout.waves:
        if target_kind.selected_by(selector, change.target, actual):
            return selector.wave
    return 0


def assign_waves(changes: list[Change], spec: EnvironmentFile, actual: ActualState) -> list[Wave]:
    waves: dict[int, Wave] = {}
    for change in changes:
        number = wave_of(change, spec, actual)
        if number not in waves:
            selectors = [s for s in spec.rollout.waves if s.wave == number]
            name = next((s.name for s in selectors if s.name), f"wave {number}")
            parallel = next((s.max_parallel for s in selectors if s.max_parallel), spec.rollout.max_parallel)
            waves[number] = Wave(number=number, name=name, max_parallel=parallel)
        waves[number].changes.append(change)
    return [waves[n] for n in sorted(waves)]


def image_soak_start(previous: EnvironmentState, image: str) -> dt.datetime | None:
    """When `image` started running in the previous environment (None: it does not run there now)."""
    starts = [
        entry.applied_at or previous.last_applied_at
        for target_kind in KINDS if target_kind.runs_images
        for keys in previous.inventory.section(target_kind.name).values()
        for key, entry in keys.items()
        if key == "image" and entry.applied and entry.value == image
    ]
    known = [s for s in starts if s is not None]
    return min(known) if known else None


def unsoaked_images(changes: list[Change], gate: PromotionGate, previous: EnvironmentState | None,
                    now: dt.datetime) -> dict[str, str]:
    """Images this rollout would bring that the previous environment has not run healthy long enough."""
    images = sorted({c.new for c in changes if c.key == "image" and c.action == "set" and c.reason == "desired"
                     and isinstance(c.new, str)})
    refused: dict[str, str] = {}
    for image in images:
        if previous is None:
            refused[image] = f"environment {gate.from_!r} has never been reconciled"
            continue
        started = image_soak_start(previous, image)
        if started is None:
            refused[image] = f"not running in {gate.from_!r}"
        elif previous.condition is None or not previous.condition.ready or previous.rolled_back is not None:
            refused[image] = f"{gate.from_!r} is not healthy ({previous.condition.reason if previous.condition else 'unknown'})"
        elif (now - started).total_seconds() < gate.soak_seconds:
            soaked = int((now - started).total_seconds())
            refused[image] = f"soaked {soaked}s in {gate.from_!r}, needs {gate.soak_seconds}s"
    return refused


def applied_images(state: EnvironmentState) -> dict[tuple[str, str], str]:
    """(section, target) -> image as applied in an environment (for promotion)."""
    out: dict[tuple[str, str], str] = {}
    for target_kind in KINDS:
        if not target_kind.runs_images:
            continue
        for target, keys in state.inventory.section(target_kind.name).items():
            entry = keys.get("image")
            if entry is not None and entry.applied and isinstance(entry.value, str):
                out[(target_kind.section, target)] = entry.value
    return out
