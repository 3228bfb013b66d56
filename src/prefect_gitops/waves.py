"""Grouping a plan's changes into ordered waves, and the promotion gate. Pure."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

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
    if change.target_type == "work_queue":  # queues roll out with their pool
        target = spec.work_pools.get(change.target.split("/", 1)[0])
    else:
        section = spec.work_pools if change.target_type == "work_pool" else spec.deployments
        target = section.get(change.target)
    if target is not None and target.wave is not None:
        return target.wave
    tags = set(actual.deployments[change.target].tags) if change.target in actual.deployments else set()
    for selector in spec.rollout.waves:
        if change.target_type == "deployment" and (
                any(fnmatchcase(change.target, p) for p in selector.deployments) or tags & set(selector.tags)):
            return selector.wave
        if change.target_type in ("work_pool", "work_queue") and any(
                fnmatchcase(change.target.split("/", 1)[0], p) for p in selector.work_pools):
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
        for section in (previous.inventory.work_pools, previous.inventory.deployments)
        for keys in section.values()
        for key, entry in keys.items()
        if key == "image" and entry.applied and entry.value == image
    ]
    starts = [s for s in starts if s is not None]
    return min(starts) if starts else None


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
    for section, targets in (("work_pools", state.inventory.work_pools), ("deployments", state.inventory.deployments)):
        for target, keys in targets.items():
            entry = keys.get("image")
            if entry is not None and entry.applied and isinstance(entry.value, str):
                out[(section, target)] = entry.value
    return out
