"""adapters/registry: retries, Retry-After and the Link header, against a scripted HTTP server on 127.0.0.1.

The adapter's `sleep` is given in, so nothing here waits: the tests record the delays it asks for.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from prefect_gitops.adapters.registry import (MAX_RETRY_AFTER, Registry, RegistryError, RegistryRefused,
                                              _retry_after)
from prefect_gitops.errors import TransientError

Answer = tuple[int, dict[str, str], dict | None]  # status, headers, JSON body


class Scripted:
    """Answers GETs from a script, one answer a request (the last one repeats); logs the paths asked for."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.paths: list[str] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                scripted.paths.append(self.path)
                status, headers, body = (scripted.script.pop(0) if len(scripted.script) > 1
                                         else scripted.script[0])
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Scripted]:
    s = Scripted()
    thread = threading.Thread(target=s.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()
        thread.join(5)


def tags(*names: str) -> dict:
    return {"name": "app", "tags": list(names)}


def read_all(host: str, attempts: int = 5) -> tuple[list[list[str]], list[float], int, BaseException | None]:
    """Every page the adapter yields, the sleeps it asked for, its request count and what it raised."""
    delays: list[float] = []

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async def go() -> tuple[list[list[str]], int, BaseException | None]:
        pages: list[list[str]] = []
        async with Registry(host, insecure=True, attempts=attempts, backoff=0.5, sleep=sleep, timeout=5) as r:
            try:
                async for page in r.tag_pages("app"):
                    pages.append(page)
            except (RegistryError, RegistryRefused) as exc:
                return pages, r.requests, exc
            return pages, r.requests, None

    pages, requests, error = asyncio.run(go())
    return pages, delays, requests, error


def http_date(seconds_from_now: float) -> str:
    return email.utils.format_datetime(dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=seconds_from_now),
                                       usegmt=True)


@pytest.mark.parametrize("first, waited", [
    ((503, {}, None), (0.5, 0.625)),  # no Retry-After: the back-off, with up to 25% jitter
    ((503, {"Retry-After": "0"}, None), (0, 0)),
    ((429, {"Retry-After": "7"}, None), (7, 7)),
    ((502, {"Retry-After": "86400"}, None), (MAX_RETRY_AFTER, MAX_RETRY_AFTER)),  # capped
])
def test_a_5xx_or_429_then_200_is_retried_and_the_tags_arrive(server, first, waited):
    server.script = [first, (200, {}, tags("1.0.0", "1.1.0"))]
    pages, delays, requests, error = read_all(server.host)
    assert error is None and pages == [["1.0.0", "1.1.0"]]
    assert requests == 2 and len(server.paths) == 2 and len(delays) == 1
    assert waited[0] <= delays[0] <= waited[1]


@pytest.mark.parametrize("when, low, high", [
    (30, 28, 30),  # a date 30 s ahead: about 30 s (the header has whole seconds)
    (3600, MAX_RETRY_AFTER, MAX_RETRY_AFTER),  # an hour ahead: capped
    (-3600, 0, 0),  # already past: at once
])
def test_retry_after_as_an_http_date_is_honoured_and_bounded(server, when, low, high):
    server.script = [(503, {"Retry-After": http_date(when)}, None), (200, {}, tags("2.0.0"))]
    pages, delays, _, error = read_all(server.host)
    assert error is None and pages == [["2.0.0"]]
    assert len(delays) == 1 and low <= delays[0] <= high


@pytest.mark.parametrize("value, low, high", [
    (b"12", 12, 12),
    (b" 3 ", 3, 3),
    (b"Wed, 21 Oct 2015 07:28:00 GMT", 0, 0),  # past
    (b"soon", None, None),  # not a delay: the back-off is used
    (b"-5", None, None),
    (b"1e9", None, None),
    (b"\xb2", None, None),  # latin-1 superscript two: isdigit() but not a number; must not raise
    (b"\xd9\xa3", None, None),  # an Arabic-Indic digit three (UTF-8): not an HTTP delay-seconds
])
def test_retry_after_values(value, low, high):
    delay = _retry_after(httpx.Response(503, headers=[(b"Retry-After", value)]))
    if low is None:
        assert delay is None
    else:
        assert delay is not None and low <= delay <= high


@pytest.fixture
def far_from_gmt(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process's local time zone five hours off GMT (so local time and GMT read differently)."""
    if not hasattr(time, "tzset"):
        pytest.skip("no time.tzset here")
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_a_retry_after_date_without_a_zone_is_read_as_gmt(far_from_gmt):
    # RFC 9110 dates are GMT; "-0000" makes email.utils return a naive datetime, which must not be local time
    ahead = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=40)
    value = email.utils.format_datetime(ahead.replace(tzinfo=None))  # "..., -0000"
    assert value.endswith("-0000")
    delay = _retry_after(httpx.Response(503, headers={"Retry-After": value}))
    assert delay is not None and 38 <= delay <= 40


@pytest.mark.parametrize("status", [500, 503, 429])
def test_repeated_errors_end_as_the_transient_registry_error(server, status):
    server.script = [(status, {"Retry-After": "0"}, None)]
    pages, delays, requests, error = read_all(server.host, attempts=3)
    assert pages == [] and isinstance(error, RegistryError) and isinstance(error, TransientError)
    assert "gave up after 3 attempts" in str(error) and str(status) in str(error)
    assert requests == len(server.paths) == 3 and delays == [0, 0]  # no sleep after the last attempt


@pytest.mark.parametrize("link, refused", [
    ("</v2/app/tags/list?n=500&last=a>; rel=\"next\"", False),  # relative, same registry: followed
    ("<http://{host}/v2/app/tags/list?n=500&last=a>; rel=\"next\"", False),
    ("<http://other.example/v2/app/tags/list?last=a>; rel=\"next\"", True),
    ("<//other.example/v2/app/tags/list?last=a>; rel=\"next\"", True),  # scheme-relative: another host
    ("<https://{host}/v2/app/tags/list?last=a>; rel=\"next\"", True),  # another scheme
    ("<http://{host}@other.example/v2/app/tags/list>; rel=\"next\"", True),  # userinfo trick
    ("<http://{host}0/v2/app/tags/list>; rel=\"next\"", True),  # another port that starts alike
])
def test_a_link_to_another_host_is_refused_after_the_first_page(server, link, refused):
    server.script = [(200, {"Link": link.format(host=server.host)}, tags("a")), (200, {}, tags("b"))]
    pages, _, requests, error = read_all(server.host)
    if refused:
        assert pages == [["a"]] and isinstance(error, RegistryRefused)
        assert "Link leaves the registry" in str(error)
        assert requests == len(server.paths) == 1  # nothing was asked of the other host
    else:
        assert error is None and pages == [["a"], ["b"]] and server.paths[1] == "/v2/app/tags/list?n=500&last=a"
