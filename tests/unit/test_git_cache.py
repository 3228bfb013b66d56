"""The Git cache is only a copy: a broken cache entry is fetched again, and git never leaves it for the
directories above (real repositories, no Prefect)."""

from __future__ import annotations

import subprocess

from helpers import GitRepo
from prefect_gitops.adapters.git import GitSource


def test_a_cache_without_head_inside_a_repository_leaves_that_repository_alone(tmp_path):
    # a user's home under Git (dotfiles) holding ~/.cache: an entry git does not recognise (HEAD
    # missing) must not make git find the home repository and check out / clean *that*
    home = GitRepo(tmp_path / "home")
    home_head = home.commit("dotfiles", bashrc="alias ll='ls -l'\n")
    (home.root / "notes.txt").write_text("untracked, precious\n")
    gitops = GitRepo(tmp_path / "gitops")
    first = gitops.commit_env("qa", {"deployments": {}})
    cache = home.root / ".cache" / "prefect-gitops"
    with GitSource(gitops.url, cache_dir=cache).checkout(first):
        pass
    entry = next(p for p in cache.iterdir() if p.is_dir() and len(p.name) == 16)
    (entry / ".git" / "HEAD").unlink()
    second = gitops.commit_env("qa", {"work_pools": {}})

    with GitSource(gitops.url, cache_dir=cache, attempts=1).checkout(second) as tree:
        assert (tree / "environments" / "qa.yaml").read_text() == "work_pools: {}\n"
    assert (home.root / "notes.txt").read_text() == "untracked, precious\n"
    assert home.git("rev-parse", "HEAD") == home_head
    assert subprocess.run(["git", "-C", str(home.root), "cat-file", "-e", f"{second}^{{commit}}"],
                          capture_output=True).returncode != 0  # nothing was fetched into the home repository
