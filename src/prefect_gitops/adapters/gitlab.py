"""GitLab source: a private GitLab repository read with a token that never leaks.

prefect-gitlab 0.3.5 clones with the token inside the URL: it shows in `ps`,
stays in the copied `.git/config`, and deploy tokens get a wrong `oauth2:`
prefix. `GitLabSource` reuses `GitSource` (same cache, same retries, same error
mapping) and hands the token to git only through the child's environment:

* the URL given to git carries no user information;
* `GIT_ASKPASS` points at a tiny script (written once per process into a 0700
  temp dir) that contains no secret: it prints `$PREFECT_GITOPS_GIT_USERNAME`
  for "Username" prompts and `$PREFECT_GITOPS_GIT_PASSWORD` otherwise;
* those two variables are set only in the environment of the git child;
* `-c credential.helper=` empties the credential helper list, so nothing is
  stored, and `GIT_TERMINAL_PROMPT=0` keeps git from ever waiting on a tty;
* stderr is scrubbed of the token before it reaches a message or a log.

`report_commit_status` posts a commit status (pending/running/success/...)
through python-gitlab, so a reconcile result shows next to the commit.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from pydantic import SecretStr

from prefect_gitops.adapters.git import GitSource, display_url
from prefect_gitops.errors import GitOpsError, PermanentError, TransientError

if TYPE_CHECKING:  # prefect_gitlab imports prefect; keep this module light
    from prefect_gitlab import GitLabRepository

logger = logging.getLogger(__name__)

USERNAME_ENV = "PREFECT_GITOPS_GIT_USERNAME"
PASSWORD_ENV = "PREFECT_GITOPS_GIT_PASSWORD"
COMMIT_STATES = ("pending", "running", "success", "failed", "canceled")

_ASKPASS_SCRIPT = f"""#!/bin/sh
# prefect-gitops: answers git's credential prompts from the environment (no secret in here)
case "$1" in
  Username*|username*) printf '%s\\n' "${USERNAME_ENV}" ;;
  *) printf '%s\\n' "${PASSWORD_ENV}" ;;
esac
"""
_askpass_lock = threading.Lock()
_askpass_path: Path | None = None

# git's ways of saying "the server refused these credentials"
_AUTH_FAILED = re.compile(
    r"authentication failed|could not read (username|password)|"
    r"returned error: (401|403)|http basic: access denied|terminal prompts disabled",
    re.IGNORECASE,
)
_HTTP_CODE = re.compile(r"returned error: (401|403)")
# variables that make git print its HTTP traffic; never pass them on
_NOISY_ENV = ("GIT_CURL_VERBOSE", "GIT_TRACE", "GIT_TRACE_CURL", "GIT_TRACE_PACKET",
              "GIT_TRACE_CURL_NO_DATA", "GIT_TRACE_REDACT")


def askpass_script() -> Path:
    """The GIT_ASKPASS helper, created on first use in a private (0700) temp dir."""
    global _askpass_path
    with _askpass_lock:
        if _askpass_path is None or not _askpass_path.is_file():
            directory = Path(tempfile.mkdtemp(prefix="prefect-gitops-askpass-"))
            os.chmod(directory, 0o700)
            script = directory / "askpass.sh"
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(_ASKPASS_SCRIPT)
            os.chmod(script, stat.S_IRWXU)
            atexit.register(shutil.rmtree, directory, True)
            _askpass_path = script
        return _askpass_path


def _split_token(token: SecretStr | str | None, username: str | None) -> tuple[str, SecretStr | None]:
    """(username, token), undoing the conventions people use with prefect-gitlab:
    an `oauth2:` prefix, or `deploy-user:deploy-token` stored as the token."""
    if token is None:
        return username or "oauth2", None
    value = token.get_secret_value() if isinstance(token, SecretStr) else str(token)
    if username is None and ":" in value:
        user, _, secret = value.partition(":")
        if user and secret:
            return user, SecretStr(secret)
    return username or "oauth2", SecretStr(value)


def _project_path(url: str) -> str:
    """`group/sub/repo` from https://host/group/sub/repo.git or git@host:group/sub/repo.git."""
    if "://" in url:
        path = urlsplit(url).path
    else:
        path = url.partition(":")[2]
    path = path.strip("/")
    return path[:-4] if path.endswith(".git") else path


def _instance_url(url: str) -> str | None:
    parts = urlsplit(display_url(url))
    if parts.scheme in ("http", "https") and parts.hostname:
        return f"{parts.scheme}://{parts.netloc}"
    return None


class GitLabSource(GitSource):
    """A GitLab repository over HTTPS, authenticated with an access or deploy token.

    `username` is "oauth2" for personal, project and group access tokens, and the
    deploy token's own username for deploy tokens. `token=None` reads anonymously.
    """

    def __init__(self, url: str, token: SecretStr | None, *, username: str = "oauth2",
                 cache_dir: Path | None = None, timeout: float = 60.0,
                 attempts: int = 3, backoff: float = 1.0,
                 reference: str | None = None, api_url: str | None = None):
        clean = display_url(url)
        if clean != url:
            logger.warning("ignoring the credentials embedded in the GitLab URL %s; "
                           "the token is passed to git through the environment", clean)
        if token is not None and not isinstance(token, SecretStr):
            token = SecretStr(str(token))
        self._token = token
        self.username = username
        self.reference = reference
        self.api_url = api_url or _instance_url(clean)
        self.project = _project_path(clean)
        extra_env = {"GIT_ASKPASS": str(askpass_script()), USERNAME_ENV: username,
                     PASSWORD_ENV: token.get_secret_value() if token is not None else ""}
        super().__init__(clean, cache_dir=cache_dir, timeout=timeout, extra_env=extra_env,
                         attempts=attempts, backoff=backoff)

    def __repr__(self) -> str:
        return f"GitLabSource({self.display!r}, username={self.username!r})"

    @classmethod
    def from_block(cls, repository: GitLabRepository, *, deploy_token_username: str | None = None,
                   cache_dir: Path | None = None, timeout: float = 60.0,
                   attempts: int = 3, backoff: float = 1.0) -> GitLabSource:
        """A source from prefect-gitlab blocks, without prefect-gitlab's own clone.

        URL from `repository.repository`, default ref from `repository.reference`,
        token from `repository.credentials.token`, API URL from
        `repository.credentials.url` (else the repository's host). A token stored
        as `user:token` is read as a deploy token; an `oauth2:` prefix is dropped.
        `git_depth` is not needed: commits are always fetched with depth 1.
        """
        credentials = repository.credentials
        token = credentials.token if credentials is not None else None
        username, token = _split_token(token, deploy_token_username)
        return cls(repository.repository, token, username=username, cache_dir=cache_dir,
                   timeout=timeout, attempts=attempts, backoff=backoff,
                   reference=repository.reference,
                   api_url=(credentials.url if credentials is not None else None))

    def resolve(self, ref: str | None = None) -> str:
        """Like GitSource.resolve; without `ref`, the block's reference (else HEAD)."""
        return super().resolve(ref or self.reference or "HEAD")

    def report_status(self, sha: str, state: str, **kwargs) -> None:
        """`report_commit_status` for this repository, with the same token."""
        if not self.api_url or self._token is None:
            raise PermanentError(f"cannot report a commit status for {self.display}: "
                                 "no GitLab API URL or token")
        report_commit_status(self.api_url, self._token, self.project, sha, state, **kwargs)

    # -- GitSource hooks ------------------------------------------------------

    def _env(self) -> dict[str, str]:
        env = super()._env()
        for name in _NOISY_ENV:
            env.pop(name, None)
        env["GIT_TRACE_REDACT"] = "1"
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def _git(self, args: list[str], *, what: str, local: bool = False) -> str:
        try:
            return super()._git(["-c", "credential.helper=", *args], what=what, local=local)
        except GitOpsError as exc:
            detail = self._scrub(str(exc))
            logger.debug("git failed: %s", detail)
            if not local and _AUTH_FAILED.search(detail):
                raise PermanentError(self._auth_message(detail)) from None
            raise type(exc)(detail) from None

    def _auth_message(self, detail: str) -> str:
        match = _HTTP_CODE.search(detail)
        code = match.group(1) if match else "401"
        if self._token is None:
            return (f"GitLab refused anonymous access to {self.display} (HTTP {code}): "
                    "set a GitLabCredentials token with the read_repository scope")
        if self.username == "oauth2":
            hint = "check the GitLabCredentials token and its read_repository scope"
        else:
            hint = (f"check the deploy token, its username ({self.username!r}) "
                    "and its read_repository scope")
        return f"GitLab rejected the token for {self.display} (HTTP {code}): {hint}"

    def _scrub(self, text: str) -> str:
        text = super()._scrub(text)
        if self._token is not None:
            secret = self._token.get_secret_value()
            if secret:
                text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
        return text


def report_commit_status(api_url: str, token: SecretStr, project: str | int, sha: str, state: str, *,
                         name: str = "prefect-gitops", description: str = "",
                         target_url: str | None = None, timeout: float = 10) -> None:
    """Set commit status `state` on `sha` in `project` (id or "group/repo").

    `api_url` is the GitLab instance (https://gitlab.example.com; a trailing
    /api/v4 is accepted). Raises TransientError for connection problems, 429 and
    5xx, PermanentError for other 4xx; messages never contain the token.
    """
    import gitlab  # python-gitlab; imported here so the Git side works without it
    import requests

    if state not in COMMIT_STATES:
        raise PermanentError(f"commit status must be one of {', '.join(COMMIT_STATES)}, not {state!r}")
    if not isinstance(token, SecretStr):
        token = SecretStr(str(token))
    secret = token.get_secret_value()

    def scrub(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    base = api_url.rstrip("/")
    if base.endswith("/api/v4"):
        base = base[: -len("/api/v4")]
    where = f"commit {sha[:12]} of {project} on {display_url(base)}"
    data = {"state": state, "name": name, "description": description}
    if target_url:
        data["target_url"] = target_url
    client = gitlab.Gitlab(base, private_token=secret, timeout=timeout)
    try:
        commit = client.projects.get(project, lazy=True).commits.get(sha, lazy=True)
        commit.statuses.create(data)
    except gitlab.exceptions.GitlabError as exc:
        code = exc.response_code
        detail = scrub(str(exc.error_message or exc))
        if code in (401, 403):
            raise PermanentError(f"GitLab rejected the token reporting status {state!r} on {where} "
                                 f"(HTTP {code}): check the token and its api scope") from None
        if code == 400 and "cannot transition status" in detail.lower():
            logger.info("commit status of %s is already %s", where, state)
            return
        message = f"cannot report status {state!r} on {where} (HTTP {code}): {detail}"
        if code is None or code == 429 or code >= 500:
            raise TransientError(message) from None
        raise PermanentError(message) from None
    except requests.exceptions.RequestException as exc:
        raise TransientError(f"cannot reach GitLab to report status {state!r} on {where}: "
                             f"{scrub(type(exc).__name__ + ': ' + str(exc))}") from None
    finally:
        with contextlib.suppress(Exception):
            client.session.close()
    logger.info("reported commit status %s on %s", state, where)
