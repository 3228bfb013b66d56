"""Prefect API faults between the reconcile and the server, injected by a real proxy (fault_proxy.py).

Transient faults (500, 503, 429 with Retry-After, a connection reset after the server did the work,
5 s of latency) at seeded random points are retried and the run converges; a fault that outlasts the
retries and a 4xx each end the run Failed with exactly what was applied recorded, the 4xx never
retried; the next run converges. CLI subprocesses talk to the proxy through PREFECT_API_URL.
Reduced count: one transient trial (5 faults, ~37 s) and the failing one (~44 s), measured at load 8 on
2 cores; PREFECT_GITOPS_FULL_TRIALS=1: six transient trials (~165 s there).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from fault_proxy import FaultProxy
from figures import record, trial_count
from helpers import GitRepo, create_deployment, create_pool, deployment_job_variables, pool_default, read_state, uid

TRANSIENT = ["500", "503", "429", "reset", "latency"]
DEPLOYMENTS = 6


def trial_seed(trial: int) -> int:
    """PREFECT_GITOPS_TRIAL_SEED=<seed printed by a failure> replays that trial (as trial 0)."""
    replay = os.environ.get("PREFECT_GITOPS_TRIAL_SEED")
    return int(replay) + trial if replay else random.randrange(1 << 30)


def _apply(proxy: FaultProxy, repo: GitRepo, env: str) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                           "--output", "json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": proxy.url})
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {done.returncode}\nstdout:{done.stdout}\nstderr:{done.stderr[-4000:]}") from None


class Environment:
    """One pool and a few deployments, their images set from Git."""

    def __init__(self, tmp_path):
        u = uid()
        self.env, self.pool, self.flow = f"faults{u}", f"k8s-{u}", f"etl-{u}"
        create_pool(self.pool, image_default="flows:0")
        self.ids = {f"{self.flow}/d{i}": create_deployment(self.flow, f"d{i}", self.pool, {"namespace": "keep"})
                    for i in range(DEPLOYMENTS)}
        self.repo = GitRepo(tmp_path / "gitops")

    def commit(self, image: str) -> str:
        return self.repo.commit_env(self.env, {
            "work_pools": {self.pool: {"job_variables": {"image": image}}},
            "deployments": {n: {"job_variables": {"image": image}} for n in self.ids}})

    def server_images(self) -> dict[str, object]:
        images: dict[str, object] = {n: deployment_job_variables(n).get("image") for n in self.ids}
        images[self.pool] = pool_default(self.pool, "image")
        return images

    def recorded(self) -> dict[str, tuple[object, bool]]:
        """The inventory's image entries: (value, applied)."""
        state, _ = read_state(self.env)
        entries = {n: keys["image"] for n, keys in state.inventory.deployments.items()}
        entries[self.pool] = state.inventory.work_pools[self.pool]["image"]
        return {n: (e.value, e.applied) for n, e in entries.items()}


def test_transient_faults_are_retried_and_the_run_converges(tmp_path):
    setup = Environment(tmp_path)
    for trial in range(trial_count(1, 6)):
        seed = trial_seed(trial)
        rng = random.Random(seed)
        # a run makes ~15 faultable requests (reads, the state, 7 writes): each kind once, at drawn points
        at = dict(zip(rng.sample(range(14), len(TRANSIENT)), rng.sample(TRANSIENT, len(TRANSIENT))))
        image = f"flows:t{trial}"
        sha = setup.commit(image)
        with FaultProxy(os.environ["PREFECT_API_URL"], at=at) as proxy:
            code, result = _apply(proxy, setup.repo, setup.env)
        why = f"seed {seed}, faults at {at}, seen {[(s.index, s.method, s.path, s.fault, s.status) for s in proxy.seen]}"
        converged = code == 0 and result["status"] == "applied" and set(setup.server_images().values()) == {image}
        record("api-fault", converged=converged, faults=proxy.faults(), retried=proxy.retried())
        assert converged, f"{why}: exit {code}, {result['status']}: {result['message']}"
        # every fault that did not answer was asked again (latency answers, late)
        assert proxy.retried() == sum(n for k, n in proxy.faults().items() if k != "latency"), why
        state, _ = read_state(setup.env)
        assert state.last_applied_revision == sha and not state.has_unfinished_writes(), why
        assert [h.outcome for h in state.history if h.revision == sha] == ["applied"], why
        assert set(setup.recorded().values()) == {(image, True)}, why


def test_a_500_on_the_environment_locks_limit_is_retried(tmp_path):
    # the lock's limit is read (and created when missing) before anything is written: a 500 there
    # (a server restarting its database connection) must not fail the run
    setup = Environment(tmp_path)
    limit_path = f"/api/v2/concurrency_limits/prefect-gitops-env-{setup.env}"
    faulted: list[str] = []

    def first_read_of_the_limit(method: str, path: str) -> bool:
        hit = method == "GET" and path == limit_path and not faulted
        if hit:
            faulted.append(path)
        return hit

    setup.commit("flows:lock")
    with FaultProxy(os.environ["PREFECT_API_URL"], rules=[(first_read_of_the_limit, "500")]) as proxy:
        code, result = _apply(proxy, setup.repo, setup.env)
    assert faulted == [limit_path], [(s.method, s.path) for s in proxy.seen]
    assert (code, result["status"]) == (0, "applied"), result["message"]
    assert proxy.retried() == 1 and len(proxy.requests("GET", limit_path)) >= 2
    assert set(setup.server_images().values()) == {"flows:lock"}
    record("api-fault", converged=True, faults=proxy.faults(), retried=proxy.retried())


def test_faults_that_outlast_the_retries_or_are_4xx_fail_the_run_cleanly(tmp_path):
    setup = Environment(tmp_path)
    unavailable, refused = f"{setup.flow}/d1", f"{setup.flow}/d4"
    paths = {n: f"/api/deployments/{setup.ids[n]}" for n in (unavailable, refused)}
    rules = [(lambda m, p: m == "PATCH" and p == paths[unavailable], "503-retry-after"),
             (lambda m, p: m == "PATCH" and p == paths[refused], "422")]
    sha = setup.commit("flows:2")
    with FaultProxy(os.environ["PREFECT_API_URL"], rules=rules) as faulty:
        code, result = _apply(faulty, setup.repo, setup.env)
    images, recorded = setup.server_images(), setup.recorded()
    state, _ = read_state(setup.env)
    with FaultProxy(os.environ["PREFECT_API_URL"]) as proxy:  # the faults are gone: the next run converges
        next_code, next_result = _apply(proxy, setup.repo, setup.env)
    next_state, _ = read_state(setup.env)
    clean = (code == 1 and result["status"] == "failed" and state.last_applied_revision != sha
             and all(recorded[n] == ("flows:2", images[n] == "flows:2") for n in images))
    converged = (next_code == 0 and set(setup.server_images().values()) == {"flows:2"}
                 and next_state.last_applied_revision == sha and not next_state.has_unfinished_writes())
    record("api-fault", converged=converged, faults=faulty.faults(), retried=faulty.retried(),
           failed_cleanly=int(clean))

    assert code == 1 and result["status"] == "failed", result
    # the client retried the unavailable one (Retry-After: 1, PREFECT_CLIENT_MAX_RETRIES=5); the 4xx once
    assert len(faulty.requests("PATCH", paths[unavailable])) == 6
    assert len(faulty.requests("PATCH", paths[refused])) == 1
    assert {n for n, i in images.items() if i != "flows:2"} == {unavailable, refused}
    errors = " ".join(e["message"] for e in result["errors"])
    assert repr(unavailable) in errors and repr(refused) in errors and "422" in errors, errors
    # exactly what was applied is recorded: each entry is marked applied iff the server has it
    assert all(recorded[n] == ("flows:2", images[n] == "flows:2") for n in images), (recorded, images)
    assert state.last_applied_revision != sha and state.has_unfinished_writes()
    assert [h.outcome for h in state.history if h.revision == sha] == ["partial"]
    assert clean
    # the next run writes only the two that were missing
    assert next_code == 0 and next_result["status"] == "applied" and next_result["applied"] == 2, next_result
    assert converged
    assert [h.outcome for h in next_state.history if h.revision == sha] == ["applied", "partial"]
