"""Retrying the server errors Prefect's client gives up on at once.

Prefect's client retries 408, 429, 502 and 503 (honouring Retry-After) and lost connections itself,
up to PREFECT_CLIENT_MAX_RETRIES times; a 500 or a 504 it returns on the first answer. The README
promises that 5xx faults are transient and retried, so those two are retried here, a few times with
exponential backoff. Only calls that are safe to repeat are wrapped: reads, whole-body PATCHes, and
creates that find the object already there (a lost answer to a create that did happen).
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, TypeVar

import httpx

NOT_RETRIED_BY_THE_CLIENT = frozenset({500, 504})
ATTEMPTS = 4
BACKOFF_SECONDS = 0.5  # 0.5, 1, 2: a server restarting its database connection has time
T = TypeVar("T")


async def retrying(call: Callable[[], Awaitable[T]]) -> T:
    """`call()`, again after a 500 or 504 (at most ATTEMPTS times in all); other errors pass through."""
    for attempt in range(1, ATTEMPTS):
        try:
            return await call()
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in NOT_RETRIED_BY_THE_CLIENT:
                raise
        await asyncio.sleep(BACKOFF_SECONDS * 2 ** (attempt - 1))
    return await call()
