"""Gates that refuse a revision as a whole until someone consents: a rewritten history, an emptied
file, a mass release. Nothing from Git should take every managed value away, or roll the environment
onto a history it never saw, without a person saying so.

The decisions are pure (release_gate.py; ancestry is the source's answer); this module asks them and
records a refusal the way a refused file is recorded: attempted, never applied, with the condition's
reason, so `status`, the artifact, the exit code (5) and the commit status all say why.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.errors import ConfigProblem, RevisionRefused
from prefect_gitops.loader import LoadedEnvironment
from prefect_gitops.release_gate import release_of, release_refusal
from prefect_gitops.result import ReconcileResult
from prefect_gitops.state import Condition, EnvironmentState
from prefect_gitops.status import Reason, Status

if TYPE_CHECKING:
    from prefect_gitops.reconcile import ReconcileRequest


def history_refusal(request: ReconcileRequest, state: EnvironmentState, revision: str) -> RevisionRefused | None:
    """A revision that does not descend from the last applied one (force-push, or an older commit)."""
    applied = state.last_applied_revision
    if applied is None or revision == applied or request.allow_history_rewrite:
        return None  # after a rollback `applied` is the revision rolled back to: Git's head descends from it
    if state.last_applied_source is not None and state.last_applied_source != request.source.display:
        # another repository has no history in common with this one: moving an environment to it is
        # decided where the source is set (the block, the deployment), by people committers are not
        return None
    if request.source.descends_from(revision, applied):
        return None
    return RevisionRefused(
        Reason.HISTORY_REWRITTEN,
        f"revision {revision[:12]} of {request.ref!r} does not descend from {applied[:12]}, the last applied "
        f"revision of {request.environment} (the branch was force-pushed, or an older commit was asked for); "
        f"refused, nothing applied. To apply it anyway, run apply with --allow-history-rewrite "
        f"(flow parameter allow_history_rewrite); to go back to a recorded revision, use rollback")


def mass_release_refusal(request: ReconcileRequest, loaded: LoadedEnvironment,
                         state: EnvironmentState) -> RevisionRefused | None:
    spec = loaded.spec
    refusal = release_refusal(release_of(spec, state.inventory), spec.rollout.release_limit, spec.allow_empty,
                              request.allow_mass_release)
    if refusal is None:
        return None
    key = "allow_empty" if refusal.reason is Reason.EMPTY_REVISION else "rollout.release_limit"
    problem = ConfigProblem(refusal.message, file=loaded.file, line=loaded.line_of(tuple(key.split("."))) or 1,
                            key=key)
    return RevisionRefused(refusal.reason, f"{loaded.file}: {refusal.message}", [problem])


async def record_refusal(api: PrefectAPI, state: EnvironmentState, handle: Any, request: ReconcileRequest,
                         revision: str, refusal: RevisionRefused, at: dt.datetime) -> None:
    """Recorded as attempted (never as applied), with the gate's reason; no target is touched."""
    state.last_attempted_revision, state.last_attempted_at = revision, at
    state.source, state.ref = request.source.display, request.ref
    state.condition = Condition(ready=False, reason=Reason(refusal.reason), message=refusal.message[:2000])
    await api.write_state(state, handle)


def refused(result: ReconcileResult, refusal: RevisionRefused) -> None:
    """The run's report: status refused (exit 5), the message, the located problem if any."""
    result.status, result.error_kind, result.message = Status.REFUSED, "permanent", refusal.message
    if refusal.problems:
        result.problems.extend(refusal.problems)
    else:
        result.errors.append(refusal.message)


def superseded(request: ReconcileRequest, state: EnvironmentState, revision: str,
               applied_at_fetch: str | None) -> str | None:
    """Why this run has nothing to do, when another run applied a later revision of the followed ref
    while this one waited for the lock (it fetched `revision` before; the fresh record names a
    descendant of it). Not a rewritten history: the newer revision already holds this one.
    Only asked when the record changed during the wait, so a normal apply costs no Git question."""
    applied = state.last_applied_revision
    if request.revision is not None or applied in (None, revision, applied_at_fetch):
        return None  # a pinned revision is the caller's choice: the history gate decides on it
    assert applied is not None
    if not request.source.descends_from(applied, revision):
        return None
    return (f"{revision[:12]} was superseded while this run waited for the lock: another run applied "
            f"{applied[:12]}, a later revision of {request.ref!r}; nothing to do")
