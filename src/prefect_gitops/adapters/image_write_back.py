"""Image write-back, the I/O: commit new images into environment files, or open merge requests for them.

`write_back` is the one entry point (the `gitops-set-image` flow and the CLI's `set-image` call it, and
so can a registry scan). The deciding is `prefect_gitops.image_write`'s; here git pushes with the
source's credentials (`GitSource.writer()`: never in argv, URLs or `.git/config`), python-gitlab opens
or updates the merge request, and a `prefect-gitops.image.updated` event tells what was written.

Direct commits (the default): one commit per environment file on `branch`, the edit re-applied on the
new tip when another pipeline pushed first (`GitWriter`), nothing committed when the file already has
the images. Several environments go one after the other: an error stops there, and what was pushed
before it keeps its commit and its event. Merge requests: per environment and target, a branch
`prefect-gitops/image/<env>/...` holding one commit on top of `branch`, replaced by each later image,
and one open merge request from it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from itertools import groupby

from pydantic import SecretStr

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.adapters.git_write import GitWriter
from prefect_gitops.errors import PermanentError
from prefect_gitops.image_write import (
    ImageWrite,
    WriteBackResult,
    WrittenImage,
    branch_for,
    check_writes,
    commit_message,
    edit_file,
    file_of,
    merge_request_description,
    merge_request_title,
)
from prefect_gitops.policy import Policy

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeRequestApi:
    """Where merge requests are opened: a GitLab instance, a token with api scope, a project (id or path)."""

    api_url: str
    token: SecretStr
    project: str

    def __repr__(self) -> str:  # the token stays out of reprs (SecretStr shows masked anyway)
        return f"MergeRequestApi({self.api_url!r}, project={self.project!r})"


def merge_request_api(source: GitSource, *, api_url: str | None = None,
                      project: str | None = None) -> MergeRequestApi | None:
    """The GitLab API a merge request for `source` is opened through: `api_url` (else the repository's
    instance, https://host), `project` (else the repository URL's path), with the token the source pushes
    with (a GitLab access token has api scope; a deploy token has not, and GitLab will say so). None when
    the source has no token."""
    from prefect_gitops.adapters.gitlab import _instance_url, _project_path

    credentials = source.runner.credentials
    token = credentials.token if credentials is not None else None
    api_url = api_url or _instance_url(source.url)
    project = project or _project_path(source.url)
    if token is None or not api_url or not project:
        return None
    return MergeRequestApi(api_url=api_url, token=token, project=project)


async def write_back(source: GitSource, writes: list[ImageWrite], *, branch: str, folder: str,
                     merge_request: bool = False, message: str = "", gitlab: MergeRequestApi | None = None,
                     policy: Policy | None = None, emit_events: bool = True,
                     author: tuple[str, str] | None = None) -> WriteBackResult:
    """Write `writes` into `<folder>/<environment>.yaml` of `source`'s `branch`, as commits on `branch`
    or (`merge_request`) as merge requests into it. Raises PermanentError/ConfigError (nothing pushed)
    for bad input: an image that does not parse, a target the file does not name, a file that would
    not load, an image `policy` (the GitOps Policy block) refuses; TransientError when git or GitLab could
    not be reached. `gitlab` None: `merge_request_api(source)`. `author` (name, email): whom the commits
    are made for; prefect-gitops commits them."""
    check_writes(writes)
    if merge_request and gitlab is None:
        gitlab = merge_request_api(source)
    if merge_request and gitlab is None:
        raise PermanentError("a merge request needs the GitLab API: give the GitOps Source block "
                             "gitlab_credentials (a token with api scope); nothing was written")
    result = WriteBackResult()
    try:  # the environments one after the other: what was pushed before an error is told about too
        await asyncio.to_thread(_write_back, source.writer(author=author), writes, branch, folder, merge_request,
                                message, gitlab, policy, result)
    finally:
        if emit_events:
            from prefect_gitops.adapters.events import emit_image_updated

            for written in result.changed:
                emit_image_updated(written, source.display)
    return result


def _write_back(writer: GitWriter, writes: list[ImageWrite], branch: str, folder: str, merge_request: bool,
                message: str, gitlab: MergeRequestApi | None, policy: Policy | None, result: WriteBackResult) -> None:
    ordered = sorted(writes, key=lambda w: (w.environment, w.target_type, w.target))
    for environment, group in groupby(ordered, key=lambda w: w.environment):
        batch = list(group)
        if merge_request:
            assert gitlab is not None
            for w in batch:
                result.writes.append(_merge_request(writer, w, branch, folder, message, gitlab, policy, result))
        else:
            result.writes += _commit(writer, batch, branch, folder, message, policy, result)


def _commit(writer: GitWriter, batch: list[ImageWrite], branch: str, folder: str, message: str,
            policy: Policy | None, result: WriteBackResult) -> list[WrittenImage]:
    file = file_of(folder, batch[0].environment)
    seen: list[dict[tuple[str, str], str | None]] = []

    def edit(text: str) -> str:  # re-run on the new tip when another pipeline pushed first
        new, olds = edit_file(text, file, batch, policy)
        seen.append(olds)
        return new

    sha = writer.commit_file_update(branch, file, edit, lambda: commit_message(batch, seen[-1], message))
    olds = seen[-1] if seen else {}
    if sha:
        result.revision = sha
        logger.info("committed %s to %s: %s", sha, branch, ", ".join(w.describe() for w in batch))
    out = []
    for w in batch:
        written = bool(sha) and olds.get(w.key) != w.image
        out.append(WrittenImage(environment=w.environment, target_type=w.target_type, target=w.target,
                                old=olds.get(w.key), new=w.image, file=file,
                                outcome="committed" if written else "unchanged",
                                revision=sha if written else None, branch=branch if written else None))
    return out


def _merge_request(writer: GitWriter, w: ImageWrite, branch: str, folder: str, message: str, gitlab: MergeRequestApi,
                   policy: Policy | None, result: WriteBackResult) -> WrittenImage:
    from prefect_gitops.adapters.gitlab import upsert_merge_request

    file = file_of(folder, w.environment)
    mr_branch = branch_for(w)
    seen: list[tuple[dict[tuple[str, str], str | None], str]] = []

    def edit(text: str) -> str:
        new, olds = edit_file(text, file, [w], policy)
        seen.append((olds, new))
        return new

    sha = writer.commit_file_update(branch, file, edit, lambda: commit_message([w], seen[-1][0], message),
                                    push_branch=mr_branch)
    olds, text = seen[-1]
    old = olds.get(w.key)
    if sha is None:  # `branch` already runs this image: nothing to review
        return WrittenImage(environment=w.environment, target_type=w.target_type, target=w.target, old=old,
                            new=w.image, outcome="unchanged", file=file)
    pushed = writer.pushed  # False: the branch already held this edit (its merge request is made sure of)
    description = merge_request_description(w, old, file, branch, text, message)
    url, created = upsert_merge_request(gitlab.api_url, gitlab.token, gitlab.project, source_branch=mr_branch,
                                        target_branch=branch, title=merge_request_title(w),
                                        description=description)
    result.merge_request_url = url
    if pushed or created:
        result.revision = sha
    logger.info("%s merge request %s for %s", "opened" if created else "updated", url, w.describe())
    return WrittenImage(environment=w.environment, target_type=w.target_type, target=w.target, old=old,
                        new=w.image, outcome="merge-request" if pushed or created else "unchanged", file=file,
                        revision=sha, branch=mr_branch, merge_request_url=url)
