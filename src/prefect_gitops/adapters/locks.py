"""Prefect global concurrency limits as rollout gates.

One writer per environment (limit 1) and one shared cap on smoke-test Jobs and
canary runs. Slots are leases that Prefect renews while held and frees when
the holder dies, so a killed reconcile never leaves an environment locked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from typing import AsyncIterator
from uuid import UUID

import httpx

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
        raise _busy(environment, timeout_seconds) from None


def _busy(environment: str, timeout_seconds: float) -> RolloutBusy:
    return RolloutBusy(f"another rollout of {environment} is in progress (waited {timeout_seconds:.0f}s); "
                       "nothing was written")


@contextlib.asynccontextmanager
async def leased_environment_lock(client: PrefectClient, environment: str,
                                  timeout_seconds: float) -> AsyncIterator[None]:
    """The environment lock on the server `client` talks to (an environment on a server of its own).

    Prefect's `concurrency()` takes its slots through the client of the run's settings, that is the
    control server, so this takes the same lease through `client`: acquire (the server answers 423
    with Retry-After while the slot is held), renew in the background, release on exit. A holder that
    dies loses the slot when its lease runs out, as with `environment_lock`.
    """
    name = environment_limit(environment)
    await ensure_limit(client, name, 1, enforce=True)
    lease_id = await _acquire(client, name, environment, timeout_seconds)
    renewal = asyncio.create_task(_keep_renewing(client, lease_id))
    try:
        yield
    finally:
        renewal.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await renewal
        async with api_errors(f"releasing the lock of {environment}"):
            await retrying(lambda: client.release_concurrency_slots_with_lease(lease_id))


async def _acquire(client: PrefectClient, name: str, environment: str, timeout_seconds: float) -> UUID:
    deadline = time.monotonic() + max(timeout_seconds, 0.1)
    async with api_errors(f"taking the lock of {environment}"):
        while True:
            try:
                response = await retrying(lambda: client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS))
                return UUID(response.json()["lease_id"])
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code != 423:  # 423 Locked: another holder; the server says when to ask again
                    raise
                wait = float(exc.response.headers.get("Retry-After", 1))
            if time.monotonic() + wait > deadline:
                raise _busy(environment, timeout_seconds)
            await asyncio.sleep(wait)


async def _keep_renewing(client: PrefectClient, lease_id: UUID) -> None:
    """Renew four times a lease: a renewal or two may fail (a server restarting) before it runs out."""
    while True:
        await asyncio.sleep(LEASE_SECONDS / 4)
        try:
            await client.renew_concurrency_lease(lease_id=lease_id, lease_duration=LEASE_SECONDS)
        except (httpx.HTTPError, OSError) as exc:
            logging.getLogger("prefect_gitops").warning("could not renew the environment lock's lease: %s",
                                                        type(exc).__name__)


async def ensure_smoke_test_limit(client: PrefectClient) -> None:
    configured = os.environ.get(SMOKE_TEST_LIMIT_ENV)
    await ensure_limit(client, SMOKE_TEST_LIMIT, int(configured) if configured else DEFAULT_SMOKE_TEST_SLOTS,
                       enforce=configured is not None)


@contextlib.asynccontextmanager
async def smoke_test_slot() -> AsyncIterator[None]:
    async with concurrency(SMOKE_TEST_LIMIT, occupy=1, strict=True, lease_duration=LEASE_SECONDS):
        yield
