"""End to end against a real Prefect server and real Git repositories, through the CLI as users run it."""

from __future__ import annotations

import pytest

from helpers import (
    GitRepo,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_state,
    set_deployment_job_variables,
    set_pool_default,
    uid,
    cli,
    read_artifacts,
    read_deployment,
    read_events,
    wait_for_change_event,
)
from prefect_gitops.state import utcnow


@pytest.fixture
def estate(tmp_path):
    return make_estate(tmp_path)


def make_estate(tmp_path):
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

    code, planned = cli_json_here("plan", *flags(e), check_codes=(2,))
    assert planned["revision"] == sha1 and planned["environment"] == e["env"] and planned["errors"] == []
    got = {(c["target_type"], c["target"], c["key"], c["action"], c["reason"]) for c in planned["changes"]}
    assert got == {
        ("work_pool", e["pool"], "image", "set", "desired"),
        ("deployment", e["daily"], "image", "set", "desired"),
        ("deployment", e["daily"], "env", "set", "desired"),
    }
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs"}  # plan wrote nothing

    code, applied = cli_json_here("apply", *flags(e))
    assert applied["applied"] == 3 and applied["flow_run_id"] and applied["status"] == "applied"
    assert pool_default(e["pool"], "image") == "registry.example.com/flows:1.4.2"
    assert deployment_job_variables(e["daily"]) == {
        "namespace": "jobs", "image": "registry.example.com/flows:1.4.3", "env": {"LOG_LEVEL": "debug"}}
    assert deployment_job_variables(e["hourly"]) == {}

    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha1 == state.last_attempted_revision
    assert len(state.history) == 1 and state.history[0].flow_run_id == applied["flow_run_id"]
    assert state.inventory.work_pools[e["pool"]]["image"].previous == "registry.example.com/flows:1.0.0"

    # a second apply writes nothing; with --quick (as scheduled runs) it stops at the shortcut
    code, again = cli_json_here("apply", *flags(e, "--quick"))
    assert again["applied"] == 0 and again["status"] == "up-to-date"  # Git unchanged, no drift check due yet
    assert len(read_state(e["env"])[0].history) == 1
    code, planned = cli_json_here("plan", *flags(e), check_codes=(0,))
    assert planned["changes"] == [] and planned["status"] == "in-sync"
    shown = cli("plan", *flags(e)).stdout
    assert "In sync" in shown and "dry run" in shown and "Planned only" not in shown
    quiet = cli("apply", *flags(e, "--quick"))  # the CLI ends without Prefect's "Still processing items" drain warnings
    assert "Still processing" not in quiet.stdout + quiet.stderr and "up-to-date" in quiet.stdout

    # Git moves: only the changed key is applied
    sha2 = e["repo"].commit_env(e["env"], desired(e, daily_image="registry.example.com/flows:1.5.0"))
    code, applied = cli_json_here("apply", *flags(e))
    assert applied["revision"] == sha2 and applied["applied"] == 1
    assert [(c["target"], c["key"], c["old"], c["new"]) for c in applied["changes"]] == [
        (e["daily"], "image", "registry.example.com/flows:1.4.3", "registry.example.com/flows:1.5.0")]
    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha2 and len(state.history) == 2


def test_drift_is_corrected_and_reported(estate):
    e = estate
    e["repo"].commit_env(e["env"], desired(e))
    cli_json_here("apply", *flags(e))
    # someone edits the deployment and the pool in the UI
    set_deployment_job_variables(e["daily"], {
        "namespace": "jobs", "image": "registry.example.com/flows:hotfix", "env": {"LOG_LEVEL": "debug"}})
    set_pool_default(e["pool"], "image", "registry.example.com/flows:ui-edit")

    code, planned = cli_json_here("plan", *flags(e), check_codes=(2,))
    assert {(c["target"], c["key"], c["reason"], c["old"]) for c in planned["changes"]} == {
        (e["daily"], "image", "drift", "registry.example.com/flows:hotfix"),
        (e["pool"], "image", "drift", "registry.example.com/flows:ui-edit"),
    }
    # Git has not moved, but a drift check is due (the default interval is for scheduled runs;
    # the file sets 0 here so every reconcile checks)
    e["repo"].commit_env(e["env"], desired(e, drift={"check_interval_seconds": 0}))
    code, applied = cli_json_here("apply", *flags(e))
    assert applied["applied"] == 2
    assert deployment_job_variables(e["daily"])["image"] == "registry.example.com/flows:1.4.3"
    assert pool_default(e["pool"], "image") == "registry.example.com/flows:1.4.2"
    # the inventory still remembers the pool default from before prefect-gitops took over
    state, _ = read_state(e["env"])
    assert state.inventory.work_pools[e["pool"]]["image"].previous == "registry.example.com/flows:1.0.0"

    drift_events = read_events("prefect-gitops.reconcile.drift-detected", e["env"])
    assert len(drift_events) == 1
    assert drift_events[0]["payload"]["flow_run_id"] == applied["flow_run_id"]
    payload = drift_events[0]["payload"]
    assert payload["revision"] == applied["revision"]
    assert payload["deployments"] == [e["daily"]] and payload["work_pools"] == [e["pool"]]
    related = {r["prefect.resource.id"].split(".")[1] for r in drift_events[0]["related"]
               if r.get("prefect.resource.role") == "gitops-target"}
    assert related == {"deployment", "work-pool"}
    # the first apply's and the drift correction's (wait for both: they are persisted independently)
    applied_events = read_events("prefect-gitops.reconcile.applied", e["env"], count=2)
    assert len(applied_events) == 2
    assert applied_events[0]["payload"]["flow_run_id"] == applied["flow_run_id"]  # newest first


def test_drift_warn_reports_without_writing(estate):
    e = estate
    e["repo"].commit_env(e["env"], desired(e, drift={"mode": "warn", "check_interval_seconds": 0}))
    cli_json_here("apply", *flags(e))
    edited = utcnow()
    set_deployment_job_variables(e["daily"], {"image": "registry.example.com/flows:hotfix"})
    # Git unchanged and the last check in sync: the check asks the event log, where the edit shows
    # once the server has persisted its event (here the estate's creation, just before, shows too)
    wait_for_change_event("prefect.deployment.updated", f"prefect.deployment.{read_deployment(e['daily']).id}", edited)

    code, result = cli_json_here("apply", *flags(e, "--quick"))
    assert result["drift_check"].startswith("full read: ")
    assert result["status"] == "drift-warned" and result["applied"] == 0
    # both edits (image changed, env dropped) are drift: reported, not corrected
    assert {(c["key"], c["reason"], c["apply"]) for c in result["changes"]} == {
        ("image", "drift", False), ("env", "drift", False)}
    assert deployment_job_variables(e["daily"]) == {"image": "registry.example.com/flows:hotfix"}
    state, _ = read_state(e["env"])
    assert state.condition.reason == "DriftWarned" and state.condition.ready is False
    # the flag overrides the file
    code, result = cli_json_here("apply", *flags(e, "--drift-mode", "correct"))
    assert deployment_job_variables(e["daily"])["image"] == "registry.example.com/flows:1.4.3"


def test_removed_keys_are_unset_and_pool_defaults_restored(estate):
    e = estate
    e["repo"].commit_env(e["env"], desired(e, extra_daily={"namespace": "etl"}))
    cli_json_here("apply", *flags(e))
    assert deployment_job_variables(e["daily"])["namespace"] == "etl"

    # drop the pool section and the deployment's env key
    e["repo"].commit_env(e["env"], {"deployments": {e["daily"]: {"job_variables": {
        "image": "registry.example.com/flows:1.4.3", "namespace": "etl"}}}})
    code, result = cli_json_here("apply", *flags(e))
    assert {(c["target"], c["key"], c["action"]) for c in result["changes"]} == {
        (e["daily"], "env", "unset"), (e["pool"], "image", "set")}
    assert deployment_job_variables(e["daily"]) == {"namespace": "etl", "image": "registry.example.com/flows:1.4.3"}
    assert pool_default(e["pool"], "image") == "registry.example.com/flows:1.0.0"  # restored
    state, _ = read_state(e["env"])
    assert e["pool"] not in state.inventory.work_pools

    # keys never managed are never touched: namespace existed before ("jobs") but Git now owns it;
    # removing it from Git unsets it, while hourly (never in Git) keeps whatever it has
    set_deployment_job_variables(e["hourly"], {"cpu_request": "2"})
    e["repo"].commit_env(e["env"], {"allow_empty": True, "deployments": {}})  # every managed key goes: consent
    cli_json_here("apply", *flags(e))
    assert deployment_job_variables(e["daily"]) == {}
    assert deployment_job_variables(e["hourly"]) == {"cpu_request": "2"}


def test_status_artifact_and_history(estate):
    e = estate
    sha = e["repo"].commit_env(e["env"], desired(e))
    code, applied = cli_json_here("apply", *flags(e))

    code, status = cli_json_here("status", "--env", e["env"])
    assert status["last_applied_revision"] == sha and status["last_attempted_revision"] == sha
    assert status["condition"]["ready"] is True and status["condition"]["reason"] == "Applied"
    assert status["history"][0]["flow_run_id"] == applied["flow_run_id"]
    assert {c["key"] for c in status["history"][0]["changes"]} == {"image", "env"}
    assert status["inventory"]["deployments"][e["daily"]]["image"]["value"] == "registry.example.com/flows:1.4.3"
    text = cli("status", "--env", e["env"]).stdout
    assert sha in text and "applied" in text

    artifacts = read_artifacts(f"gitops-{e['env']}")
    assert len(artifacts) == 1
    md = artifacts[0].data
    assert "| Target | Key | Old → New | Reason | Result |" in md
    assert f"`{e['daily']}` | `image` | `(absent)` → `\"registry.example.com/flows:1.4.3\"` | desired | applied |" in md
    assert sha in md

    cli("status", "--env", "never-reconciled-env", check_codes=(1,))
