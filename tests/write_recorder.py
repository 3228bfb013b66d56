"""The tests' reverse proxy in front of a Prefect server (ApiProxy: the thread, loop, port, session and
forwarding every proxy of the tests builds on), and the recording one: which deployment writes arrived,
when, and how many the server was handling at once (the wave and write-concurrency tests)."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from typing import Self

import aiohttp
from aiohttp import web
from multidict import CIMultiDict


class ApiProxy:
    """A real reverse proxy (HTTP and websockets) in front of a Prefect server, on its own thread and loop:
    `with ApiProxy() as proxy:` then point a client at `proxy.url`. It forwards everything unchanged;
    subclasses decide in `_handle` what to record, hold or answer themselves."""

    HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "upgrade",
                  "proxy-connection", "te", "trailer"}

    def __init__(self, upstream_api_url: str | None = None):
        self.upstream = (upstream_api_url or os.environ["PREFECT_API_URL"]).rsplit("/api", 1)[0]

    def __enter__(self) -> Self:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    async def _start(self) -> int:
        self.session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        return self.runner.addresses[0][1]

    async def _stop(self) -> None:
        await self.runner.cleanup()
        await self.session.close()

    async def _handle(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        status, payload, headers = await self._forward(request, await request.read())
        return web.Response(status=status, body=payload, headers=headers)

    async def _forward(self, request, body: bytes) -> tuple[int, bytes, CIMultiDict[str]]:
        """The request as the server answers it: its status, body and (end-to-end) headers."""
        headers = {k: v for k, v in request.headers.items() if k.lower() not in self.HOP_BY_HOP}
        async with self.session.request(request.method, self.upstream + request.path_qs, headers=headers,
                                        data=body, allow_redirects=False) as answer:
            payload = await answer.read()
            kept = CIMultiDict((k, v) for k, v in answer.headers.items() if k.lower() not in self.HOP_BY_HOP)
            return answer.status, payload, kept

    async def _websocket(self, request):
        return await relay_websocket(self.session, self.upstream, request)


class WriteRecorder(ApiProxy):
    """An ApiProxy for one reconcile to talk through. It records when each PATCH of a watched deployment
    arrives and when the server's answer to it comes back, and holds each such write until `hold_until`
    watched writes are in flight at once or `hold_seconds` have passed: writes that may overlap are then
    certain to be seen overlapping."""

    DEPLOYMENT_PATCH = re.compile(r"^/api/deployments/([0-9a-f-]{36})$")

    def __init__(self, watch: dict[str, str], hold_until: int, hold_seconds: float):
        super().__init__()
        self.watch = watch  # deployment id -> name
        self.hold_until, self.hold_seconds = hold_until, hold_seconds
        self.writes: list[tuple[str, float, float, int]] = []  # (name, start, end, status)
        self.in_flight = 0

    async def _start(self) -> int:
        self.changed = asyncio.Condition()
        return await super()._start()

    async def _handle(self, request):
        if request.headers.get("upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        body = await request.read()
        match = self.DEPLOYMENT_PATCH.match(request.path) if request.method == "PATCH" else None
        name = self.watch.get(match.group(1)) if match else None
        start, status = time.time(), 0
        if name is not None:
            async with self.changed:
                self.in_flight += 1
                self.changed.notify_all()
                try:
                    await asyncio.wait_for(self.changed.wait_for(lambda: self.in_flight >= self.hold_until),
                                           self.hold_seconds)
                except asyncio.TimeoutError:
                    pass
        try:
            status, payload, headers = await self._forward(request, body)
        finally:
            if name is not None:
                async with self.changed:
                    self.in_flight -= 1
                    self.writes.append((name, start, time.time(), status))
        return web.Response(status=status, body=payload, headers=headers)

    def most_at_once(self, names: set[str]) -> int:
        """The largest number of writes of `names` the server was handling at the same moment."""
        edges = sorted([(s, 1) for n, s, _, _ in self.writes if n in names]
                       + [(e, -1) for n, _, e, _ in self.writes if n in names], key=lambda x: (x[0], x[1]))
        most = now = 0
        for _, step in edges:
            now += step
            most = max(most, now)
        return most


async def relay_websocket(session, upstream: str, request):
    """Pass a websocket (Prefect's events and logs) through to `upstream` unchanged, both ways."""
    protocols = [p.strip() for p in request.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
    inbound = web.WebSocketResponse(protocols=protocols)
    await inbound.prepare(request)
    target = "ws" + upstream[len("http"):] + request.path_qs
    async with session.ws_connect(target, protocols=protocols) as outbound:
        async def pump(source, sink):
            async for message in source:
                if message.type == aiohttp.WSMsgType.TEXT:
                    await sink.send_str(message.data)
                elif message.type == aiohttp.WSMsgType.BINARY:
                    await sink.send_bytes(message.data)
                else:
                    break
            await sink.close()

        tasks = [asyncio.ensure_future(pump(inbound, outbound)), asyncio.ensure_future(pump(outbound, inbound))]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
    await inbound.close()
    return inbound
