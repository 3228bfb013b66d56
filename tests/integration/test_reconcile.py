"""End to end against a real Prefect server and real Git repositories, through the CLI as users run it."""

from __future__ import annotations

import pytest

from helpers import (
    GitRepo,
    cli_json,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_state,
    set_deployment_job_variables,
    set_pool_default,
    uid,
)


@pytest.fixture
def estate(tmp_path):
    """A pool with two deployments, and a GitOps repo describing them."""
    u = uid()
    env, pool, flow = f"e{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="registry.example.com/flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    create_deployment(flow, "hourly", pool, {})
    repo = GitRepo(tmp_path / "gitops")
    return dict(env=env, pool=pool, daily=f"{flow}/daily", hourly=f"{flow}/hourly", repo=repo)


def desired(e, pool_image="registry.example.com/flows:1.4.2", daily_image="registry.example.com/flows:1.4.3",
            drift=None, extra_daily=None):
    daily = {"image": daily_image, "env": {"LOG_LEVEL": "debug"}}
    daily.update(extra_daily or {})
    doc = {
        "work_pools": {e["pool"]: {"job_variables": {"image": pool_image}}},
        "deployments": {e["daily"]: {"job_variables": daily}},
    }
    if drift:
        doc["drift"] = drift
    return doc


def flags(e, *more):
    return ("--source", e["repo"].url, "--env", e["env"], *more)


def test_plan_apply_noop_and_git_change(estate):
    e = estate
    sha1 = e["repo"].commit_env(e["env"], desired(e))

    code, planned = cli_json("plan", *flags(e), check_codes=(2,))
    assert planned["revision"] == sha1 and planned["environment"] == e["env"] and planned["errors"] == []
    got = {(c["target_type"], c["target"], c["key"], c["action"], c["reason"]) for c in planned["changes"]}
    assert got == {
        ("work_pool", e["pool"], "image", "set", "desired"),
        ("deployment", e["daily"], "image", "set", "desired"),
        ("deployment", e["daily"], "env", "set", "desired"),
    }
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs"}  # plan wrote nothing

    code, applied = cli_json("apply", *flags(e))
    assert applied["applied"] == 3 and applied["flow_run_id"] and applied["status"] == "applied"
    assert pool_default(e["pool"], "image") == "registry.example.com/flows:1.4.2"
    assert deployment_job_variables(e["daily"]) == {
        "namespace": "jobs", "image": "registry.example.com/flows:1.4.3", "env": {"LOG_LEVEL": "debug"}}
    assert deployment_job_variables(e["hourly"]) == {}

    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha1 == state.last_attempted_revision
    assert len(state.history) == 1 and state.history[0].flow_run_id == applied["flow_run_id"]
    assert state.inventory.work_pools[e["pool"]]["image"].previous == "registry.example.com/flows:1.0.0"

    # a second apply writes nothing
    code, again = cli_json("apply", *flags(e))
    assert again["applied"] == 0 and again["status"] in ("up-to-date", "in-sync")
    assert len(read_state(e["env"])[0].history) == 1
    code, planned = cli_json("plan", *flags(e), check_codes=(0,))
    assert planned["changes"] == []

    # Git moves: only the changed key is applied
    sha2 = e["repo"].commit_env(e["env"], desired(e, daily_image="registry.example.com/flows:1.5.0"))
    code, applied = cli_json("apply", *flags(e))
    assert applied["revision"] == sha2 and applied["applied"] == 1
    assert [(c["target"], c["key"], c["old"], c["new"]) for c in applied["changes"]] == [
        (e["daily"], "image", "registry.example.com/flows:1.4.3", "registry.example.com/flows:1.5.0")]
    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha2 and len(state.history) == 2
