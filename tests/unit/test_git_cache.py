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


def test_a_corrupted_history_cache_is_fetched_again(tmp_path):
    # the history gates ask ancestry of the complete (bare) cache; garbage in its objects (a killed
    # fetch, a full disk) must not make every later reconcile fail: the entry is fetched anew
    gitops = GitRepo(tmp_path / "gitops")
    first = gitops.commit_env("qa", {"deployments": {}})
    second = gitops.commit_env("qa", {"work_pools": {}})
    cache = tmp_path / "cache"
    assert GitSource(gitops.url, cache_dir=cache).descends_from(second, first)
    history = next(cache.glob("*.history.git"))
    objects = [p for p in (history / "objects").rglob("*") if p.is_file()]
    assert objects
    for path in objects:
        path.chmod(0o644)
        path.write_bytes(b"not a git object")
    third = gitops.commit_env("qa", {"work_pools": {}, "deployments": {}})

    source = GitSource(gitops.url, cache_dir=cache, attempts=1)
    assert source.descends_from(third, first)
    assert not source.descends_from(first, third)
