"""`GitSource.descends_from`: ancestry asked of real repositories (file://), no server. Checkouts are
shallow, so the answer comes from the source's complete history cache; a commit the remote no longer
has in the new revision's history is no ancestor."""

from __future__ import annotations

from helpers import GitRepo

from prefect_gitops.adapters.git import GitSource


def test_descendants_rewrites_and_older_commits(tmp_path):
    repo = GitRepo(tmp_path / "gitops")
    first = repo.commit_env("qa", {"deployments": {}}, message="first")
    second = repo.commit_env("qa", {"work_pools": {}}, message="second")
    source = GitSource(repo.url, cache_dir=tmp_path / "cache")
    with source.checkout(second):  # the reconcile's shallow checkout comes first: no history in it
        pass
    assert source.descends_from(second, first) and source.descends_from(second, second)
    assert not source.descends_from(first, second)  # an older commit does not descend from a newer one

    repo.git("checkout", "-q", "--orphan", "rewrite")
    unrelated = repo.commit_env("qa", {"drift": {"mode": "warn"}}, message="force-pushed")
    repo.git("branch", "-f", "main", unrelated)
    repo.git("checkout", "-q", "main")
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    assert not source.descends_from(unrelated, second)  # in the cache, but not an ancestor
    fresh = GitSource(repo.url, cache_dir=tmp_path / "fresh-cache")
    assert not fresh.descends_from(unrelated, first)  # gone from the remote: counts as rewritten
