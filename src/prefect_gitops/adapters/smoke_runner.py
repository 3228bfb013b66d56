"""Runs the smoke tests the planner asked for, at most `concurrency` at once."""

from __future__ import annotations

from prefect_gitops.adapters.prefect_api import bounded_gather
from prefect_gitops.smoke import SmokeResult, SmokeTest


class SmokeRunner:
    def __init__(self, client, environment: str, logger, concurrency: int = 4):
        self.client, self.environment, self.logger, self.concurrency = client, environment, logger, concurrency

    async def run(self, test: SmokeTest) -> SmokeResult:
        from prefect_gitops.adapters.locks import smoke_test_slot

        async with smoke_test_slot():  # one cap shared by every environment and run
            return await self._run(test)

    async def _run(self, test: SmokeTest) -> SmokeResult:
        if test.kind == "kubernetes":
            from prefect_gitops.adapters.kubernetes import run_kubernetes_test

            return await run_kubernetes_test(test, self.environment, self.logger)
        if test.kind == "process":
            from prefect_gitops.adapters.process import run_process_test

            return await run_process_test(test, self.logger)
        from prefect_gitops.adapters.canary import run_canary

        canary = test.policy.canary
        return await run_canary(self.client, test.id, test.deployment, canary.parameters, test.policy.timeout_seconds,
                                self.environment, test.image, self.logger)

    async def run_all(self, tests: list[SmokeTest]) -> dict[str, SmokeResult]:
        from prefect_gitops.adapters.locks import ensure_smoke_test_limit

        await ensure_smoke_test_limit(self.client)
        outcomes = await bounded_gather(self.concurrency, [lambda t=t: self.run(t) for t in tests])
        results = {}
        for test, outcome in zip(tests, outcomes):
            if isinstance(outcome, BaseException):
                outcome = SmokeResult(test.id, False, "error", f"{type(outcome).__name__}: {outcome}")
            results[test.id] = outcome
            self.logger.info("smoke test %s: %s %s", test.describe(), outcome.reason, outcome.message)
        return results

    async def post_apply(self, deployments: list[str], parameters: dict, timeout: int) -> dict[str, SmokeResult]:
        from prefect_gitops.adapters.canary import run_canary
        from prefect_gitops.adapters.locks import ensure_smoke_test_limit, smoke_test_slot

        await ensure_smoke_test_limit(self.client)

        async def one(d):
            async with smoke_test_slot():
                return await run_canary(self.client, f"post-apply:{d}", d, parameters, timeout, self.environment,
                                        None, self.logger, purpose="post-apply")

        jobs = [lambda d=d: one(d) for d in deployments]
        outcomes = await bounded_gather(self.concurrency, jobs)
        return {d: (o if isinstance(o, SmokeResult) else SmokeResult(f"post-apply:{d}", False, "error", str(o)))
                for d, o in zip(deployments, outcomes)}
