"""A counting HTTP/1.1 reverse proxy for the benchmark.

Sits on 127.0.0.1 between the measured processes (the CLI, the floor script,
`prefect deploy`) and the Prefect server, forwards bytes unchanged and counts
every request (by method and path template) and every response status. It
parses only message framing (Content-Length / chunked); a websocket upgrade
(the events stream) counts as one request and is then piped raw.

Runs in a thread of the orchestrator (`CountingProxy(...).start()`), so the
counters are plain memory: `snapshot()` / `reset()`.
"""

from __future__ import annotations

import asyncio
import collections
import re
import threading

_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_LIMIT = 1 << 20


def _template(target: bytes) -> str:
    path = target.split(b"?", 1)[0]
    path = _UUID.sub(b"{id}", path)
    return path.decode("latin-1")


def _headers(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            fields[k.strip().lower()] = v.strip()
    return lines[0], fields


async def _copy_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, fields: dict[bytes, bytes]) -> bool:
    """Forward one message body. False when the body runs to the end of the connection."""
    if b"chunked" in fields.get(b"transfer-encoding", b"").lower():
        while True:
            line = await reader.readuntil(b"\r\n")
            writer.write(line)
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while True:  # trailers, then the blank line
                    trailer = await reader.readuntil(b"\r\n")
                    writer.write(trailer)
                    if trailer == b"\r\n":
                        return True
            writer.write(await reader.readexactly(size + 2))
    length = fields.get(b"content-length")
    if length is not None:
        remaining = int(length)
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 16))
            if not chunk:
                raise asyncio.IncompleteReadError(b"", remaining)
            writer.write(chunk)
            remaining -= len(chunk)
        return True
    return True


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while True:
        data = await reader.read(1 << 16)
        if not data:
            break
        writer.write(data)
        await writer.drain()


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int, host: str = "127.0.0.1", port: int = 0):
        self.upstream = (upstream_host, upstream_port)
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.connections = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()

    # -- counters --------------------------------------------------------------------------

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.statuses.clear()
            self.connections = 0

    def snapshot(self) -> dict:
        with self._lock:
            return {"total": sum(self.requests.values()), "by_endpoint": dict(self.requests),
                    "statuses": dict(self.statuses), "connections": self.connections}

    def _count(self, key: str) -> None:
        with self._lock:
            self.requests[key] += 1

    def _status(self, code: int) -> None:
        with self._lock:
            self.statuses[code] += 1

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> "CountingProxy":
        threading.Thread(target=self._run, name="counting-proxy", daemon=True).start()
        self._ready.wait(10)
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, self.host, self.port, limit=_LIMIT, backlog=512))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        with self._lock:
            self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream, limit=_LIMIT)
        except OSError:
            client_w.close()
            return
        methods: asyncio.Queue[bytes] = asyncio.Queue()
        upgraded = asyncio.Event()  # noqa: set when the connection became a websocket
        up = asyncio.create_task(self._requests(client_r, server_w, methods, upgraded))
        down = asyncio.create_task(self._responses(server_r, client_w, methods, upgraded))
        # the response side ends when the server closes (it does once the client side sent EOF)
        await asyncio.gather(down, return_exceptions=True)
        up.cancel()
        await asyncio.gather(up, return_exceptions=True)
        for w in (client_w, server_w):
            try:
                w.close()
            except Exception:
                pass

    async def _requests(self, reader, writer, methods, upgraded) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, fields = _headers(head)
                parts = line.split(b" ")
                method, target = parts[0], parts[1] if len(parts) > 1 else b"/"
                self._count(f"{method.decode()} {_template(target)}")
                await methods.put(method)
                writer.write(head)
                if fields.get(b"upgrade"):
                    await writer.drain()
                    upgraded.set()
                    await _pipe(reader, writer)
                    return
                await _copy_body(reader, writer, fields)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.write_eof()
            except Exception:
                pass

    async def _responses(self, reader, writer, methods, upgraded) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line, fields = _headers(head)
                code = int(line.split(b" ")[1])
                if code == 101:
                    self._status(code)
                    writer.write(head)
                    await writer.drain()
                    await _pipe(reader, writer)
                    return
                if 100 <= code < 200:  # interim response: the final one follows
                    writer.write(head)
                    continue
                method = await methods.get()
                self._status(code)
                writer.write(head)
                if method != b"HEAD" and code not in (204, 304):
                    if b"content-length" in fields or b"chunked" in fields.get(b"transfer-encoding", b"").lower():
                        await _copy_body(reader, writer, fields)
                    else:  # body until close
                        await writer.drain()
                        await _pipe(reader, writer)
                        return
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass
