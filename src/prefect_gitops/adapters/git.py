"""Git source: resolve a ref to a commit with one remote lookup, check commits out into a cache.

`Source` is the small interface every source implements (plain Git here; a
GitLab source with a token slots in by providing the same three members).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import subprocess
from pathlib import Path
from typing import Iterator, Protocol
from urllib.parse import urlsplit, urlunsplit

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from prefect_gitops.errors import PermanentError, TransientError

SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")
_TRANSIENT_GIT = re.compile(
    r"could not resolve host|connection (refused|reset|timed out)|timed out|temporarily|"
    r"early eof|the remote end hung up unexpectedly|http (429|5\d\d)|error: (429|5\d\d)|"
    r"returned error: (429|5\d\d)",
    re.IGNORECASE,
)


class Source(Protocol):
    @property
    def display(self) -> str:
        """Where the source is, safe to print (no credentials)."""

    def resolve(self, ref: str) -> str:
        """The full commit SHA `ref` points at, asking the remote."""

    def checkout(self, sha: str) -> contextlib.AbstractContextManager[Path]:
        """A work tree at `sha`, valid inside the `with` block."""


def display_url(url: str) -> str:
    """The URL without user:password@ so it can be logged."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def scrub_credentials(text: str, url: str) -> str:
    """Remove the credentials of `url` (and any user:password@ in URLs) from a message."""
    display = display_url(url)
    if url != display:
        text = text.replace(url, display)
    text = re.sub(r"(://)[^/@\s]+@", r"\1", text)
    parts = urlsplit(url)
    if parts.password and len(parts.password) >= 4:
        text = text.replace(parts.password, "***")
    elif parts.username and not parts.password and len(parts.username) >= 8:  # a token as the user name
        text = text.replace(parts.username, "***")
    return text


def default_cache_dir() -> Path:
    base = os.environ.get("PREFECT_GITOPS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prefect-gitops"
    )
    return Path(base)


class GitSource:
    """Any URL git understands: file://, a local path, https, ssh."""

    def __init__(self, url: str, *, cache_dir: Path | None = None, timeout: float = 60.0,
                 extra_env: dict[str, str] | None = None, attempts: int = 3, backoff: float = 1.0):
        self.url = url
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.timeout = timeout
        self.extra_env = dict(extra_env or {})
        self.attempts = attempts
        self.backoff = backoff
        self.git_operations = 0  # counted for the benchmark

    @property
    def display(self) -> str:
        return display_url(self.url)

    def _retrying(self, fn, *args):
        return retry(
            retry=retry_if_exception_type(TransientError),
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.backoff, max=30),
            reraise=True,
        )(fn)(*args)

    def resolve(self, ref: str) -> str:
        if SHA_PATTERN.match(ref):
            return ref  # a commit names itself; checkout() proves it exists
        return self._retrying(self._resolve_once, ref)

    def _resolve_once(self, ref: str) -> str:
        out = self._git(["ls-remote", self.url], what=f"look up ref {ref!r} in")
        refs: dict[str, str] = {}
        for line in out.splitlines():
            sha, _, name = line.partition("\t")
            refs[name.strip()] = sha.strip()
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"):
            if candidate in refs:
                return refs[candidate]
        raise PermanentError(f"ref {ref!r} does not exist in {self.display}")

    @contextlib.contextmanager
    def checkout(self, sha: str) -> Iterator[Path]:
        if not SHA_PATTERN.match(sha):
            raise PermanentError(f"not a full commit SHA: {sha!r}")
        repo = self.cache_dir / hashlib.sha256(self.display.encode()).hexdigest()[:16]
        repo.mkdir(parents=True, exist_ok=True)
        with open(repo.parent / f"{repo.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one checkout per cache, across processes
            if not (repo / ".git").is_dir():
                self._git(["init", "-q", str(repo)], what="initialise the cache for", local=True)
            if not self._has_commit(repo, sha):
                self._retrying(self._fetch, repo, sha)
            self._git(["-C", str(repo), "checkout", "-q", "--force", "--detach", sha], what="check out", local=True)
            self._git(["-C", str(repo), "clean", "-q", "-ffdx"], what="clean the checkout of", local=True)
            yield repo

    def _has_commit(self, repo: Path, sha: str) -> bool:
        done = subprocess.run(["git", "-C", str(repo), "cat-file", "-e", f"{sha}^{{commit}}"],
                              capture_output=True, env=self._env(), timeout=self.timeout)
        return done.returncode == 0

    def _fetch(self, repo: Path, sha: str) -> None:
        try:
            self._git(["-C", str(repo), "fetch", "-q", "--depth", "1", "--no-tags", self.url, sha],
                      what=f"fetch revision {sha} from")
        except PermanentError as exc:
            if "not our ref" in str(exc) or "couldn't find remote ref" in str(exc).lower():
                raise PermanentError(f"revision {sha} does not exist in {self.display}") from None
            raise

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": env.get("GIT_ASKPASS", "true"), "LC_ALL": "C"})
        env.update(self.extra_env)
        return env

    def _git(self, args: list[str], *, what: str, local: bool = False) -> str:
        if not local:
            self.git_operations += 1
        try:
            done = subprocess.run(["git", *args], capture_output=True, text=True,
                                  env=self._env(), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise TransientError(f"git timed out after {self.timeout:.0f}s trying to {what} {self.display}") from None
        if done.returncode != 0:
            detail = self._scrub(done.stderr.strip() or done.stdout.strip())
            message = f"cannot {what} {self.display}: {detail}"
            if _TRANSIENT_GIT.search(detail):
                raise TransientError(message)
            raise PermanentError(message)
        return done.stdout

    def _scrub(self, text: str) -> str:
        return scrub_credentials(text, self.url)
