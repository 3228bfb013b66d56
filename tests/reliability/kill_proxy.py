"""A recording proxy that holds one chosen write, for the kill trials (test_kill_trials.py).

Every write a reconcile makes to the environment's targets (deployment PATCHes, work pool PATCHes) and
to its record (the state and history block documents) is counted by kind and target, with the image
it carries. A trap `(kind, ordinal, when)` holds, with `when="request"`, the first write of `kind`
that arrives once `ordinal - 1` of them have landed, before it reaches the server; with
`when="response"`, the write that makes `ordinal` landed, after the server applied it and before the
run sees the answer. (Counted by landed writes, not attempts: SQLite answers 503 to parallel writes
now and then and the Prefect client sends them again.) From the moment the trapped write arrives every later watched write
is held before the server too, so what landed is exactly what was forwarded before it. The test
kills the process while the trap holds, then `release()` answers the held requests 503 without
forwarding them (nobody is listening any more).
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass

from aiohttp import web

from write_recorder import ApiProxy

DEPLOYMENT = re.compile(r"^/api/deployments/([0-9a-f-]{36})$")
WORK_POOL = re.compile(r"^/api/work_pools/([^/]+)$")
BLOCK_DOCUMENT = re.compile(r"^/api/block_documents/?([0-9a-f-]{36})?$")


@dataclass(frozen=True)
class Trap:
    kind: str  # "target", "state" or "history"
    ordinal: int  # the how-many-th landed write of that kind in the run (1-based)
    when: str  # "request": held before the server; "response": held after the server answered


@dataclass
class Write:
    run: str
    kind: str
    target: str
    image: object  # the image the write carries (None for the record's writes)
    outcome: str = "held"  # "landed" (the server answered 2xx), "refused" (it answered otherwise), "dropped"
    answer_seen: bool = False  # the run got the server's answer
    status: int = 0  # the server's answer (0: never forwarded)
    held: bool = False  # held by the trap (or after it)


class KillProxy(ApiProxy):
    def __init__(self, environment: str, deployments: dict[str, str], pools: set[str]):
        super().__init__()
        self.environment, self.deployments, self.pools = environment, deployments, pools
        self.writes: list[Write] = []
        self.arm("setup", None)

    def arm(self, run: str, trap: Trap | None) -> None:
        """Count the next writes as `run`'s; hold them as `trap` says (None: let everything through)."""
        self.run, self.trap = run, trap
        self.landed: dict[str, int] = {}  # writes the server answered 2xx, by kind
        self.closed = False  # the trap was reached: later writes wait at the proxy
        self.trapped = False  # the trapped write is held
        self.forwarding = 0  # writes at the server right now
        self.released: asyncio.Event | None = None

    # -- what the test reads (from its own thread; the proxy's loop only appends and counts) ------------

    def ready_to_kill(self) -> bool:
        return self.trapped and self.forwarding == 0

    def release(self) -> None:
        """After the kill: answer every held write 503 without forwarding it."""
        released = self.released
        if released is not None:
            self.loop.call_soon_threadsafe(released.set)

    def of_run(self, run: str, kind: str | None = "target", outcome: str | None = "landed") -> list[Write]:
        """`run`'s writes (of `kind`, with `outcome`; None: any), in the order they arrived."""
        return [w for w in self.writes if w.run == run and (kind is None or w.kind == kind)
                and (outcome is None or w.outcome == outcome)]

    # -- the proxy ----------------------------------------------------------------------------------------

    def classify(self, method: str, path: str, body: bytes) -> tuple[str, str, object] | None:
        if method == "PATCH" and (m := DEPLOYMENT.match(path)) and m.group(1) in self.deployments:
            variables = json.loads(body).get("job_variables") or {}
            return "target", self.deployments[m.group(1)], variables.get("image")
        if method == "PATCH" and (m := WORK_POOL.match(path)) and m.group(1) in self.pools:
            template = json.loads(body).get("base_job_template") or {}
            image = template.get("variables", {}).get("properties", {}).get("image", {}).get("default")
            return "target", f"pool:{m.group(1)}", image
        if method in ("PATCH", "POST") and BLOCK_DOCUMENT.match(path):
            data = json.loads(body).get("data") or {}
            if data.get("environment") == self.environment:
                if "state_packed" in data:
                    return "state", "state", None
                if "entry_packed" in data:  # a history entry (adapters/state_store.py)
                    return "history", "history", None
        return None

    async def _handle(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        seen = self.classify(request.method, request.path, body) if body else None
        if seen is None:
            status, payload, headers = await self._forward(request, body)
            return web.Response(status=status, body=payload, headers=headers)
        kind, target, image = seen
        write = Write(self.run, kind, target, image)
        self.writes.append(write)
        trap = self.trap
        aimed = trap is not None and trap.kind == kind and not self.closed
        if self.closed or (aimed and trap.when == "request" and self.landed.get(kind, 0) >= trap.ordinal - 1):
            if not self.closed:
                self._close()
            write.held = True
            await self.released.wait()
            write.outcome = "dropped"
            return web.Response(status=503, text="the proxy dropped this write after the kill")
        self.forwarding += 1
        try:
            status, payload, headers = await self._forward(request, body)
        finally:
            self.forwarding -= 1
        write.status = status
        write.outcome = "landed" if 200 <= status < 300 else "refused"
        if write.outcome == "landed":
            self.landed[kind] = self.landed.get(kind, 0) + 1
            if aimed and trap.when == "response" and not self.closed and self.landed[kind] == trap.ordinal:
                self._close()  # the server applied it; the run never sees the answer
                write.held = True
                await self.released.wait()
                return web.Response(status=503, text="the proxy dropped this answer after the kill")
        write.answer_seen = True
        return web.Response(status=status, body=payload, headers=headers)

    def _close(self) -> None:
        self.closed = self.trapped = True
        self.released = asyncio.Event()
