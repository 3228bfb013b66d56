"""The record's independent writes run at once, and a failure keeps its type (retries depend on it)."""

from __future__ import annotations

import asyncio

import pytest

from prefect_gitops.adapters.state_store import _together
from prefect_gitops.errors import TransientError


def test_steps_run_at_once_and_return_in_order():
    started = []

    async def step(name: str, seconds: float) -> str:
        started.append(name)
        await asyncio.sleep(seconds)
        return name

    assert asyncio.run(_together(step("a", 0.05), step("b", 0))) == ["a", "b"]
    assert started == ["a", "b"]


def test_a_failure_is_raised_as_itself_and_the_other_step_is_cancelled():
    cancelled = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def fails() -> None:
        raise TransientError("the server answered 503")

    with pytest.raises(TransientError, match="503"):
        asyncio.run(_together(slow(), fails()))
    assert cancelled == [True]
