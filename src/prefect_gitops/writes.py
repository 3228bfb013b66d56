"""Writing changes to the server: the write-ahead record, then only the changed targets, with a bound.

Used by the reconcile's waves, the automatic rollback and the manual rollback. A failed write is
kept with its typed error (TransientError or PermanentError), never judged by its message.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from prefect_gitops.adapters.prefect_api import PrefectAPI, bounded_gather
from prefect_gitops.errors import GitOpsError
from prefect_gitops.kinds import KINDS, PrefectWrites, kind
from prefect_gitops.plan import ActualState, Change
from prefect_gitops.result import ReconcileResult
from prefect_gitops.smoke import Target, changes_by_target
from prefect_gitops.state import EnvironmentState, begin_apply


@dataclass
class Written:
    applied: list[Change] = field(default_factory=list)
    failed: list[Change] = field(default_factory=list)
    errors: list[GitOpsError] = field(default_factory=list)


async def apply_changes(api: PrefectAPI, state: EnvironmentState, handle: Any, actual: ActualState,
                        changes: list[Change], revision: str, concurrency: int, result: ReconcileResult) -> Any:
    """Record the attempt (inventory entries not yet applied), then write; returns the state's new handle."""
    if changes:
        state.inventory = begin_apply(state.inventory, changes, revision)
        handle = await api.write_state(state, handle)
    written = await write_changes(api, actual, changes, concurrency)
    result.record_writes(written.applied, written.failed, written.errors)
    return handle


async def write_changes(api: PrefectWrites, actual: ActualState, changes: list[Change],
                        concurrency: int) -> Written:
    """Each target's changes as one write: most kinds' targets concurrently (at most `concurrency` at
    once), then those of kinds that write serially, one at a time in the kind's order."""
    by_target = changes_by_target(changes)

    def job(target: Target) -> Callable[[], Awaitable[None]]:
        return lambda: kind(target[0]).write(api, actual, target[1], by_target[target])

    together = [t for t in by_target if not kind(t[0]).writes_serially]
    outcomes: list[Any] = await bounded_gather(concurrency, [job(t) for t in together])
    one_by_one = sorted((t for t in by_target if kind(t[0]).writes_serially),
                        key=lambda t: _serial_order(t, by_target[t], actual))
    for target in one_by_one:
        try:
            await job(target)()
            outcomes.append(None)
        except GitOpsError as exc:
            outcomes.append(exc)
    return _written(by_target, together + one_by_one, outcomes)


def _written(by_target: dict[Target, list[Change]], order: list[Target], outcomes: list[Any]) -> Written:
    """The changes by outcome, in the order written; an error that is not the server's is raised."""
    written = Written()
    for target, outcome in zip(order, outcomes):
        if isinstance(outcome, GitOpsError):
            written.failed.extend(by_target[target])
            written.errors.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            written.applied.extend(by_target[target])
    return written


def _serial_order(target: Target, changes: list[Change], actual: ActualState) -> tuple[int, int]:
    target_kind = kind(target[0])
    return KINDS.index(target_kind), target_kind.write_order(actual, target[1], changes)


def actual_after(actual: ActualState, applied: list[Change]) -> ActualState:
    """The server's targets as they are once `applied` was written."""
    sections = {k.section: dict(k.actuals(actual)) for k in KINDS}
    for (name, target), changes in changes_by_target(applied).items():
        target_kind = kind(name)
        sections[target_kind.section][target] = target_kind.after(actual, target, changes)
    return dataclasses.replace(actual, **sections)


def reverse(change: Change) -> Change:
    """The change that undoes `change`."""
    return Change(target_type=change.target_type, target=change.target, key=change.key,
                  action="set" if change.old_present else "unset", old=change.new,
                  old_present=change.action == "set", new=copy.deepcopy(change.old) if change.old_present else None,
                  reason="desired", removed_from_git=False)


def remember_targets(result: ReconcileResult, actual: ActualState) -> None:
    """The server ids of the targets (those that exist), for the events' related resources."""
    result.targets = {(k.name, name): target.id for k in KINDS for name, target in k.actuals(actual).items()
                      if target.id}
