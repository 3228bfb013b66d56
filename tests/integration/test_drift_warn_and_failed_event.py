"""Drift in warn mode through `plan` and `apply`, and the `prefect-gitops.reconcile.failed` event of a
failed reconcile: real server, real Git, the CLI as a subprocess."""

from __future__ import annotations

import sys

import pytest

from helpers import (
    GitRepo,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_deployment,
    read_events,
    read_state,
    set_deployment_job_variables,
    uid,
)

FAILED = "prefect-gitops.reconcile.failed"
FAILING_CHECK = [sys.executable, "-c", "import sys; print('cannot start'); sys.exit(3)"]


@pytest.fixture
def estate(tmp_path):
    u = uid()
    env, pool, flow = f"w{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    return dict(env=env, pool=pool, daily=f"{flow}/daily", flow=flow, repo=GitRepo(tmp_path / "gitops"))


def flags(e, *more):
    return ("--source", e["repo"].url, "--env", e["env"], *more)


def test_plan_exits_2_for_drift_in_warn_mode_and_apply_only_warns(estate):
    e = estate
    e["repo"].commit_env(e["env"], {"drift": {"mode": "warn", "check_interval_seconds": 0, "full_read_interval_seconds": 0},
                                    "deployments": {e["daily"]: {"job_variables": {"image": "flows:1.4.3"}}}})
    cli_json_here("apply", *flags(e))
    code, planned = cli_json_here("plan", *flags(e))
    assert code == 0 and planned["changes"] == [] and planned["status"] == "in-sync", planned

    set_deployment_job_variables(e["daily"], {"namespace": "jobs", "image": "flows:hotfix"})
    warned = [(e["daily"], "image", "drift", "flows:hotfix", "flows:1.4.3", False)]
    code, planned = cli_json_here("plan", *flags(e), check_codes=(2,))
    assert [(c["target"], c["key"], c["reason"], c["old"], c["new"], c["apply"]) for c in planned["changes"]] == warned

    code, applied = cli_json_here("apply", *flags(e))
    assert code == 0 and applied["status"] == "drift-warned" and applied["applied"] == 0, applied
    assert [(c["target"], c["key"], c["reason"], c["old"], c["new"], c["apply"]) for c in applied["changes"]] == warned
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs", "image": "flows:hotfix"}
    assert read_state(e["env"])[0].condition.reason == "DriftWarned"
    cli_json_here("plan", *flags(e), check_codes=(2,))  # warned, not gone: still pending

    # corrected: nothing pending any more
    code, applied = cli_json_here("apply", *flags(e, "--drift-mode", "correct"))
    assert applied["status"] == "applied" and deployment_job_variables(e["daily"])["image"] == "flows:1.4.3", applied
    code, planned = cli_json_here("plan", *flags(e))
    assert code == 0 and planned["changes"] == [], planned

    # warn asked for on the command line, over a file in correct mode
    e["repo"].commit_env(e["env"], {"drift": {"check_interval_seconds": 0},
                                    "deployments": {e["daily"]: {"job_variables": {"image": "flows:1.4.3"}}}})
    set_deployment_job_variables(e["daily"], {"namespace": "jobs", "image": "flows:hotfix"})
    code, planned = cli_json_here("plan", *flags(e, "--drift-mode", "warn"), check_codes=(2,))
    assert [(c["reason"], c["apply"]) for c in planned["changes"]] == [("drift", False)], planned


def events_of_run(env: str, flow_run_id: str) -> list[dict]:
    """The failed events of one flow run, once the server has persisted them."""
    return read_events(FAILED, env, flow_run_id=flow_run_id)


def test_a_failed_reconcile_emits_the_failed_event_with_its_revision(estate):
    e = estate
    # a first failure (a deployment the server does not have), so an older failed event exists
    first_sha = e["repo"].commit_env(e["env"], {"deployments": {f"{e['flow']}/missing": {"job_variables": {"image": "flows:2"}}}})
    code, first = cli_json_here("apply", *flags(e), check_codes=(1,))
    assert first["status"] == "failed", first
    assert [ev["payload"]["revision"] for ev in events_of_run(e["env"], first["flow_run_id"])] == [first_sha]

    # this run fails too: the new image fails its smoke test, so the change is held back
    sha = e["repo"].commit_env(e["env"], {"smoke_test": {"kind": "process", "process": {"command": FAILING_CHECK}},
                                          "deployments": {e["daily"]: {"job_variables": {"image": "flows:bad"}}}})
    code, report = cli_json_here("apply", *flags(e), check_codes=(1,))
    assert report["status"] == "failed" and report["revision"] == sha and report["applied"] == 0, report

    events = events_of_run(e["env"], report["flow_run_id"])
    assert len(events) == 1, events
    event = events[0]
    assert event["event"] == FAILED
    assert event["resource"]["prefect.resource.id"] == f"prefect-gitops.environment.{e['env']}"
    assert event["resource"]["prefect-gitops.revision"] == sha
    assert event["payload"]["revision"] == sha and event["payload"]["environment"] == e["env"]
    assert event["payload"]["status"] == "failed" and event["payload"]["message"] == report["message"]
    related = {(r["prefect.resource.id"], r["prefect.resource.role"]) for r in event["related"]}
    assert (f"prefect.deployment.{read_deployment(e['daily']).id}", "gitops-target") in related, related
    assert (f"prefect.flow-run.{report['flow_run_id']}", "flow-run") in related, related
    assert "flows:bad" in event["payload"]["message"] and event["payload"]["deployments"] == [e["daily"]]
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs"}
