"""A recording reverse proxy for racing creates: one port per racer, every read and create of one target
recorded in the order the proxy saw them, and a barrier that lets the racers' reads of the target out
only once every racer has sent one, and their creates only once every read has its answer (so both find
it missing, as two runs that start together can).

It records, it does not answer: every request goes to the real server and every answer comes back
unchanged (websockets too, for the runs' events and logs)."""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from write_recorder import ApiProxy, relay_websocket


@dataclass(frozen=True)
class Target:
    """What is raced for: which requests read it, which create it, and whether a read found it missing."""

    name: str
    is_read: Callable[[str, str], bool]  # (method, path)
    is_create: Callable[[str, str, bytes], bool]  # (method, path, request body)
    found_missing: Callable[[int, bytes], bool]  # (status, answer body) of a read


Route = Callable[[str, str, str], str]  # (racer, method, path) -> the API URL it goes to


@dataclass
class Exchange:
    racer: str
    kind: str  # "read" or "create"
    method: str
    path: str
    arrived: int  # ticks of the proxy's clock: when the request reached the proxy,
    forwarded: int = -1  # when it went out to the server,
    answered: int = -1  # and when the server's answer came back
    status: int = 0
    answer: bytes = b""

    def __str__(self) -> str:
        return (f"{self.racer}: {self.kind} {self.method} {self.path} arrived@{self.arrived} "
                f"forwarded@{self.forwarded} answered@{self.answered} -> {self.status}")


class RaceRecorder(ApiProxy):
    def __init__(self, racers: list[str], target: Target, upstream_api: str | Route, barrier_seconds: float = 60):
        """`upstream_api`: the server's API URL, or a route: which API (of a production-shaped server's
        replicas) a racer's request goes to, as a load balancer would choose."""
        self.racers, self.target = list(racers), target
        self.route: Route = upstream_api if callable(upstream_api) else lambda racer, method, path: upstream_api
        self.barrier_seconds = barrier_seconds
        self.exchanges: list[Exchange] = []
        self._clock = itertools.count()
        self._read_by: set[str] = set()
        self._answered: set[str] = set()  # racers whose first read of the target has its answer
        self.barrier_timed_out = False

    def url(self, racer: str) -> str:  # type: ignore[override]
        return f"http://127.0.0.1:{self.ports[racer]}/api"

    async def _start(self) -> None:  # type: ignore[override]
        self.changed = asyncio.Condition()
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300))
        self.runners, self.ports = [], {}
        for racer in self.racers:
            app = web.Application(client_max_size=1 << 30)
            app.router.add_route("*", "/{tail:.*}", functools.partial(self._handle_for, racer))
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            self.runners.append(runner)
            self.ports[racer] = runner.addresses[0][1]

    async def _stop(self) -> None:
        for runner in self.runners:
            await runner.cleanup()
        await self.session.close()

    async def _handle_for(self, racer: str, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await relay_websocket(self.session, self._upstream(racer, request.method, request.path), request)
        body = await request.read()
        path = request.path
        kind = ("read" if self.target.is_read(request.method, path)
                else "create" if self.target.is_create(request.method, path, body) else None)
        exchange = None
        if kind is not None:
            exchange = Exchange(racer, kind, request.method, path, arrived=next(self._clock))
            self.exchanges.append(exchange)
        if kind == "read":
            async with self.changed:
                self._read_by.add(racer)
                self.changed.notify_all()
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: self._read_by >= set(self.racers)),
                                           self.barrier_seconds)
                except asyncio.TimeoutError:
                    self.barrier_timed_out = True
        if kind == "create":
            # and no create goes out before every racer's read has its answer: with a replica per racer,
            # a read sent first can still be answered after the other replica committed a create
            async with self.changed:
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: self._answered >= set(self.racers)),
                                           self.barrier_seconds)
                except asyncio.TimeoutError:
                    self.barrier_timed_out = True
        if exchange is not None:
            exchange.forwarded = next(self._clock)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        upstream = self._upstream(racer, request.method, path)
        async with self.session.request(request.method, upstream + request.path_qs, headers=headers,
                                        data=body, allow_redirects=False) as answer:
            payload = await answer.read()
            answer_headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in self.HOP_BY_HOP]
            status = answer.status
        if exchange is not None:
            exchange.answered, exchange.status = next(self._clock), status
            # the answer is kept as the client sees it (gzip is left to the client: decode it here)
            exchange.answer = _decoded(payload, dict(answer_headers))
        if kind == "read":
            async with self.changed:
                self._answered.add(racer)
                self.changed.notify_all()
        return web.Response(status=status, body=payload, headers=CIMultiDict(answer_headers))

    def _upstream(self, racer: str, method: str, path: str) -> str:
        return self.route(racer, method, path).rstrip("/").rsplit("/api", 1)[0]

    # -- what the record shows ----------------------------------------------------------------

    def of(self, racer: str, kind: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.racer == racer and e.kind == kind]

    def creates(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.kind == "create"]

    def final_create_status(self, racer: str) -> int | None:
        """The status of the racer's last create (a 503 the client retried is not the outcome)."""
        done = [e for e in self.of(racer, "create") if e.status not in (429, 502, 503)]
        return done[-1].status if done else None

    def describe(self) -> str:
        return f"{self.target.name}; barrier timed out: {self.barrier_timed_out}\n" + "\n".join(map(str, self.exchanges))

    def assert_every_read_missing_before_any_create(self) -> None:
        """Every racer's first read of the target went out to the server before any racer's create of
        it did, and the server answered it that the target was missing."""
        creates = self.creates()
        assert creates, f"nobody created {self.target.name}\n{self.describe()}"
        first_create = min(e.forwarded for e in creates)
        for racer in self.racers:
            reads = self.of(racer, "read")
            assert reads, f"{racer} never read {self.target.name}\n{self.describe()}"
            first = reads[0]
            assert self.target.found_missing(first.status, first.answer), (
                f"{racer}'s first read did not find {self.target.name} missing\n{self.describe()}")
            assert first.forwarded < first_create, (
                f"{racer}'s read of {self.target.name} went out after a create did: no race\n{self.describe()}")


def _decoded(payload: bytes, headers: dict[str, str]) -> bytes:
    encoding = next((v for k, v in headers.items() if k.lower() == "content-encoding"), "")
    if encoding == "gzip":
        import gzip

        return gzip.decompress(payload)
    return payload


def json_body(body: bytes) -> dict:
    try:
        value = json.loads(body or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def wait_all(processes: dict, timeout: float = 300) -> dict:
    """Wait for every process (a condition, with one overall cap); (returncode, stdout, stderr) each."""
    deadline = time.monotonic() + timeout
    out = {}
    for name, proc in processes.items():
        stdout, stderr = proc.communicate(timeout=max(deadline - time.monotonic(), 1))
        out[name] = (proc.returncode, stdout, stderr)
    return out
