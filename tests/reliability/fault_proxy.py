"""A fault-injecting reverse proxy (HTTP and websockets) between a reconcile and a Prefect server.

It forwards everything, and injects faults into the requests a reconcile makes of its own (reads of
flows, deployments, work pools; writes of them; the state blocks; the environment lock's limit): never
into Prefect's orchestration of the flow run itself (flow and task runs, logs, events, taking a
concurrency slot), which is Prefect's business, not the reconcile's. Faults, by kind:

* "500", "503": that status, the server not asked;
* "429", "503-retry-after": that status with `Retry-After: 1`, the server not asked;
* "reset": the request is forwarded, then the connection is closed without an answer (the server did
  the work; the client does not know);
* "latency": 5 s, then forwarded;
* any other status given as text (e.g. "422"): that status, the server not asked.

`at` maps the index of a faultable request (0 = the first) to a fault; `rules` are (predicate, fault)
applied to every matching request (a fault that outlasts every retry). Every faultable request is
logged; a request seen again after a fault with the same method, path and body counts as a retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from dataclasses import dataclass
from typing import Callable

from aiohttp import web

from write_recorder import ApiProxy

# the reconcile's own requests, the environment lock's limit included; orchestration (flow_runs,
# task_runs, logs, events, taking and renewing a concurrency slot) is not faulted
FAULTABLE = re.compile(r"^/api/(flows/filter|deployments/|work_pools/|block_documents|block_types/|block_schemas/"
                       r"|v2/concurrency_limits/(?!increment|decrement|leases))")
LATENCY_SECONDS = 5.0
Rule = tuple[Callable[[str, str], bool], str]


@dataclass
class Seen:
    index: int
    method: str
    path: str
    body: str  # a digest: which requests are the same request again
    fault: str | None
    status: int  # 0: no answer (reset)


class FaultProxy(ApiProxy):
    def __init__(self, upstream_api_url: str, at: dict[int, str] | None = None, rules: list[Rule] | None = None):
        super().__init__(upstream_api_url)
        self.at = dict(at or {})
        self.rules = list(rules or [])
        self.seen: list[Seen] = []

    # -- what happened --------------------------------------------------------------------------

    def faults(self) -> dict[str, int]:
        """Faults injected, by kind as the figures count them ("503-retry-after" is a "503")."""
        counts: dict[str, int] = {}
        for s in self.seen:
            if s.fault:
                kind = s.fault.split("-")[0]
                counts[kind] = counts.get(kind, 0) + 1
        return counts

    def retried(self) -> int:
        """Faulted requests that were sent again (same method, path and body, later); a late answer
        (latency) is an answer, not a fault to retry."""
        return sum(1 for i, s in enumerate(self.seen) if s.fault and s.fault != "latency" and any(
            (t.method, t.path, t.body) == (s.method, s.path, s.body) for t in self.seen[i + 1:]))

    def requests(self, method: str, path: str) -> list[Seen]:
        return [s for s in self.seen if s.method == method and s.path == path]

    # -- the proxy ------------------------------------------------------------------------------

    def _fault_for(self, method: str, path: str) -> tuple[int | None, str | None]:
        if not FAULTABLE.match(path):
            return None, None
        index = len(self.seen)
        for matches, fault in self.rules:
            if matches(method, path):
                return index, fault
        return index, self.at.get(index)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        index, fault = self._fault_for(request.method, request.path)
        seen = None
        if index is not None:
            seen = Seen(index, request.method, request.path, hashlib.sha256(body).hexdigest()[:16], fault, 0)
            self.seen.append(seen)
        if fault in ("429", "503-retry-after"):
            status = int(fault[:3])
            seen.status = status  # type: ignore[union-attr]
            return web.Response(status=status, headers={"Retry-After": "1"}, content_type="application/json",
                                text='{"detail": "injected: come back in a second"}')
        if fault is not None and fault.isdigit():
            seen.status = int(fault)  # type: ignore[union-attr]
            return web.Response(status=int(fault), content_type="application/json",
                                text=f'{{"detail": "injected fault {fault}"}}')
        if fault == "latency":
            await asyncio.sleep(LATENCY_SECONDS)
        status, payload, headers = await self._forward(request, body)
        if seen is not None:
            seen.status = status
        if fault == "reset":
            seen.status = 0  # type: ignore[union-attr]
            assert request.transport is not None
            request.transport.abort()  # the server did the work; the answer never reaches the client
            raise asyncio.CancelledError
        return web.Response(status=status, body=payload, headers=headers)
