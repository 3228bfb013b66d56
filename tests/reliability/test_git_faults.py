"""Git faults from real repositories and real processes: the remote disappears between `ls-remote` and the
fetch, the cache is corrupted on disk, the followed ref is deleted on the remote.

Each trial runs `prefect-gitops apply` as a subprocess (its own Git cache, PREFECT_GITOPS_CACHE_DIR), reads
the deployment back from the server (nothing applied while the fault lasts), reads the condition back
through `prefect-gitops status --output json` (the reason and message say why), clears the fault and sees
the next apply converge. A corrupted cache is no failure at all: the apply removes the cache entry and
fetches again (adapters/git.py), so that trial asserts the same run converged.

Randomness is seeded (the seed is in every assertion message): which corruption each cache trial makes.
Trials: 1 remote-gone, 2 cache-corrupt, 1 ref-deleted (PREFECT_GITOPS_FULL_TRIALS=1: 3, 10 (every kind
twice), 3). Wall time: about 120 s at the reduced count on a machine loaded 4x over its 2 cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from figures import record, trial_count
from git_http_server import GitHttpServer
from helpers import GitRepo, create_deployment, create_pool, deployment_job_variables, read_state, uid

SEED = int(os.environ.get("PREFECT_GITOPS_TRIAL_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
TOKEN = "git-fault-token"


@pytest.fixture(scope="module")
def target():
    u = uid()
    pool, flow = f"gitfault-{u}", f"gitfault-{u}"
    create_pool(pool, image_default="flows:0")
    create_deployment(flow, "job", pool, {"namespace": "keep-me"})
    return f"{flow}/job"


def _desired(deployment: str, image: str) -> dict:
    return {"deployments": {deployment: {"job_variables": {"image": image}}}}


def _apply(env: str, cache: Path, *args: str, source: str, codes=(0,)) -> dict:
    """`prefect-gitops apply` in a process of its own; the source (with its token, if any) goes through
    PREFECT_GITOPS_SOURCE, never argv."""
    child = {**os.environ, "PREFECT_GITOPS_CACHE_DIR": str(cache), "PREFECT_GITOPS_SOURCE": source}
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--env", env, "--output", "json", *args],
                          capture_output=True, text=True, env=child, timeout=300)
    assert done.returncode in codes, f"seed {SEED}: exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout)


def _status(env: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "status", "--env", env, "--output", "json"],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _assert_source_failed(env: str, deployment: str, image_before: str | None, applied_before: str | None,
                          why: str) -> None:
    """Nothing applied (the server read back, the recorded revision unchanged); status says why."""
    assert deployment_job_variables(deployment).get("image") == image_before, f"seed {SEED}: something was applied"
    state = _status(env)
    assert state["last_applied_revision"] == applied_before, f"seed {SEED}"
    assert state["condition"]["ready"] is False, f"seed {SEED}: {state['condition']}"
    assert state["condition"]["reason"] == "SourceFailed", f"seed {SEED}: {state['condition']}"
    assert why in state["condition"]["message"], f"seed {SEED}: {state['condition']}"
    assert TOKEN not in json.dumps(state)


def _assert_converged(env: str, deployment: str, image: str, sha: str) -> None:
    assert deployment_job_variables(deployment) == {"namespace": "keep-me", "image": image}, f"seed {SEED}"
    state, _ = read_state(env)
    assert state.last_applied_revision == sha and not state.has_unfinished_writes(), f"seed {SEED}"
    assert state.condition.ready, f"seed {SEED}: {state.condition}"


# -- (a) the remote disappears between ls-remote and the fetch ---------------------------------------

class VanishingRemote(GitHttpServer):
    """Serves `<root>/gitops.git`; once armed, moves the bare repository away right after answering the
    ls-remote (protocol v2: the first POST to git-upload-pack, the ls-refs command). The move happens
    before the answer is sent, so the client's fetch that follows finds no repository."""

    def __init__(self, root: Path):
        super().__init__(root, token=TOKEN)
        self.armed = False
        self.bare = root / "gitops.git"
        self.away = root.parent / "moved-away.git"

    def _record(self, entry: dict) -> None:
        super()._record(entry)
        if self.armed and entry["method"] == "POST" and entry["path"].endswith("/git-upload-pack"):
            self.armed = False
            self.bare.rename(self.away)

    def restore(self) -> None:
        self.away.rename(self.bare)


def test_remote_disappears_between_ls_remote_and_fetch(target, tmp_path):
    trials = trial_count(1, 3)
    work = GitRepo(tmp_path / "work")
    work.commit_env("unused", {}, "start")
    (tmp_path / "srv").mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work.root), str(tmp_path / "srv" / "gitops.git")], check=True)
    work.git("remote", "add", "origin", str(tmp_path / "srv" / "gitops.git"))
    env, cache = f"gone{uid()}", tmp_path / "cache"
    with VanishingRemote(tmp_path / "srv") as server:
        source = server.url_for("gitops").replace("http://", f"http://oauth2:{TOKEN}@")
        image, applied = None, None
        for trial in range(1, trials + 1):
            new_image = f"flows:gone-{trial}"
            sha = work.commit_env(env, _desired(target, new_image))
            work.git("push", "-q", "origin", "main")
            server.armed = True
            report = _apply(env, cache, source=source, codes=(1,))
            assert not server.armed, f"seed {SEED}: the remote was never asked"
            assert report["status"] == "failed" and report.get("applied", 0) == 0, f"seed {SEED}: {report}"
            _assert_source_failed(env, target, image, applied, f"fetch revision {sha}")
            server.restore()
            report = _apply(env, cache, source=source)
            assert report["status"] == "applied", f"seed {SEED}: {report}"
            _assert_converged(env, target, new_image, sha)
            image, applied = new_image, sha
            record("git-fault", converged=True, faults={"remote-gone": 1}, failed_cleanly=1)


# -- (b) the cache is corrupted on disk ---------------------------------------------------------------

def _objects(repo: Path) -> list[Path]:
    return [p for p in (repo / ".git" / "objects").rglob("*")
            if p.is_file() and p.parent.name not in ("info",) and p.suffix != ".idx"]


def _garbage_in_objects(repo: Path, rng: random.Random) -> None:
    for path in _objects(repo):
        size = path.stat().st_size
        path.chmod(0o644)
        path.write_bytes(rng.randbytes(max(size, 16)))


def _truncate_objects(repo: Path, rng: random.Random) -> None:
    for path in _objects(repo):  # a write cut short: the first part of each object or pack only
        data = path.read_bytes()
        path.chmod(0o644)
        path.write_bytes(data[: rng.randrange(1, max(len(data) // 2, 2))])


CORRUPTIONS = {
    "garbage-objects": _garbage_in_objects,
    "truncated-objects": _truncate_objects,
    "stale-index-lock": lambda repo, rng: (repo / ".git" / "index.lock").write_text(""),
    "stale-shallow-lock": lambda repo, rng: (repo / ".git" / "shallow.lock").write_text(""),
    "missing-head": lambda repo, rng: (repo / ".git" / "HEAD").unlink(),
}


def _cache_entry(cache: Path) -> Path:
    entries = [p for p in cache.iterdir() if p.is_dir() and len(p.name) == 16]  # not parsed/, not *.history.git
    assert len(entries) == 1, entries
    return entries[0]


def test_corrupted_cache_is_fetched_again(target, tmp_path):
    from prefect_gitops.adapters.git import GitSource

    rng = random.Random(SEED)
    kinds = sorted(CORRUPTIONS)
    rng.shuffle(kinds)
    trials = trial_count(2, 2 * len(kinds))  # CI: two kinds, which ones rotates with the seed
    repo = GitRepo(tmp_path / "gitops")
    env, cache = f"cache{uid()}", tmp_path / "cache"
    for trial in range(trials):
        kind = kinds[trial % len(kinds)]
        cached = repo.commit_env(env, _desired(target, f"flows:cached-{trial}"))
        with GitSource(repo.url, cache_dir=cache).checkout(cached):
            pass  # the cache now holds `cached`, as a previous reconcile leaves it
        image = f"flows:corrupt-{trial}"
        sha = repo.commit_env(env, _desired(target, image))  # the apply fetches this into the corrupt cache
        CORRUPTIONS[kind](_cache_entry(cache), rng)
        report = _apply(env, cache, source=repo.url)
        assert report["status"] == "applied", f"seed {SEED}, corruption {kind}: {report}"
        _assert_converged(env, target, image, sha)
        assert not (_cache_entry(cache) / ".git" / "index.lock").exists(), f"seed {SEED}, corruption {kind}"
        record("git-fault", converged=True, faults={"cache-corrupt": 1})


# -- (c) the followed ref is deleted on the remote ----------------------------------------------------

def test_deleted_ref_applies_nothing_until_it_is_back(target, tmp_path):
    trials = trial_count(1, 3)
    repo = GitRepo(tmp_path / "gitops")
    env, cache = f"ref{uid()}", tmp_path / "cache"
    repo.commit_env(env, _desired(target, "flows:ref-0"))
    repo.git("branch", "live")
    report = _apply(env, cache, "--ref", "live", source=repo.url)
    assert report["status"] == "applied", report
    image, applied = "flows:ref-0", report["revision"]
    for trial in range(1, trials + 1):
        new_image = f"flows:ref-{trial}"
        sha = repo.commit_env(env, _desired(target, new_image))  # on main; live is deleted
        repo.git("branch", "-D", "live")
        report = _apply(env, cache, "--ref", "live", source=repo.url, codes=(1,))
        assert report["status"] == "failed", f"seed {SEED}: {report}"
        _assert_source_failed(env, target, image, applied, "ref 'live' does not exist")
        repo.git("branch", "live", sha)  # the ref is back, at a new revision
        report = _apply(env, cache, "--ref", "live", source=repo.url)
        assert report["status"] == "applied", f"seed {SEED}: {report}"
        _assert_converged(env, target, new_image, sha)
        image, applied = new_image, sha
        record("git-fault", converged=True, faults={"ref-deleted": 1}, failed_cleanly=1)
