"""A drift check after one that ended in sync asks the server's event log what changed, and reads
every target only when a managed one may have changed (real server, real Git, through the CLI)."""

from __future__ import annotations

import datetime as dt
import time

from helpers import (
    GitRepo,
    _with_client,
    cli,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_artifacts,
    read_deployment,
    read_state,
    run,
    set_deployment_job_variables,
    set_pool_default,
    uid,
    wait_for_change_event,
    write_state,
)

from prefect_gitops.drift_events import SKEW, covered_after_event_check
from prefect_gitops.state import utcnow

IMAGE = "registry.example.com/flows:1.4.3"
LAG = dt.timedelta(seconds=60)  # README: a check covers only up to 60 s before it ran


def _pool_id(name: str) -> str:
    async def go(client):
        return str((await client.read_work_pool(name)).id)

    return run(_with_client(go))


def _setup(tmp_path, **drift):
    u = uid()
    env, pool, flow = f"ev{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="registry.example.com/flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    # the apply's full read covers what happened before it started, less the clock margin: keep the
    # creations out of the first drift check's window (in production they would cost one more full read)
    time.sleep(SKEW.total_seconds())
    repo = GitRepo(tmp_path / "gitops")
    daily = f"{flow}/daily"
    repo.commit_env(env, {"drift": {"check_interval_seconds": 0, **drift},
                          "work_pools": {pool: {"job_variables": {"image": "registry.example.com/flows:1.4.2"}}},
                          "deployments": {daily: {"job_variables": {"image": IMAGE}}}})
    flags = ("--source", repo.url, "--env", env, "--quick")  # as scheduled runs: the event log first
    started = utcnow()
    code, report = cli_json_here("apply", *flags)
    assert report["status"] == "applied" and report["drift_check"] is None  # a new revision, not a drift check
    return env, pool, daily, flags, started


def test_own_writes_and_unmanaged_changes_are_not_drift_and_nothing_is_read(tmp_path):
    env, pool, daily, flags, started = _setup(tmp_path)
    deployment_id = f"prefect.deployment.{read_deployment(daily).id}"
    # the apply's own write is in the event log: it set what the inventory records
    wait_for_change_event("prefect.deployment.updated", deployment_id, since=started)
    applied_state, _ = read_state(env)

    code, report = cli_json_here("apply", *flags)
    assert report["status"] == "in-sync" and report["drift_check"] == "event log", report
    state, _ = read_state(env)
    assert state.last_full_read_at == applied_state.last_full_read_at  # no full read was recorded
    assert state.last_drift_check_at > applied_state.last_drift_check_at
    assert state.condition.ready and "event log" in state.condition.message
    # what `status` and the run's artifact say about it
    assert (f"last drift check:         {state.last_drift_check_at:%Y-%m-%d %H:%M:%S} (every target last read "
            f"{state.last_full_read_at:%Y-%m-%d %H:%M:%S})") in cli("status", "--env", env).stdout
    assert "**Drift check:** event log" in read_artifacts(f"gitops-{env}")[0].data

    # a job variable Git does not manage, changed in the UI: not drift, still nothing read
    edited = utcnow()
    set_deployment_job_variables(daily, {"namespace": "jobs", "image": IMAGE, "cpu_request": "2"})
    wait_for_change_event("prefect.deployment.updated", deployment_id, since=edited)
    code, report = cli_json_here("apply", *flags)
    assert report["status"] == "in-sync" and report["drift_check"] == "event log", report
    assert deployment_job_variables(daily) == {"namespace": "jobs", "image": IMAGE, "cpu_request": "2"}

    # asked for: every target is read
    code, report = cli_json_here("apply", *flags, "--full-check")
    assert report["status"] == "in-sync" and report["drift_check"] == "full read: asked for"
    assert read_state(env)[0].last_full_read_at > state.last_full_read_at


def test_a_managed_change_in_the_event_log_is_read_and_corrected(tmp_path):
    env, pool, daily, flags, started = _setup(tmp_path)
    deployment_id = f"prefect.deployment.{read_deployment(daily).id}"

    edited = utcnow()
    set_deployment_job_variables(daily, {"namespace": "jobs", "image": "registry.example.com/flows:hotfix"})
    wait_for_change_event("prefect.deployment.updated", deployment_id, since=edited)
    code, report = cli_json_here("apply", *flags)
    assert report["drift_check"] == f"full read: deployment {daily!r}: image changed", report
    assert report["status"] == "applied"
    assert [(c["target"], c["key"], c["reason"]) for c in report["changes"]] == [(daily, "image", "drift")]
    assert deployment_job_variables(daily)["image"] == IMAGE

    # the pool's default, edited in the UI
    edited = utcnow()
    set_pool_default(pool, "image", "registry.example.com/flows:ui-edit")
    wait_for_change_event("prefect.work-pool.updated", f"prefect.work-pool.{_pool_id(pool)}", since=edited)
    code, report = cli_json_here("apply", *flags)
    assert report["drift_check"] == f"full read: work pool {pool!r}: image changed", report
    assert report["status"] == "applied"
    assert pool_default(pool, "image") == "registry.example.com/flows:1.4.2"


def test_a_quiet_check_leaves_the_persister_s_lag_to_the_next_one(tmp_path):
    """The server persists events a moment after the change: a check that asked the log at t records
    only max(what was covered before, t - 60 s) as covered, so the next check asks again for what
    happened just before t. Asserted for whatever t the check ran at, so however long the machine
    takes between the apply and the check."""
    env, pool, daily, flags, started = _setup(tmp_path)
    previous = read_state(env)[0].drift_checked_until  # the apply's full read: its start, less SKEW
    before_check = utcnow()
    code, report = cli_json_here("apply", *flags)
    assert report["drift_check"] == "event log", report
    state = read_state(env)[0]
    # the check asked the log at some t in [before_check, state.last_drift_check_at] (it records
    # itself after asking): what it records as covered lies between the values for those two ends,
    # so never t itself: the minute before t is asked again next time (on a quick machine, less than
    # 55 s after the apply, both ends give `previous`: the full read still covers more)
    assert before_check <= state.last_drift_check_at
    assert (max(previous, before_check - LAG) <= state.drift_checked_until
            <= max(previous, state.last_drift_check_at - LAG)), (previous, before_check, state)

    # a change whose event the server persisted only after a check asked the log (here: a check that
    # asked as the change was made, whose record is written as it would have written it) is found by
    # the next check
    deployment_id = f"prefect.deployment.{read_deployment(daily).id}"
    edited = utcnow()
    set_deployment_job_variables(daily, {"namespace": "jobs", "image": "registry.example.com/flows:hotfix"})
    wait_for_change_event("prefect.deployment.updated", deployment_id, since=edited)
    state, handle = read_state(env)
    state.drift_checked_until = covered_after_event_check(state.drift_checked_until, edited)
    write_state(state, handle)
    assert read_state(env)[0].drift_checked_until <= edited  # the change is inside what the next check asks
    code, report = cli_json_here("apply", *flags)
    assert report["drift_check"] == f"full read: deployment {daily!r}: image changed", report
    assert deployment_job_variables(daily)["image"] == IMAGE


def test_every_target_is_read_once_the_full_read_interval_has_passed(tmp_path):
    env, pool, daily, flags, started = _setup(tmp_path, full_read_interval_seconds=3600)
    state, handle = read_state(env)
    state.last_full_read_at = utcnow() - dt.timedelta(hours=2)
    write_state(state, handle)
    code, report = cli_json_here("apply", *flags)
    assert report["status"] == "in-sync" and report["drift_check"] == "full read: a full read is due", report
    assert read_state(env)[0].last_full_read_at > started
    # and 0 turns the event log off
    env2, pool2, daily2, flags2, _ = _setup(tmp_path / "off", full_read_interval_seconds=0)
    code, report = cli_json_here("apply", *flags2)
    assert report["drift_check"] == "full read: drift.full_read_interval_seconds is 0", report
