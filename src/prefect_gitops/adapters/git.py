"""Git source: resolve a ref to a commit with one remote lookup, check commits out into a cache.

`Source` is the small interface every source implements (plain Git here; the
GitLab source with a token is this class with `Credentials`). Running git
(environment, credentials, timeout, scrubbing, transient vs permanent) is
`git_runner.GitRunner`'s job, shared with the GitLab source and the writer.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, TypeVar, TypeVarTuple

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from prefect_gitops.adapters.git_runner import Credentials, GitRunner, display_url, scrub_credentials
from prefect_gitops.adapters.git_write import GitWriter
from prefect_gitops.adapters.signatures import verify_commit
from prefect_gitops.adapters.url_credentials import credentials_for
from prefect_gitops.errors import PermanentError, RefNotFound, TransientError
from prefect_gitops.signatures import SignaturePolicy, SignatureVerdict

__all__ = ["SHA_PATTERN", "Credentials", "GitSource", "Source", "default_cache_dir", "display_url",
           "scrub_credentials"]

logger = logging.getLogger(__name__)

SHA_PATTERN = re.compile(r"^[0-9a-f]{40}$")

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


@dataclass(frozen=True)
class CacheKind:
    """One kind of cache entry per repository: where it lives next to the others and how git makes it."""

    suffix: str  # after the repository's hash in the cache directory
    marker: str  # the path inside that exists once git has initialised the entry
    init_args: tuple[str, ...] = ()
    fetch_args: tuple[str, ...] = ()
    config: tuple[tuple[str, str], ...] = ()


# what the reconcile reads: one commit deep, checked out
CHECKOUTS = CacheKind(suffix="", marker=".git", fetch_args=("--depth", "1"))
# what the history gates ask (descends_from): complete and bare, gc off so nothing fetched is pruned
# under a later question
HISTORY = CacheKind(suffix=".history.git", marker="HEAD", init_args=("--bare",), config=(("gc.auto", "0"),))


class Source(Protocol):
    @property
    def display(self) -> str:
        """Where the source is, safe to print (no credentials)."""

    def resolve(self, ref: str) -> str:
        """The full commit SHA `ref` points at, asking the remote."""

    def checkout(self, sha: str) -> contextlib.AbstractContextManager[Path]:
        """A work tree at `sha`, valid inside the `with` block."""

    def verify_signature(self, sha: str, policy: SignaturePolicy) -> SignatureVerdict:
        """Whether commit `sha` is signed by a signer `policy` trusts (fetching it if need be)."""

    def descends_from(self, sha: str, ancestor: str) -> bool:
        """Whether `ancestor` is `sha` or one of its ancestors on the remote (False when the remote
        no longer has `ancestor` in `sha`'s history, e.g. after a force-push)."""


def default_cache_dir() -> Path:
    base = os.environ.get("PREFECT_GITOPS_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "prefect-gitops"
    )
    return Path(base)


class GitSource:
    """Any URL git understands: file://, a local path, https, ssh."""

    def __init__(self, url: str, *, cache_dir: Path | None = None, timeout: float = 60.0,
                 extra_env: dict[str, str] | None = None, attempts: int = 3, backoff: float = 1.0,
                 credentials: Credentials | None = None):
        if credentials is None:  # a password in the URL goes to git through the environment, not argv
            url, credentials = credentials_for(url)
        self.url = url
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.timeout = timeout
        self.extra_env = dict(extra_env or {})
        self.attempts = attempts
        self.backoff = backoff
        self.git_operations = 0  # counted for the benchmark
        self.runner = GitRunner(url, credentials=credentials, timeout=timeout, extra_env=self.extra_env)

    @property
    def display(self) -> str:
        return display_url(self.url)

    def writer(self, **kwargs: Any) -> GitWriter:
        """A writer for this repository that pushes with this source's credentials (promotion
        commits where the reconcile reads, authenticated the same way). `kwargs` go to GitWriter."""
        options = {"timeout": self.timeout, "extra_env": self.extra_env, **kwargs}
        return GitWriter(self.url, credentials=self.runner.credentials, **options)

    def _retrying(self, fn: Callable[[*Ts], T], *args: *Ts) -> T:
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
        with self._cached(CHECKOUTS, sha, then=self._check_out) as repo:
            yield repo

    def _check_out(self, repo: Path, sha: str) -> None:
        self._git(["-C", str(repo), "checkout", "-q", "--force", "--detach", sha], what="check out", local=True)
        self._git(["-C", str(repo), "clean", "-q", "-ffdx"], what="clean the checkout of", local=True)

    def verify_signature(self, sha: str, policy: SignaturePolicy) -> SignatureVerdict:
        # the commit object carries its signature: a shallow fetch of it is enough, and the
        # checkout that follows finds it in the cache without asking the remote again
        with self._cached(CHECKOUTS, sha) as repo:
            return verify_commit(self.runner, repo, sha, policy)

    def descends_from(self, sha: str, ancestor: str) -> bool:
        # checkouts are shallow, so ancestry is asked of the complete (bare) history cache: fetching
        # `sha` there brings all of its history, hence an ancestor missing after the fetch is no ancestor
        if not SHA_PATTERN.match(ancestor):
            raise PermanentError(f"not a full commit SHA: {ancestor!r}")
        with self._cached(HISTORY, sha) as repo:
            if not self._has_commit(repo, ancestor):
                return False
            return self.runner.answers_yes(["-C", str(repo), "merge-base", "--is-ancestor", ancestor, sha],
                                           what="compare the history of")

    @contextlib.contextmanager
    def _cached(self, kind: CacheKind, sha: str, then: Callable[[Path, str], None] | None = None) -> Iterator[Path]:
        """The cache repository of `kind`, locked, with commit `sha` in it (and `then(repo, sha)` done in it).

        The cache is only a copy: when git cannot use it (a half-written object, garbage in a pack, a
        stale index.lock or shallow.lock left by a killed git, a missing HEAD), it is removed and the
        commit fetched once more from scratch. A missing ref (RefNotFound) and transient failures
        (already retried) are the remote's, not the cache's: they are raised as they are."""
        if not SHA_PATTERN.match(sha):
            raise PermanentError(f"not a full commit SHA: {sha!r}")
        repo = self.cache_dir / (hashlib.sha256(self.display.encode()).hexdigest()[:16] + kind.suffix)
        repo.mkdir(parents=True, exist_ok=True)
        with open(repo.parent / f"{repo.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one git at a time per cache entry, across processes
            try:
                self._fill(kind, repo, sha, then)
            except RefNotFound:
                raise
            except PermanentError as exc:
                logger.warning("the Git cache %s is unusable (%s): fetching %s again into a new one", repo, exc, sha)
                shutil.rmtree(repo)
                repo.mkdir()
                self._fill(kind, repo, sha, then)
            yield repo

    def _fill(self, kind: CacheKind, repo: Path, sha: str, then: Callable[[Path, str], None] | None) -> None:
        if not (repo / kind.marker).exists():
            self._git(["init", "-q", *kind.init_args, str(repo)], what="initialise the cache for", local=True)
            for key, value in kind.config:
                self._git(["-C", str(repo), "config", key, value], what="configure the cache of", local=True)
        if not self._has_commit(repo, sha):
            self._retrying(self._fetch, kind, repo, sha)
        if then is not None:
            then(repo, sha)

    def _fetch(self, kind: CacheKind, repo: Path, sha: str) -> None:
        try:
            self._git(["-C", str(repo), "fetch", "-q", *kind.fetch_args, "--no-tags", self.url, sha],
                      what=f"fetch revision {sha} from")
        except RefNotFound:
            raise RefNotFound(f"revision {sha} does not exist in {self.display}") from None

    def _has_commit(self, repo: Path, sha: str) -> bool:
        return self.runner.succeeds(["-C", str(repo), "cat-file", "-e", f"{sha}^{{commit}}"],
                                    what="look in the cache of", env=self._cache_only())

    def _git(self, args: list[str], *, what: str, local: bool = False) -> str:
        if not local:
            self.git_operations += 1
        return self.runner.run(args, what=what, local=local, env=self._cache_only())

    def _cache_only(self) -> dict[str, str]:
        """git run with `-C <cache entry>` looks for a repository in the directories above it when the
        entry is not one (a missing HEAD): a cache inside a user's home under Git (dotfiles) would
        then be checked out and cleaned (`clean -ffdx`). The ceiling stops the search at the cache."""
        return {"GIT_CEILING_DIRECTORIES": str(self.cache_dir.resolve())}
