"""A real OCI registry for the image scan's tests: Debian's docker-registry (the CNCF distribution
registry) on 127.0.0.1 with htpasswd (basic) auth, images pushed through the OCI API, and a small real
HTTP front (`TokenFront`) that asks for Bearer tokens as Harbor and GitLab's registry do, issues them
from its own token endpoint, answers 429 with Retry-After when told to, and forwards the rest to the
registry with the registry's basic credentials."""

from __future__ import annotations

import base64
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from prefect_gitops.demo_registry import LocalRegistry, binary
from prefect_gitops.local_server import free_port

USER = "scanner"
PASSWORD = "scan-test-password"
# bcrypt of PASSWORD at the lowest cost (4): the registry checks it on every request
HTPASSWD = f"{USER}:$2b$04$/mjKq34ImrLmrLUxQKT/hOHlR327m5uQ5d9kYv6WL7pl1H0TNA.Eu\n"


def available() -> bool:
    return binary() is not None


class RegistryServer(LocalRegistry):
    """The package's local registry (prefect_gitops.demo_registry, which the demo uses too) with htpasswd auth."""

    def __init__(self, root: Path):
        super().__init__(root, htpasswd=HTPASSWD, auth=(USER, PASSWORD))


class TokenFront:
    """Bearer-token auth (challenge, token endpoint), 429s and a request log in front of a RegistryServer."""

    def __init__(self, registry: RegistryServer):
        self.registry = registry
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.tokens: set[str] = set()
        self.throttle = 0  # answer this many of the next tag-list requests with 429 Retry-After: 1
        self.requests: list[str] = []  # "METHOD path?query" of every request
        self.token_requests: list[dict] = []
        self.page_sizes: list[int] = []  # tags per page served of the synthetic repository
        front = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                front._handle(self, "GET")

            def do_HEAD(self):
                front._handle(self, "HEAD")

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.upstream = httpx.Client(base_url=registry.url, auth=registry.auth, timeout=10)

    def start(self) -> TokenFront:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.upstream.close()

    def _reply(self, h: BaseHTTPRequestHandler, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        h.send_response(status)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        self.requests.append(f"{method} {h.path}")
        url = urlsplit(h.path)
        auth = h.headers.get("Authorization", "")
        if url.path == "/token":
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            self.token_requests.append(query)
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            if auth != expected:
                return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}')
            token = secrets.token_hex(16)
            self.tokens.add(token)
            return self._reply(h, 200, json.dumps({"token": token, "expires_in": 300}).encode(),
                               {"Content-Type": "application/json"})
        if not (auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in self.tokens):
            name = url.path.removeprefix("/v2/").rsplit("/tags/", 1)[0].rsplit("/manifests/", 1)[0]
            challenge = (f'Bearer realm="http://{self.host}/token",service="test-front",'
                         f'scope="repository:{name}:pull"')
            return self._reply(h, 401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
        if url.path == f"/v2/{SYNTHETIC}/tags/list":
            return self._synthetic_page(h, {k: v[0] for k, v in parse_qs(url.query).items()})
        if "/tags/list" in url.path and self.throttle > 0:
            self.throttle -= 1
            return self._reply(h, 429, b'{"errors":[{"code":"TOOMANYREQUESTS"}]}', {"Retry-After": "1"})
        if url.path.endswith("/tags/list"):
            return self._paged(h, url.path, {k: v[0] for k, v in parse_qs(url.query).items()})
        headers = {"Accept": h.headers["Accept"]} if h.headers.get("Accept") else {}
        answer = self.upstream.request(method, h.path, headers=headers)
        keep = {k: v for k, v in answer.headers.items()
                if k.lower() in ("content-type", "link", "docker-content-digest")}
        self._reply(h, answer.status_code, answer.content if method != "HEAD" else b"", keep)

    def _paged(self, h: BaseHTTPRequestHandler, path: str, query: dict) -> None:
        """The registry's tag list, paged as the distribution spec says (`n`, `last`, `Link: rel="next"`):
        Debian's registry (2.8) answers every tag at once, as registries without paging do."""
        answer = self.upstream.get(path)
        if answer.status_code != 200:
            return self._reply(h, answer.status_code, answer.content, {"Content-Type": "application/json"})
        tags = sorted(answer.json().get("tags") or [])
        if "last" in query:
            tags = [t for t in tags if t > query["last"]]
        n = int(query.get("n", len(tags) or 1))
        page, more = tags[:n], len(tags) > n
        headers = {"Content-Type": "application/json"}
        if more:
            headers["Link"] = f'<{path}?n={n}&last={page[-1]}>; rel="next"'
        self._reply(h, 200, json.dumps({"name": path, "tags": page}).encode(), headers)

    def _synthetic_page(self, h: BaseHTTPRequestHandler, query: dict) -> None:
        """A repository of SYNTHETIC_TAGS tags (release-00000 ... plus one unparseable in every 100), paged
        the way the distribution registry pages: `n` per page, `last` where the previous page ended."""
        n = min(int(query.get("n", 100)), 1000)
        start = int(query["last"].rsplit("-", 1)[1]) + 1 if "last" in query else 0
        names = [f"{i // 1000}.{i % 1000}.0" if i % 100 else f"junk-{i:05d}"
                 for i in range(start, min(start + n, SYNTHETIC_TAGS))]
        self.page_sizes.append(len(names))
        headers = {"Content-Type": "application/json"}
        if start + n < SYNTHETIC_TAGS:
            last = f"x-{start + n - 1:05d}"
            headers["Link"] = f'</v2/{SYNTHETIC}/tags/list?last={last}&n={n}>; rel="next"'
        self._reply(h, 200, json.dumps({"name": SYNTHETIC, "tags": names}).encode(), headers)


SYNTHETIC = "synthetic/many"
SYNTHETIC_TAGS = 10_000
