"""The verify step of a reconcile: the exact revision to apply must be signed by a signer the source
block trusts (Flux's GitRepository `spec.verify`), checked after fetch and before build, so an untrusted
revision is never even parsed. Pinned (`--revision`, `trigger`) revisions are checked like resolved ones.

A manual rollback does not come here: it re-applies values from the record, not from Git.
"""

from __future__ import annotations

import datetime as dt
import logging

from prefect_gitops.adapters.git import Source
from prefect_gitops.adapters.prefect_api import PrefectAPI
from prefect_gitops.errors import RolloutBusy, SignatureRefused
from prefect_gitops.signatures import SignaturePolicy
from prefect_gitops.state import Condition
from prefect_gitops.status import Reason
from prefect_gitops.steps import Lock

logger = logging.getLogger(__name__)

# recording the refusal waits this long for a rollout in progress, then leaves the record to it
RECORD_LOCK_TIMEOUT = 30.0


async def verify_revision(source: Source, revision: str, policy: SignaturePolicy | None, *, environment: str,
                          api: PrefectAPI, lock: Lock | None, record: bool, ref: str, at: dt.datetime) -> None:
    """Raise SignatureRefused (recorded as the environment's condition when `record`) unless
    `revision` is signed by a signer `policy` trusts. No policy, or mode off: nothing to check."""
    if policy is None or not policy.enabled:
        return
    verdict = source.verify_signature(revision, policy)
    if verdict.trusted:
        logger.info("revision %s: %s", revision[:12], verdict.why())
        return
    refused = SignatureRefused(revision, verdict.refusal())
    if record and lock is not None:
        await _record_refusal(api, lock, environment, source.display, ref, refused, at)
    raise refused


async def _record_refusal(api: PrefectAPI, lock: Lock, environment: str, source: str, ref: str,
                          refused: SignatureRefused, at: dt.datetime) -> None:
    """Under the environment's lock (the state is written whole: never beside a rollout's own
    writes), the refused revision becomes the last attempted one and the condition says why."""
    try:
        async with lock(environment, RECORD_LOCK_TIMEOUT):
            state, handle = await api.read_state(environment, history=False)
            state.last_attempted_revision, state.last_attempted_at = refused.revision, at
            state.source, state.ref = source, ref
            state.condition = Condition(ready=False, reason=Reason.SIGNATURE_INVALID, message=str(refused)[:2000])
            await api.write_state(state, handle)
    except RolloutBusy:
        logger.warning("another rollout of %s holds its lock: the refusal is reported, not recorded", environment)
