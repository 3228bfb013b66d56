"""Smoke tests of kind process, the gate, and manual rollback: real server, real Git, real subprocesses."""

from __future__ import annotations

import sys

import pytest

from helpers import (
    GitRepo,
    cli,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_artifacts,
    read_events,
    read_state,
    server_snapshot,
    uid,
)

# passes unless the image name contains "bad"; says which image it tested
CHECK = [sys.executable, "-c",
         "import os, sys; img = os.environ['SMOKE_IMAGE']; print('checking', img); "
         "print('boom: cannot start' if 'bad' in img else 'ok'); sys.exit(3 if 'bad' in img else 0)"]


@pytest.fixture
def estate(tmp_path):
    return make_estate(tmp_path)


def make_estate(tmp_path):
    u = uid()
    env, pool, flow = f"s{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "a", pool)
    create_deployment(flow, "b", pool)
    return dict(env=env, pool=pool, a=f"{flow}/a", b=f"{flow}/b", repo=GitRepo(tmp_path / "gitops"), tmp=tmp_path)


def doc(e, a="flows:2.0.0", b="flows:2.0.0", gate=None, **smoke):
    policy = {"kind": "process", "process": {"command": CHECK}, **smoke}
    if gate:
        policy["gate"] = gate
    return {"smoke_test": policy, "deployments": {e["a"]: {"job_variables": {"image": a}},
                                                  e["b"]: {"job_variables": {"image": b}}}}


def apply(e, *more, codes=(0,)):
    return cli_json_here("apply", "--source", e["repo"].url, "--env", e["env"], *more, check_codes=codes)[1]


def test_process_smoke_test_passes_then_applies(estate):
    e = estate
    e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.0", b="flows:2.1.0"))
    result = apply(e)
    assert result["applied"] == 2
    assert sorted((t["image"], t["result"]) for t in result["smoke_tests"]) == [
        ("flows:2.0.0", "passed"), ("flows:2.1.0", "passed")]
    assert deployment_job_variables(e["a"]) == {"image": "flows:2.0.0"}
    md = read_artifacts(f"gitops-{e['env']}")[0].data
    assert "do not isolate the image" in md

    # same images again, only env added: when=image-changed means no test runs
    d = doc(e, a="flows:2.0.0", b="flows:2.1.0")
    d["deployments"][e["a"]]["job_variables"]["env"] = {"X": "1"}
    e["repo"].commit_env(e["env"], d)
    result = apply(e)
    assert result["applied"] == 1 and result["smoke_tests"] == []


def test_failed_smoke_test_holds_everything_back_by_default(estate):
    e = estate
    e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.0", b="flows:2.0.0-bad"))
    before = server_snapshot([e["pool"]], [e["a"], e["b"]])
    result = apply(e, codes=(1,))
    assert result["status"] == "failed" and result["applied"] == 0 and result["held"] == 2
    assert server_snapshot([e["pool"]], [e["a"], e["b"]]) == before
    failed = [t for t in result["smoke_tests"] if t["result"] == "failed"]
    assert failed[0]["image"] == "flows:2.0.0-bad" and "boom: cannot start" in failed[0]["log_tail"]

    md = read_artifacts(f"gitops-{e['env']}")[0].data
    assert "held back" in md and "boom: cannot start" in md and "exit code 3" in md
    events = read_events("prefect-gitops.smoke-test.failed", e["env"], flow_run_id=result["flow_run_id"])
    assert [(ev["payload"]["image"], ev["payload"]["targets"]) for ev in events] == [("flows:2.0.0-bad", [e["b"]])]
    state, _ = read_state(e["env"])
    assert state.last_applied_revision is None and state.condition.reason == "SmokeTestFailed"


def test_per_target_gate_applies_what_passed(estate):
    e = estate
    e["repo"].commit_env(e["env"], doc(e, a="flows:2.0.0", b="flows:2.0.0-bad", gate="per-target"))
    result = apply(e, codes=(1,))
    assert result["applied"] == 1 and result["held"] == 1
    assert deployment_job_variables(e["a"]) == {"image": "flows:2.0.0"}
    assert deployment_job_variables(e["b"]) == {}
    state, _ = read_state(e["env"])
    assert state.last_applied_revision is None  # the revision is not applied until every change is


def test_timeout_and_overrides(estate):
    e = estate
    d = doc(e, a="flows:3", b="flows:4", timeout_seconds=2)
    d["smoke_test"]["process"]["command"] = [sys.executable, "-c", "import time; time.sleep(30)"]
    d["deployments"][e["b"]]["smoke_test"] = {"kind": "none"}  # b opts out
    e["repo"].commit_env(e["env"], d)
    result = apply(e, codes=(1,))
    assert [(t["targets"], t["result"]) for t in result["smoke_tests"]] == [([e["a"]], "timeout")]
    assert deployment_job_variables(e["a"]) == {}


def test_bad_smoke_policy_is_refused_before_any_test_runs(estate):
    e = estate
    marker = e["tmp"] / "ran"
    d = doc(e)
    d["smoke_test"]["process"]["command"] = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    d["deployments"][e["b"]]["smoke_test"] = {"kind": "process", "timeout_seconds": -5}
    d["work_pools"] = {e["pool"]: {"job_variables": {"image": "flows:9"}, "smoke_test": {"kind": "canary"}}}
    e["repo"].commit_env(e["env"], d)
    before = server_snapshot([e["pool"]], [e["a"], e["b"]])
    result = apply(e, codes=(1,))
    messages = {err["key"]: err["message"] for err in result["errors"]}
    assert any("timeout_seconds" in k for k in messages), messages
    assert not marker.exists()
    assert server_snapshot([e["pool"]], [e["a"], e["b"]]) == before
    # with the range error fixed, the pool's canary without a deployment is refused by name
    d["deployments"][e["b"]]["smoke_test"] = {"kind": "none"}
    e["repo"].commit_env(e["env"], d)
    result = apply(e, codes=(1,))
    assert result["errors"][0]["key"] == f"work_pools.{e['pool']}.smoke_test"
    assert "needs canary.deployment" in result["errors"][0]["message"]
    assert not marker.exists()


def test_manual_rollback_by_revision_and_by_steps(estate):
    e = estate
    r1, r2, r3 = rollback_by_revision_holds_reconciles(e)

    # --force re-applies r3
    result = apply(e, "--force")
    assert result["status"] == "applied" and deployment_job_variables(e["a"]) == {"image": "flows:3"}

    # one step back from r3 is r2
    code, out = cli_json_here("rollback", "--env", e["env"], "--steps", "1")
    assert out["revision"] == r2
    assert deployment_job_variables(e["a"]) == {"image": "flows:2"}
    assert deployment_job_variables(e["b"]) == {"image": "flows:1"}
    assert pool_default(e["pool"], "image") == "flows:2"

    # Git moves to a new revision: reconciles resume
    e["repo"].commit_env(e["env"], _plain(e, "flows:4", "flows:4"))
    result = apply(e)
    assert result["status"] == "applied" and deployment_job_variables(e["b"]) == {"image": "flows:4"}
    state, _ = read_state(e["env"])
    assert state.rolled_back is None and state.condition.ready

    cli("rollback", "--env", e["env"], "--to", "abcdef0", check_codes=(1,))


def _plain(e, a, b):
    return {"deployments": {e["a"]: {"job_variables": {"image": a}}, e["b"]: {"job_variables": {"image": b}}},
            "work_pools": {e["pool"]: {"job_variables": {"image": a}}}}


def rollback_by_revision_holds_reconciles(e) -> tuple[str, str, str]:
    """Three revisions applied, then a rollback to the first: its values are back, and reconciles of
    Git's (unchanged) revision hold, report rolled back and write nothing. The three revisions."""
    r1 = e["repo"].commit_env(e["env"], _plain(e, "flows:1", "flows:1"))
    apply(e)
    r2 = e["repo"].commit_env(e["env"], _plain(e, "flows:2", "flows:1"))
    apply(e)
    r3 = e["repo"].commit_env(e["env"], _plain(e, "flows:3", "flows:3"))
    apply(e)

    code, out = cli_json_here("rollback", "--env", e["env"], "--to", r1[:10])
    assert out["status"] == "rolled-back" and out["revision"] == r1
    assert deployment_job_variables(e["a"]) == {"image": "flows:1"}
    assert deployment_job_variables(e["b"]) == {"image": "flows:1"}
    assert pool_default(e["pool"], "image") == "flows:1"

    # Git still points at r3: reconciles hold, report rolled back, exit 0, write nothing
    result = apply(e)
    assert result["status"] == "rolled-back" and result["applied"] == 0
    assert deployment_job_variables(e["a"]) == {"image": "flows:1"}
    status = cli("status", "--env", e["env"]).stdout
    assert "rolled back:              yes (manual)" in status
    code, st = cli_json_here("status", "--env", e["env"])
    assert st["rolled_back"]["from_revision"] == r3 and st["last_applied_revision"] == r1
    events = read_events("prefect-gitops.rollback", e["env"], flow_run_id=out["flow_run_id"])
    assert [ev["payload"]["revision"] for ev in events] == [r1]
    return r1, r2, r3
