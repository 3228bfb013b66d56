"""GitLab source: a private GitLab repository read with a token that never leaks.

prefect-gitlab 0.3.5 clones with the token inside the URL: it shows in `ps`,
stays in the copied `.git/config`, and deploy tokens get a wrong `oauth2:`
prefix. `GitLabSource` is `GitSource` (same cache, same retries) with
`Credentials`: `git_runner.GitRunner` hands the token to git only through the
child's environment (GIT_ASKPASS, no credential helpers, scrubbed output), and
`writer()` pushes promotions with the same token.

`report_commit_status` posts a commit status (pending/running/success/...)
through python-gitlab, so a reconcile result shows next to the commit.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator
from urllib.parse import urlsplit

from pydantic import SecretStr

from prefect_gitops.adapters.git import GitSource, display_url
from prefect_gitops.adapters.git_runner import (  # noqa: F401  (re-exported: tests and callers use them here)
    PASSWORD_ENV,
    USERNAME_ENV,
    Credentials,
    askpass_script,
)
from prefect_gitops.errors import PermanentError, TransientError

if TYPE_CHECKING:  # prefect_gitlab imports prefect; keep this module light
    from gitlab import Gitlab
    from prefect_gitlab import GitLabRepository

logger = logging.getLogger(__name__)

COMMIT_STATES = ("pending", "running", "success", "failed", "canceled")


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
        # credentials even without a token: anonymous, but never prompting and never a stored helper's
        super().__init__(clean, cache_dir=cache_dir, timeout=timeout, attempts=attempts, backoff=backoff,
                         credentials=Credentials(token, username))

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

    def report_status(self, sha: str, state: str, **kwargs: Any) -> None:
        """`report_commit_status` for this repository, with the same token."""
        if not self.api_url or self._token is None:
            raise PermanentError(f"cannot report a commit status for {self.display}: "
                                 "no GitLab API URL or token")
        report_commit_status(self.api_url, self._token, self.project, sha, state, **kwargs)


@contextlib.contextmanager
def _gitlab_api(api_url: str, token: SecretStr | str, doing: str, timeout: float) -> Iterator[Gitlab]:
    """A python-gitlab client of the instance at `api_url` (a trailing /api/v4 accepted), closed after, whose
    errors become ours: 401/403 permanent (the token), 429, 5xx, no answer and connection problems transient,
    other 4xx permanent. `doing` says what was being done ("report status 'success' on commit ..."); no
    message carries the token."""
    import gitlab  # python-gitlab; imported here so the Git side works without it
    import requests

    secret = token.get_secret_value() if isinstance(token, SecretStr) else str(token)

    def scrub(text: str) -> str:
        return text.replace(secret, "***") if secret else text

    base = api_url.rstrip("/").removesuffix("/api/v4")
    where = display_url(base)
    client = gitlab.Gitlab(base, private_token=secret, timeout=timeout)
    try:
        yield client
    except gitlab.exceptions.GitlabError as exc:
        code = exc.response_code
        if code in (401, 403):
            raise PermanentError(f"GitLab rejected the token on {where} trying to {doing} "
                                 f"(HTTP {code}): check the token and its api scope") from None
        message = f"cannot {doing} on {where} (HTTP {code}): {scrub(str(exc.error_message or exc))}"
        if code is None or code == 429 or code >= 500:
            raise TransientError(message) from None
        raise PermanentError(message) from None
    except requests.exceptions.RequestException as exc:
        raise TransientError(f"cannot reach GitLab on {where} to {doing}: "
                             f"{scrub(type(exc).__name__ + ': ' + str(exc))}") from None
    finally:
        with contextlib.suppress(Exception):
            client.session.close()


def report_commit_status(api_url: str, token: SecretStr, project: str | int, sha: str, state: str, *,
                         name: str = "prefect-gitops", description: str = "",
                         target_url: str | None = None, timeout: float = 10) -> None:
    """Set commit status `state` on `sha` in `project` (id or "group/repo").

    `api_url` is the GitLab instance (https://gitlab.example.com; a trailing
    /api/v4 is accepted). Raises TransientError for connection problems, 429 and
    5xx, PermanentError for other 4xx; messages never contain the token.
    """
    import gitlab

    if state not in COMMIT_STATES:
        raise PermanentError(f"commit status must be one of {', '.join(COMMIT_STATES)}, not {state!r}")
    data = {"state": state, "name": name, "description": description}
    if target_url:
        data["target_url"] = target_url
    doing = f"report status {state!r} on commit {sha[:12]} of {project}"
    with _gitlab_api(api_url, token, doing, timeout) as client:
        commit = client.projects.get(project, lazy=True).commits.get(sha, lazy=True)
        try:
            commit.statuses.create(data)
        except gitlab.exceptions.GitlabError as exc:
            if exc.response_code != 400 or "cannot transition status" not in str(exc.error_message or exc).lower():
                raise
            logger.info("commit status of commit %s of %s is already %s", sha[:12], project, state)
            return
    logger.info("reported commit status %s on commit %s of %s", state, sha[:12], project)


def upsert_merge_request(api_url: str, token: SecretStr, project: str | int, *, source_branch: str,
                         target_branch: str, title: str, description: str, timeout: float = 10) -> tuple[str, bool]:
    """Open a merge request from `source_branch` into `target_branch`, or update the open one from
    `source_branch` (title, description, target): never two. Returns (its web URL, whether it was created).

    Errors as `report_commit_status`: transient for connection problems, 429 and 5xx, permanent otherwise;
    messages never contain the token."""
    doing = f"open or update the merge request from {source_branch} in project {project}"
    with _gitlab_api(api_url, token, doing, timeout) as client:
        found = client.projects.get(project)
        opened = found.mergerequests.list(source_branch=source_branch, state="opened", get_all=False)
        if opened:
            mr = opened[0]
            mr.title, mr.description, mr.target_branch = title, description, target_branch
            mr.save()
            created = False
        else:
            mr = found.mergerequests.create({"source_branch": source_branch, "target_branch": target_branch,
                                             "title": title, "description": description,
                                             "remove_source_branch": True})
            created = True
        url = str(mr.web_url)
    logger.info("%s merge request %s", "opened" if created else "updated", url)
    return url, created
