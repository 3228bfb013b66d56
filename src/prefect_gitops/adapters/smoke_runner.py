"""Runs the smoke tests the planner asked for, at most `concurrency` at once, each as a step of its
own (a task run inside a flow: steps.py)."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

from prefect.client.orchestration import PrefectClient

from prefect_gitops.adapters.prefect_api import bounded_gather
from prefect_gitops.adapters.process import RunLogger
from prefect_gitops.smoke import SmokeResult, SmokeTest
from prefect_gitops.steps import InlineSteps, Steps


def _not_passed(result: SmokeResult) -> str | None:
    return None if result.passed else f"{result.reason}: {result.message}"


class SmokeRunner:
    def __init__(self, client: PrefectClient, environment: str, logger: RunLogger, concurrency: int = 4,
                 steps: Steps | None = None, deployments: PrefectClient | None = None):
        """`client`: the control server (the shared smoke-test cap); `deployments`: the server the
        environment's deployments are on, where canaries run (the same one unless it has a GitOps Target)."""
        self.client, self.environment, self.logger, self.concurrency = client, environment, logger, concurrency
        self.deployments = deployments or client
        self.steps = steps or InlineSteps()

    async def _canary(self, test_id: str, deployment: str, parameters: dict[str, Any], timeout: int,
                      image: str | None, purpose: str = "canary") -> SmokeResult:
        from prefect_gitops.adapters.canary import run_canary

        # a canary on another server cannot be a subflow of this run: its parent task run would be
        # created there, under a flow run that server does not have
        return await run_canary(self.deployments, test_id, deployment, parameters, timeout, self.environment, image,
                                self._logger(), purpose=purpose, as_subflow=self.deployments is self.client)

    def _logger(self) -> RunLogger:
        """The current task run's logger inside a step, so a test's lines show under its own task run."""
        from prefect import get_run_logger
        from prefect.exceptions import MissingContextError

        try:
            return get_run_logger()
        except MissingContextError:
            return self.logger or logging.getLogger("prefect_gitops")

    async def run(self, test: SmokeTest) -> SmokeResult:
        from prefect_gitops.adapters.locks import smoke_test_slot

        async def in_slot() -> SmokeResult:
            async with smoke_test_slot():  # one cap shared by every environment and run
                return await self._run(test)

        return await self.steps.run(f"smoke test: {test.describe()}", in_slot, _not_passed)

    async def _run(self, test: SmokeTest) -> SmokeResult:
        logger = self._logger()
        if test.kind == "kubernetes":
            from prefect_gitops.adapters.kubernetes import run_kubernetes_test

            return await run_kubernetes_test(test, self.environment, logger)
        if test.kind == "process":
            from prefect_gitops.adapters.process import run_process_test

            return await run_process_test(test, logger)
        canary = test.policy.canary
        assert test.deployment is not None  # set for every canary (resolve() refuses a pool canary without one)
        return await self._canary(test.id, test.deployment, canary.parameters, test.policy.timeout_seconds, test.image)

    async def run_all(self, tests: list[SmokeTest]) -> dict[str, SmokeResult]:
        from prefect_gitops.adapters.locks import ensure_smoke_test_limit

        await ensure_smoke_test_limit(self.client)
        jobs: list[Callable[[], Awaitable[SmokeResult]]] = [functools.partial(self.run, t) for t in tests]
        outcomes = await bounded_gather(self.concurrency, jobs)
        results: dict[str, SmokeResult] = {}
        for test, outcome in zip(tests, outcomes):
            if isinstance(outcome, BaseException):
                outcome = SmokeResult(test.id, False, "error", f"{type(outcome).__name__}: {outcome}")
            results[test.id] = outcome
            self.logger.info("smoke test %s: %s %s", test.describe(), outcome.reason, outcome.message)
        return results

    async def post_apply(self, deployments: list[str], parameters: dict[str, Any], timeout: int
                         ) -> dict[str, SmokeResult]:
        from prefect_gitops.adapters.locks import ensure_smoke_test_limit, smoke_test_slot

        await ensure_smoke_test_limit(self.client)

        async def one(d: str) -> SmokeResult:
            async with smoke_test_slot():
                return await self._canary(f"post-apply:{d}", d, parameters, timeout, None, purpose="post-apply")

        jobs: list[Callable[[], Awaitable[SmokeResult]]] = [functools.partial(one, d) for d in deployments]
        outcomes = await bounded_gather(self.concurrency, jobs)
        return {d: (o if isinstance(o, SmokeResult) else SmokeResult(f"post-apply:{d}", False, "error", str(o)))
                for d, o in zip(deployments, outcomes)}
