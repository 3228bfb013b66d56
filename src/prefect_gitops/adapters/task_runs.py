"""A reconcile's steps as Prefect task runs, so the UI shows which smoke test, wave or check took the
time or failed, each with its own logs and state (steps.py is the seam)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar, cast

from prefect import State, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Failed

T = TypeVar("T")


class TaskRunSteps:
    async def run(self, name: str, step: Callable[[], Awaitable[T]],
                  failed_if: Callable[[T], str | None] | None = None) -> T:
        returned: dict[str, T] = {}

        async def body() -> Any:
            returned["value"] = value = await step()
            why = failed_if(value) if failed_if else None
            # the value goes back through `returned`, never through the server: it holds live objects
            return Failed(message=why[:5000]) if why else None

        # no cache, no persisted result: a step is an action, and running it again must act again
        # cast: Prefect's overloads type an async task called with return_state=True as returning the
        # State, but the call returns a coroutine that resolves to it (hence the await)
        state = await cast("Awaitable[State[Any]]", task(name=name, task_run_name=name, cache_policy=NO_CACHE,
                                                         persist_result=False)(body)(return_state=True))
        if "value" not in returned:
            await state.result()  # the step raised: raise it here as it was
        return returned["value"]
