"""Git write side: commit image updates back to the GitOps repo.

`prefect-gitops promote --from qa --to prod` writes qa's images into
`environments/prod.yaml` and pushes, so Git stays the source of truth. The
edit itself is a pure text function (`prefect_gitops.yaml_edit.set_images`);
`GitWriter` clones a branch shallowly, applies such an edit, commits and
pushes, re-applying the edit on the new tip if someone pushed meanwhile.
git runs through `git_runner.GitRunner`, so a writer made by a source's
`writer()` pushes with the source's credentials (never in argv, URLs or
`.git/config`) and fails with the same transient/permanent split.
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Callable

from prefect_gitops.adapters.git_runner import Credentials, GitRunner
from prefect_gitops.adapters.url_credentials import credentials_for
from prefect_gitops.errors import GitOpsError, PermanentError, TransientError

PUSH_ATTEMPTS = 3

# The remote moved between our clone and our push.
_CONFLICT = re.compile(
    r"\[rejected\].*\((fetch first|non-fast-forward|stale info)\)|"
    r"\[remote rejected\].*\((cannot lock ref|failed to update ref|incorrect old value)",
    re.IGNORECASE,
)


class GitWriter:
    """Commits a file update to one branch of a Git repository and pushes it.

    `credentials` are those of the source the repository is read with (see
    `GitSource.writer()`); None leaves authentication to the URL and the user's git setup.
    """

    def __init__(self, url: str, *, credentials: Credentials | None = None, workdir_root: Path | None = None,
                 timeout: float = 60, extra_env: dict[str, str] | None = None,
                 author_name: str = "prefect-gitops", author_email: str = "prefect-gitops@localhost",
                 author: tuple[str, str] | None = None):
        if credentials is None:  # a password in the URL goes to git through the environment, not argv
            url, credentials = credentials_for(url)
        self.url = url
        self.workdir_root = Path(workdir_root) if workdir_root else None
        self.timeout = timeout
        self.author_name = author_name
        self.author_email = author_email
        # (name, email) the commits are made for (a pipeline's user); the committer stays author_name
        self.author = author
        self.pushed = False  # whether the last commit_file_update pushed
        # a token that cannot push is a scope problem: say so in "rejected the token" errors
        self.runner = GitRunner(url, credentials=credentials, timeout=timeout, extra_env=extra_env,
                                scope="write_repository")

    @property
    def display(self) -> str:
        return self.runner.display

    def commit_file_update(self, branch: str, path: str, edit: Callable[[str], str], message: str | Callable[[], str], *,
                           push_branch: str | None = None) -> str | None:
        """Apply `edit` to `path` on `branch`, commit and push.

        Returns the new commit's full SHA, or None when `edit` changed nothing
        (no commit is made). When the push is rejected because the branch moved,
        the new tip is fetched and `edit` re-applied, PUSH_ATTEMPTS times in all.

        With `push_branch` (a merge request's branch, which prefect-gitops owns), the commit on top
        of `branch` replaces `push_branch` (a forced push), unless `push_branch` already holds the
        same files: then nothing is pushed and its tip is returned. `pushed` tells, after each call,
        whether it pushed. `message` may be a function, called
        after `edit` (a message that says what the edit found).
        """
        self.pushed = False
        relative = self._relative(path)
        if self.workdir_root is not None:
            self.workdir_root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="prefect-gitops-write-", dir=self.workdir_root,
                                         ignore_cleanup_errors=True) as tmp:
            repo = Path(tmp) / "repo"
            self._git(["clone", "-q", "--depth", "1", "--branch", branch, "--single-branch", "--no-tags",
                       self.url, str(repo)], what=f"clone branch {branch!r} of")
            for attempt in range(1, PUSH_ATTEMPTS + 1):
                if attempt > 1:
                    self._git(["-C", str(repo), "fetch", "-q", "--depth", "1", "--no-tags", "origin",
                               f"+refs/heads/{branch}:refs/remotes/origin/{branch}"],
                              what=f"fetch branch {branch!r} of")
                    self._git(["-C", str(repo), "reset", "-q", "--hard", f"refs/remotes/origin/{branch}"],
                              what=f"reset to the tip of branch {branch!r} of", local=True)
                sha = self._commit(repo, branch, relative, edit, message)
                if sha is None:
                    return None
                if push_branch is not None:
                    return self._replace_branch(repo, push_branch, sha)
                try:
                    self._git(["-C", str(repo), "push", "-q", "--no-verify", "origin", f"HEAD:refs/heads/{branch}"],
                              what=f"push to branch {branch!r} of")
                except GitOpsError as exc:
                    if _CONFLICT.search(str(exc)):  # someone pushed first: edit their tip instead
                        continue
                    raise
                self.pushed = True
                return sha
        raise TransientError(
            f"cannot push to branch {branch!r} of {self.display}: it kept moving; "
            f"gave up after {PUSH_ATTEMPTS} attempts")

    def _replace_branch(self, repo: Path, push_branch: str, sha: str) -> str:
        remote = f"refs/heads/{push_branch}"
        listed = self._git(["-C", str(repo), "ls-remote", "origin", remote], what=f"look up branch {push_branch!r} in")
        if listed.strip():
            self._git(["-C", str(repo), "fetch", "-q", "--depth", "1", "--no-tags", "origin",
                       f"+{remote}:refs/remotes/origin/{push_branch}"], what=f"fetch branch {push_branch!r} of")
            tree = self._git(["-C", str(repo), "rev-parse", f"{sha}^{{tree}}"], what="read the tree of", local=True)
            theirs = self._git(["-C", str(repo), "rev-parse", f"refs/remotes/origin/{push_branch}^{{tree}}"],
                               what="read the tree of", local=True)
            if tree.strip() == theirs.strip():  # already there: no new commit to review
                return self._git(["-C", str(repo), "rev-parse", f"refs/remotes/origin/{push_branch}"],
                                 what="read the tip of", local=True).strip()
        self._git(["-C", str(repo), "push", "-q", "--no-verify", "--force", "origin", f"HEAD:{remote}"],
                  what=f"push to branch {push_branch!r} of")
        self.pushed = True
        return sha

    def _relative(self, path: str) -> str:
        parts = Path(path).parts
        if not path or Path(path).is_absolute() or ".." in parts or ".git" in parts:
            raise PermanentError(f"invalid file path {path!r}: give a path inside the repository")
        return Path(path).as_posix()

    def _commit(self, repo: Path, branch: str, path: str, edit: Callable[[str], str],
                message: str | Callable[[], str]) -> str | None:
        file = repo / path
        if not file.resolve().is_relative_to(repo.resolve()) or not file.is_file():
            raise PermanentError(f"{path} does not exist on branch {branch!r} of {self.display}")
        try:
            with open(file, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except UnicodeDecodeError:
            raise PermanentError(f"{path} on branch {branch!r} of {self.display} is not UTF-8 text") from None
        new = edit(text)
        if new == text:
            return None
        with open(file, "w", encoding="utf-8", newline="") as handle:
            handle.write(new)
        if not isinstance(message, str):
            message = message()
        identity = ["-c", f"user.name={self.author_name}", "-c", f"user.email={self.author_email}",
                    "-c", "commit.gpgsign=false"]
        self._git(["-C", str(repo), "add", "--", path], what=f"stage {path} in a clone of", local=True)
        self._git(["-C", str(repo), *identity, "commit", "-q", "--no-verify", "-m", message],
                  what=f"commit {path} in a clone of", local=True, identity=True)
        return self._git(["-C", str(repo), "rev-parse", "HEAD"], what="read the new commit of", local=True).strip()

    def _git(self, args: list[str], *, what: str, local: bool = False, identity: bool = False) -> str:
        # GIT_AUTHOR_*/GIT_COMMITTER_* from the caller's environment would beat -c user.name/user.email
        author_name, author_email = self.author or (self.author_name, self.author_email)
        env = dict(GIT_AUTHOR_NAME=author_name, GIT_AUTHOR_EMAIL=author_email,
                   GIT_COMMITTER_NAME=self.author_name, GIT_COMMITTER_EMAIL=self.author_email) if identity else None
        return self.runner.run(args, what=what, local=local, env=env)
