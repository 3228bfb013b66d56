"""A write-counting proxy: the tests' Prefect server behind the tests' reverse proxy (ApiProxy), recording every
request that could change a managed target: a work pool, a deployment or a work queue (a flow run's
own bookkeeping, such as registering its flow, is not one)."""

from __future__ import annotations

import re

from write_recorder import ApiProxy


class TargetWriteCounter(ApiProxy):
    TARGETS = re.compile(r"^/api/(work_pools|deployments|work_queues)(/|$)")
    READS = re.compile(r"/(filter|count|paginate|get_scheduled_flow_runs)$")  # POSTs that only read

    def __init__(self) -> None:
        super().__init__()
        self.target_writes: list[str] = []  # "METHOD /path", in arrival order

    async def _handle(self, request):
        if (request.method not in ("GET", "HEAD", "OPTIONS") and self.TARGETS.match(request.path)
                and not self.READS.search(request.path)):
            self.target_writes.append(f"{request.method} {request.path}")
        return await super()._handle(request)
