"""The GitOps Rollout Defaults and GitOps Smoke Test Defaults blocks, named by the reconcile flow's
parameters, fill the sections a file leaves out, and what a file sets wins: real server (saved
blocks), real Git, the flow run in this process."""

from __future__ import annotations

import sys

from helpers import (
    GitRepo,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_state,
    run_reconcile_flow,
    set_deployment_job_variables,
    uid,
)

# passes unless the image name contains "bad"
CHECK = [sys.executable, "-c",
         "import os, sys; img = os.environ['SMOKE_IMAGE']; print('checking', img); sys.exit(3 if 'bad' in img else 0)"]


def _estate(tmp_path):
    u = uid()
    env, pool, flow = f"b{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1")
    create_deployment(flow, "a", pool)
    return u, env, f"{flow}/a", GitRepo(tmp_path / "gitops")


def test_rollout_defaults_block_sets_drift_handling_and_the_file_wins(tmp_path):
    from prefect_gitops.blocks import GitOpsRolloutDefaults

    u, env, a, repo = _estate(tmp_path)
    GitOpsRolloutDefaults(drift_mode="warn", drift_check_interval_seconds=0,
                          drift_full_read_interval_seconds=0).save(f"rollout-{u}")

    def reconcile():
        return run_reconcile_flow(environment=env, source_url=repo.url, rollout_defaults_block=f"rollout-{u}")

    # the file says nothing about drift: the block's policy applies
    repo.commit_env(env, {"deployments": {a: {"job_variables": {"image": "flows:2"}}}})
    state, report = reconcile()
    assert state.is_completed() and report["status"] == "applied", report
    assert read_state(env)[0].drift_check_interval_seconds == 0

    # drift mode warn, checked on every reconcile (without the block: correct, and no check due for 300 s)
    set_deployment_job_variables(a, {"image": "flows:hotfix"})
    state, report = reconcile()
    assert state.is_completed() and report["status"] == "drift-warned" and report["applied"] == 0, report
    assert [(c["key"], c["reason"], c["apply"]) for c in report["changes"]] == [("image", "drift", False)]
    assert deployment_job_variables(a) == {"image": "flows:hotfix"}

    # the file's own drift mode wins over the block's
    repo.commit_env(env, {"drift": {"mode": "correct"}, "deployments": {a: {"job_variables": {"image": "flows:2"}}}})
    state, report = reconcile()
    assert state.is_completed() and report["status"] == "applied", report
    assert [(c["key"], c["reason"], c["apply"]) for c in report["changes"]] == [("image", "drift", True)]
    assert deployment_job_variables(a) == {"image": "flows:2"}


def test_smoke_test_defaults_block_gates_new_images_and_the_file_wins(tmp_path):
    from prefect_gitops.blocks import GitOpsSmokeTestDefaults

    u, env, a, repo = _estate(tmp_path)
    GitOpsSmokeTestDefaults(policy={"kind": "process", "process": {"command": CHECK}}).save(f"smoke-{u}")

    def reconcile():
        return run_reconcile_flow(environment=env, source_url=repo.url, smoke_test_defaults_block=f"smoke-{u}")

    # the file says nothing about smoke tests: the block's policy tests the new image
    repo.commit_env(env, {"deployments": {a: {"job_variables": {"image": "flows:2"}}}})
    state, report = reconcile()
    assert state.is_completed() and report["status"] == "applied", report
    assert [(t["kind"], t["image"], t["result"]) for t in report["smoke_tests"]] == [("process", "flows:2", "passed")]
    assert deployment_job_variables(a) == {"image": "flows:2"}

    # an image that fails the block's smoke test is held back ...
    repo.commit_env(env, {"deployments": {a: {"job_variables": {"image": "flows:3-bad"}}}})
    state, report = reconcile()
    assert state.is_failed() and report["status"] == "failed" and report["applied"] == 0, report
    assert [(t["kind"], t["image"], t["result"]) for t in report["smoke_tests"]] == [("process", "flows:3-bad", "failed")]
    assert deployment_job_variables(a) == {"image": "flows:2"}

    # ... unless the file sets its own smoke_test
    repo.commit_env(env, {"smoke_test": {"kind": "none"}, "deployments": {a: {"job_variables": {"image": "flows:3-bad"}}}})
    state, report = reconcile()
    assert state.is_completed() and report["status"] == "applied" and report["smoke_tests"] == [], report
    assert deployment_job_variables(a) == {"image": "flows:3-bad"}
