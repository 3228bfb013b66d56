"""Prefect global concurrency limits as rollout gates.

One writer per environment (limit 1) and one shared cap on smoke-test Jobs and
canary runs. Slots are leases that Prefect renews while held and frees when
the holder dies, so a killed reconcile never leaves an environment locked.
"""

from __future__ import annotations

import contextlib
import os
from typing import AsyncIterator

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
from prefect.concurrency.asyncio import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from prefect_gitops.adapters.api_retry import retrying
from prefect_gitops.adapters.prefect_api import api_errors
from prefect_gitops.errors import RolloutBusy

SMOKE_TEST_LIMIT = "prefect-gitops-smoke-tests"
SMOKE_TEST_LIMIT_ENV = "PREFECT_GITOPS_SMOKE_TEST_LIMIT"  # when set, the shared cap is set to it
DEFAULT_SMOKE_TEST_SLOTS = 4
# Prefect renews a held lease in the background; a holder that dies loses its slot once the lease
# runs out and the server's repossessor runs (every 15 s by default). 60 s is the server's minimum.
LEASE_SECONDS = 60


def environment_limit(environment: str) -> str:
    return f"prefect-gitops-env-{environment}"


async def ensure_limit(client: PrefectClient, name: str, limit: int, enforce: bool) -> None:
    """Create the limit when missing; set its size when `enforce` (else users may resize it in the UI).
    Safe to repeat as a whole, so a 500 or 504 anywhere in it repeats it (api_retry)."""
    async with api_errors(f"reading concurrency limit {name!r}"):
        await retrying(lambda: _ensure_limit_once(client, name, limit, enforce))


async def _ensure_limit_once(client: PrefectClient, name: str, limit: int, enforce: bool) -> None:
    try:
        existing = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        try:
            await client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            return
        except ObjectAlreadyExists:  # another reconcile created it just now (or our lost create did)
            existing = await client.read_global_concurrency_limit_by_name(name)
    if (enforce and existing.limit != limit) or not existing.active:
        await client.update_global_concurrency_limit(
            name, GlobalConcurrencyLimitUpdate(limit=limit if enforce else existing.limit, active=True))


@contextlib.asynccontextmanager
async def environment_lock(client: PrefectClient, environment: str, timeout_seconds: float) -> AsyncIterator[None]:
    name = environment_limit(environment)
    await ensure_limit(client, name, 1, enforce=True)
    try:
        async with concurrency(name, occupy=1, timeout_seconds=max(timeout_seconds, 0.1), strict=True,
                               lease_duration=LEASE_SECONDS):
            yield
    except TimeoutError:
        raise RolloutBusy(f"another rollout of {environment} is in progress (waited {timeout_seconds:.0f}s); "
                          "nothing was written") from None


async def ensure_smoke_test_limit(client: PrefectClient) -> None:
    configured = os.environ.get(SMOKE_TEST_LIMIT_ENV)
    await ensure_limit(client, SMOKE_TEST_LIMIT, int(configured) if configured else DEFAULT_SMOKE_TEST_SLOTS,
                       enforce=configured is not None)


@contextlib.asynccontextmanager
async def smoke_test_slot() -> AsyncIterator[None]:
    async with concurrency(SMOKE_TEST_LIMIT, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
