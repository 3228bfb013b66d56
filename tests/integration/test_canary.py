"""Canary smoke tests and the post-apply check, run by a real `prefect worker` process."""

from __future__ import annotations

import pytest

from helpers import (
    GitRepo,
    cli_json,
    create_canary_deployment,
    create_canary_pool,
    deployment_job_variables,
    flow_runs_of,
    process_worker,
    read_artifacts,
    read_events,
    read_state,
    uid,
)


@pytest.fixture(scope="module")
def canary_pool(tmp_path_factory):
    pool = f"canary-{uid()}"
    create_canary_pool(pool)
    with process_worker(pool, tmp_path_factory.mktemp("worker") / "worker.log"):
        yield pool


@pytest.fixture
def estate(tmp_path, canary_pool):
    u = uid()
    name = f"svc-{u}"
    create_canary_deployment(name, canary_pool, {"image": "flows:1"})
    return dict(env=f"c{u}", dep=f"canary-target/{name}", pool=canary_pool, repo=GitRepo(tmp_path / "gitops"),
                marker=str(tmp_path / "runs.txt"))


def apply(e, codes=(0,)):
    return cli_json("apply", "--source", e["repo"].url, "--env", e["env"], check_codes=codes)[1]


def test_canary_pass_and_fail(estate):
    e = estate
    smoke = {"kind": "canary", "timeout_seconds": 120, "canary": {"parameters": {"marker": e["marker"]}}}
    e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {e["dep"]: {"job_variables": {"image": "flows:2"}}}})
    result = apply(e)
    assert result["smoke_tests"][0]["result"] == "passed" and result["applied"] == 1
    assert deployment_job_variables(e["dep"]) == {"image": "flows:2"}
    # the canary ran the candidate image through a per-run job variable, and is tagged as a canary
    assert open(e["marker"]).read().splitlines() == ["flows:2"]
    runs = flow_runs_of(e["dep"])
    assert len(runs) == 1 and "prefect-gitops-canary" in runs[0].tags and runs[0].job_variables == {"image": "flows:2"}

    e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {e["dep"]: {"job_variables": {"image": "flows:3-bad"}}}})
    result = apply(e, codes=(1,))
    assert result["smoke_tests"][0]["result"] == "failed" and result["applied"] == 0
    assert deployment_job_variables(e["dep"]) == {"image": "flows:2"}
    assert "canary target failed" in result["smoke_tests"][0]["log_tail"]
    assert read_events("prefect-gitops.smoke-test.failed", e["env"])[0]["payload"]["image"] == "flows:3-bad"


def test_failed_post_apply_check_rolls_back(estate):
    e = estate
    post = {"post_apply": {"kind": "canary", "timeout_seconds": 120}}
    sha1 = e["repo"].commit_env(e["env"], {"smoke_test": post, "deployments": {e["dep"]: {"job_variables": {"image": "flows:2"}}}})
    assert apply(e)["post_apply"][e["dep"]]["result"] == "passed"

    sha2 = e["repo"].commit_env(e["env"], {"smoke_test": post, "deployments": {e["dep"]: {"job_variables": {"image": "flows:2-bad"}}}})
    result = apply(e, codes=(1,))
    assert result["post_apply"][e["dep"]]["result"] == "failed"
    assert result["rolled_back"]["reason"] == "automatic" and result["rolled_back"]["from_revision"] == sha2
    assert deployment_job_variables(e["dep"]) == {"image": "flows:2"}  # previous value restored
    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha1 and state.history[0].outcome == "rolled-back"
    assert state.inventory.deployments[e["dep"]]["image"].value == "flows:2"
    assert read_events("prefect-gitops.rollback", e["env"])[0]["payload"]["revision"] == sha2
    assert "Rolled back" in read_artifacts(f"gitops-{e['env']}")[0].data

    # Git unchanged: the next reconcile reports the rollback, exits 0 and writes nothing
    again = apply(e)
    assert again["status"] == "rolled-back" and deployment_job_variables(e["dep"]) == {"image": "flows:2"}
