"""The seam through which a reconcile's slow or failable steps run.

A step that takes time or can fail on its own (a smoke test, a wave's writes, the post-apply check,
the record) is run through `Steps.run`. Inside a flow run, adapters/task_runs.py makes each one a
Prefect task run named after what it does, with its own logs and state; elsewhere (`plan`, tests that
call the reconcile directly) `InlineSteps` just awaits it.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Awaitable, Callable, Protocol, TypeVar

T = TypeVar("T")
# `lock(environment, timeout)`: held while one run writes an environment (raises RolloutBusy on timeout)
Lock = Callable[[str, float], AbstractAsyncContextManager[None]]


class Steps(Protocol):
    """`failed_if(value)` gives the reason a step failed although it returned normally (a smoke test
    whose image did not pass), so that its task run ends Failed; the value is returned either way."""

    async def run(self, name: str, step: Callable[[], Awaitable[T]],
                  failed_if: Callable[[T], str | None] | None = None) -> T: ...


class InlineSteps:
    async def run(self, name: str, step: Callable[[], Awaitable[T]],
                  failed_if: Callable[[T], str | None] | None = None) -> T:
        return await step()
