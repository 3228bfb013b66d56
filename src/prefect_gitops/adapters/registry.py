"""An OCI distribution registry, as the image scan reads it: tag lists and manifest digests.

A thin adapter over httpx (already Prefect's HTTP client) rather than an OCI library: oras-py, the
well-kept Python one, gathers every page of a tag list into one list (a repository with 10,000 tags is
loaded whole), does not honour `Retry-After`, and brings `requests` with it. What the scan needs is
small and follows the distribution spec:

- `GET /v2/<name>/tags/list?n=<page>`, following the `Link: <...>; rel="next"` header page by page;
- `HEAD /v2/<name>/manifests/<tag>` for `Docker-Content-Digest` (digest pinning);
- auth as registries ask for it in their `WWW-Authenticate` challenge: `Basic` (htpasswd, the CNCF
  registry) or `Bearer realm=...,service=...,scope=...` (Harbor, GitLab's registry, Docker Hub), whose
  token is fetched from the realm with the credentials as basic auth and cached per scope;
- 429 and 5xx and network errors are retried with exponential back-off, a 429's `Retry-After`
  honoured (capped); what remains is a TransientError. 401/403/404 are PermanentErrors.

Credentials are SecretStr and go only into Authorization headers: never into URLs, logs or errors.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import email.utils
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin

import httpx
from pydantic import SecretStr

from prefect_gitops.errors import PermanentError, TransientError

PAGE_SIZE = 500
MAX_PAGES = 1000  # 500,000 tags: a Link that never ends is a registry's bug, not a list to follow forever
MAX_RETRY_AFTER = 60.0
MAX_BODY = 4 * 1024 * 1024
MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
DOCKER_HUB_API = "registry-1.docker.io"
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(TransientError):
    """The registry could not be read now (rate limit, 5xx, network); the next scan tries again."""


class RegistryRefused(PermanentError):
    """The registry refused the request (credentials, permissions, no such repository)."""


@dataclass(frozen=True)
class RegistryCredentials:
    username: str | None = None
    password: SecretStr | None = field(default=None, repr=False)


def split_repository(repository: str) -> tuple[str, str]:
    """registry.example.com:5000/team/app -> (host, path); Docker Hub's names as its API wants them."""
    first, _, rest = repository.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        host, path = first, rest
    else:
        host, path = "docker.io", repository
    if host in ("docker.io", "index.docker.io"):
        host = DOCKER_HUB_API
        path = path if "/" in path else f"library/{path}"
    return host, path


class Registry:
    """One registry host. Use as `async with Registry(...) as registry:`."""

    def __init__(self, host: str, credentials: RegistryCredentials | None = None, *, insecure: bool = False,
                 timeout: float = 30.0, page_size: int = PAGE_SIZE, attempts: int = 5, backoff: float = 0.5,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep):
        self.base = f"{'http' if insecure else 'https'}://{host}"
        self._credentials = credentials or RegistryCredentials()
        self._page_size, self._attempts, self._backoff, self._sleep = page_size, attempts, backoff, sleep
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        self._tokens: dict[str, str] = {}  # scope -> bearer token
        self._basic = False  # the registry asked for basic auth once: send it from then on
        self.requests = 0  # requests sent, for the scan's report and the tests

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def tag_pages(self, path: str) -> AsyncIterator[list[str]]:
        """The repository's tags, one page at a time (never the whole list at once)."""
        url: str | None = f"{self.base}/v2/{path}/tags/list?n={self._page_size}"
        pages = 0
        while url is not None:
            pages += 1
            if pages > MAX_PAGES:
                raise RegistryRefused(f"{self._where(path)}: more than {MAX_PAGES} pages of tags; stopped")
            response = await self._request("GET", url, path)
            body = _json(response, self._where(path))
            tags = body.get("tags") or []
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise RegistryRefused(f"{self._where(path)}: the tag list is not a list of strings")
            yield tags
            link = response.links.get("next", {}).get("url")
            url = urljoin(self.base + "/", link) if link else None
            if url is not None and not url.startswith(self.base + "/"):
                raise RegistryRefused(f"{self._where(path)}: the next page's Link leaves the registry")

    async def digest(self, path: str, tag: str) -> str:
        """The manifest digest the registry has for `tag` (what `repo:tag@digest` pins)."""
        response = await self._request("HEAD", f"{self.base}/v2/{path}/manifests/{tag}", path,
                                        headers={"Accept": MANIFEST_TYPES})
        digest = str(response.headers.get("Docker-Content-Digest", ""))
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise RegistryRefused(f"{self._where(path)}:{tag}: the registry gave no sha256 digest for the tag")
        return digest

    def _where(self, path: str) -> str:
        return f"{self.base.split('://', 1)[1]}/{path}"

    async def _request(self, method: str, url: str, path: str, headers: dict[str, str] | None = None
                       ) -> httpx.Response:
        where = self._where(path)
        scope = f"repository:{path}:pull"
        authenticated = False
        for attempt in range(1, self._attempts + 1):
            try:
                self.requests += 1
                response = await self._http.request(method, url, headers={**(headers or {}), **self._auth(scope)})
            except httpx.HTTPError as exc:
                problem = f"{where}: {type(exc).__name__} talking to the registry"
                await self._wait(attempt, None, problem)
                continue
            if response.status_code == 401 and not authenticated:
                authenticated = True
                await self._answer(response.headers.get("WWW-Authenticate", ""), scope, where)
                continue
            if response.status_code == 429 or response.status_code >= 500:
                await self._wait(attempt, response, f"{where}: the registry answered {response.status_code}")
                continue
            if response.status_code in (401, 403):
                raise RegistryRefused(f"{where}: the registry refused the credentials ({response.status_code})")
            if response.status_code == 404:
                raise RegistryRefused(f"{where}: no such repository or tag on the registry (404)")
            if response.status_code >= 400:
                raise RegistryRefused(f"{where}: the registry answered {response.status_code}")
            return response
        raise RegistryError(f"{where}: the registry did not answer after {self._attempts} attempts")

    async def _wait(self, attempt: int, response: httpx.Response | None, problem: str) -> None:
        if attempt >= self._attempts:
            raise RegistryError(f"{problem}; gave up after {attempt} attempts")
        delay = _retry_after(response) if response is not None else None
        if delay is None:
            delay = self._backoff * 2 ** (attempt - 1) * (1 + random.random() / 4)
        await self._sleep(min(delay, MAX_RETRY_AFTER))

    def _auth(self, scope: str) -> dict[str, str]:
        if scope in self._tokens:
            return {"Authorization": f"Bearer {self._tokens[scope]}"}
        if self._basic:
            return {"Authorization": self._basic_header()}
        return {}

    def _basic_header(self) -> str:
        c = self._credentials
        secret = c.password.get_secret_value() if c.password else ""
        return "Basic " + base64.b64encode(f"{c.username or ''}:{secret}".encode()).decode("ascii")

    async def _answer(self, challenge: str, scope: str, where: str) -> None:
        scheme, _, params_text = challenge.partition(" ")
        if scheme.lower() == "basic":
            if self._credentials.username is None:
                raise RegistryRefused(f"{where}: the registry needs credentials (set credentials_block)")
            self._basic = True
            return
        if scheme.lower() != "bearer":
            raise RegistryRefused(f"{where}: the registry asked for {scheme or 'an unknown'} authentication")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        realm = params.get("realm")
        if not realm or not realm.startswith(("https://", "http://")):
            raise RegistryRefused(f"{where}: the registry's Bearer challenge names no token realm")
        if realm.startswith("http://") and self.base.startswith("https://"):
            # the credentials go to the realm: never in clear text for a registry reached over TLS
            raise RegistryRefused(f"{where}: the registry's token realm is plain HTTP; refused to send credentials")
        query = {"service": params.get("service", ""), "scope": params.get("scope", scope)}
        headers = {"Authorization": self._basic_header()} if self._credentials.username is not None else {}
        for attempt in range(1, self._attempts + 1):
            try:
                self.requests += 1
                response = await self._http.get(realm, params=query, headers=headers)
            except httpx.HTTPError as exc:
                await self._wait(attempt, None, f"{where}: {type(exc).__name__} fetching a registry token")
                continue
            if response.status_code == 429 or response.status_code >= 500:
                await self._wait(attempt, response, f"{where}: the token service answered {response.status_code}")
                continue
            if response.status_code in (401, 403):
                raise RegistryRefused(f"{where}: the token service refused the credentials ({response.status_code})")
            body = _json(response, f"{where} (token service)")
            token = body.get("token") or body.get("access_token")
            if not isinstance(token, str) or not token:
                raise RegistryRefused(f"{where}: the token service answered without a token")
            self._tokens[scope] = token
            return
        raise RegistryError(f"{where}: the token service did not answer")


def _retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: delay-seconds (ASCII digits only) or an HTTP date; None when it is neither."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    if re.fullmatch(r"[0-9]+", value.strip()):  # not str.isdigit(): "²" is a digit to it, and float("²") raises
        return float(value.strip())
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:  # "-0000": HTTP dates are GMT, not this machine's local time
        when = when.replace(tzinfo=dt.timezone.utc)
    return max(0.0, when.timestamp() - time.time())


def _json(response: httpx.Response, where: str) -> dict[str, Any]:
    if len(response.content) > MAX_BODY:
        raise RegistryRefused(f"{where}: the registry's answer is larger than {MAX_BODY} bytes")
    try:
        body = response.json()
    except ValueError:
        raise RegistryRefused(f"{where}: the registry's answer is not JSON") from None
    if not isinstance(body, dict):
        raise RegistryRefused(f"{where}: the registry's answer is not a JSON object")
    return body
