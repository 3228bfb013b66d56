"""Sync windows read in their own time zone, drift correction held by a closed window, and suspend /
resume taking the environment lock: real server, real Git, the CLI as a subprocess."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from zoneinfo import ZoneInfo

import pytest

from helpers import (
    GitRepo,
    cli,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_state,
    set_deployment_job_variables,
    uid,
)
from prefect_gitops.adapters.locks import environment_limit


@pytest.fixture
def estate(tmp_path):
    u = uid()
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1")
    create_deployment(flow, "a", pool)
    return dict(env=f"g{u}", pool=pool, a=f"{flow}/a", repo=GitRepo(tmp_path / "gitops"), tmp=tmp_path)


def flags(e, *more):
    return ("--source", e["repo"].url, "--env", e["env"], *more)


def opened_two_minutes_ago_in(zone: str) -> str:
    """A cron schedule that fired two minutes ago on the wall clock of `zone` (today's date, that
    minute): read in any zone whose offset differs by more than the window's duration, it is not open."""
    start = dt.datetime.now(ZoneInfo(zone)) - dt.timedelta(minutes=2)
    return f"{start.minute} {start.hour} {start.day} {start.month} *"


def test_sync_windows_are_read_in_their_timezone(estate):
    e = estate
    # a freeze that opened two minutes ago in Kolkata (UTC+05:30): closed now, wherever the server is
    kolkata = [{"kind": "deny", "schedule": opened_two_minutes_ago_in("Asia/Kolkata"), "duration": "30m",
                "timezone": "Asia/Kolkata", "description": "Diwali freeze"}]
    e["repo"].commit_env(e["env"], {"sync_windows": kolkata, "deployments": {e["a"]: {"job_variables": {"image": "flows:2"}}}})
    code, report = cli_json_here("apply", *flags(e), check_codes=(4,))
    assert report["status"] == "window-closed" and report["applied"] == 0, report
    assert "inside deny window" in report["message"] and "Asia/Kolkata: Diwali freeze" in report["message"]
    assert [(c["target"], c["new"]) for c in report["changes"]] == [(e["a"], "flows:2")]
    assert deployment_job_variables(e["a"]) == {}
    assert read_state(e["env"])[0].condition.reason == "SyncWindowClosed"

    # the same wall-clock time in UTC, but the window is New York's (4 or 5 hours behind): not open now
    new_york = [{"kind": "deny", "schedule": opened_two_minutes_ago_in("UTC"), "duration": "30m",
                 "timezone": "America/New_York", "description": "NY freeze"}]
    sha = e["repo"].commit_env(e["env"], {"sync_windows": new_york,
                                          "deployments": {e["a"]: {"job_variables": {"image": "flows:2"}}}})
    code, report = cli_json_here("apply", *flags(e))
    assert report["status"] == "applied" and report["applied"] == 1, report
    assert deployment_job_variables(e["a"]) == {"image": "flows:2"}
    assert read_state(e["env"])[0].last_applied_revision == sha


def test_drift_correction_is_held_inside_a_deny_window(estate):
    e = estate
    freeze = [{"kind": "deny", "schedule": "* * * * *", "duration": "5m", "description": "freeze"}]
    # every reconcile checks for drift and reads every target (no event log in between)
    e["repo"].commit_env(e["env"], {"sync_windows": freeze,
                                    "drift": {"check_interval_seconds": 0, "full_read_interval_seconds": 0},
                                    "deployments": {e["a"]: {"job_variables": {"image": "flows:2"}}}})
    cli_json_here("apply", *flags(e, "--override-windows"))
    assert deployment_job_variables(e["a"]) == {"image": "flows:2"}
    applied, _ = read_state(e["env"])

    set_deployment_job_variables(e["a"], {"image": "flows:hotfix"})  # changed outside Git
    code, report = cli_json_here("apply", *flags(e), check_codes=(4,))
    # reported as drift ...
    assert report["status"] == "window-closed" and "inside deny window" in report["message"], report
    assert [(c["target"], c["key"], c["reason"], c["old"], c["new"], c["apply"]) for c in report["changes"]] == [
        (e["a"], "image", "drift", "flows:hotfix", "flows:2", True)]
    # ... but not reverted while the window is closed
    assert report["applied"] == 0 and deployment_job_variables(e["a"]) == {"image": "flows:hotfix"}
    state, _ = read_state(e["env"])
    assert state.condition.reason == "SyncWindowClosed"
    assert len(state.history) == len(applied.history)
    assert state.inventory.deployments[e["a"]]["image"].value == "flows:2"

    # the override corrects it
    code, report = cli_json_here("apply", *flags(e, "--override-windows"))
    assert report["status"] == "applied" and deployment_job_variables(e["a"]) == {"image": "flows:2"}, report


# The CLI's suspend/resume wait 300 s for the lock (there is no option to change that); to see the
# "busy" outcome in seconds this runs the same CLI with that wait cut to 3 s and nothing else changed.
SHORT_LOCK_WAIT = """\
import sys
import prefect_gitops.adapters.locks as locks
real = locks.environment_lock
locks.environment_lock = lambda client, env, timeout: real(client, env, min(timeout, 3))
from prefect_gitops.cli import app
app(args=sys.argv[1:], prog_name="prefect-gitops")
"""


def cli_short_lock_wait(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SHORT_LOCK_WAIT, *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=120)
    return done, time.monotonic() - began


def wait_for_file(path, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.1)


def recorded(env: str) -> str:
    state, handle = read_state(env)
    return state.model_dump_json() if handle is not None else "<never recorded>"


def test_suspend_and_resume_wait_for_the_environment_lock(estate):
    e = estate
    e["repo"].commit_env(e["env"], {"deployments": {e["a"]: {"job_variables": {"image": "flows:1"}}}})
    cli_json_here("apply", *flags(e))

    # a rollout that holds the environment's lock until the test creates `release`: its process smoke
    # test announces itself in `started`, then waits
    started, release = e["tmp"] / "started", e["tmp"] / "release"
    hold = [sys.executable, "-c",
            "import os, sys, time\nopen(sys.argv[1], 'w').close()\ndeadline = time.time() + 120\n"
            "while not os.path.exists(sys.argv[2]) and time.time() < deadline:\n    time.sleep(0.1)\n",
            str(started), str(release)]
    sha = e["repo"].commit_env(e["env"], {"smoke_test": {"kind": "process", "process": {"command": hold}},
                                          "deployments": {e["a"]: {"job_variables": {"image": "flows:2"}}}})
    holder = subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", *flags(e), "--output", "json"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting = None
    try:
        wait_for_file(started)
        before = recorded(e["env"])

        # suspend waits for the lock, gives up: exit 3, nothing written
        done, took = cli_short_lock_wait("suspend", "--env", e["env"], "--reason", "incident 7")
        assert done.returncode == 3, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert f"another rollout of {e['env']} is in progress" in done.stderr
        assert took >= 3
        assert recorded(e["env"]) == before
        assert holder.poll() is None  # the rollout still holds the lock

        # the real CLI (300 s wait) is still waiting while the rollout holds the lock, and writes nothing
        waiting = subprocess.Popen([sys.executable, "-m", "prefect_gitops", "suspend", "--env", e["env"],
                                    "--reason", "incident 7"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 8  # far longer than a suspend that does not wait takes (~3 s)
        while time.monotonic() < deadline:
            assert waiting.poll() is None, f"suspend ended while the lock was held: {waiting.communicate()}"
            assert recorded(e["env"]) == before
            time.sleep(0.5)
    finally:
        release.touch()
        out, err = holder.communicate(timeout=300)
    report = json.loads(out)
    assert holder.returncode == 0 and report["status"] == "applied", err[-3000:]

    # ... and succeeds once the rollout is over, after the rollout's record
    out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0 and f"{e['env']}: suspended" in out, err[-3000:]
    state, _ = read_state(e["env"])
    assert state.suspended is not None and state.suspended.reason == "incident 7"
    assert state.last_applied_revision == sha and deployment_job_variables(e["a"]) == {"image": "flows:2"}

    # resume takes the same lock: held (through Prefect's own global concurrency API), it waits and
    # fails with exit 3 and the environment stays suspended
    from prefect.concurrency.sync import concurrency

    suspended = recorded(e["env"])
    with concurrency(environment_limit(e["env"]), occupy=1, strict=True, lease_duration=60):
        done, took = cli_short_lock_wait("resume", "--env", e["env"])
    assert done.returncode == 3 and "is in progress" in done.stderr, f"exit {done.returncode}\n{done.stderr}"
    assert took >= 3 and recorded(e["env"]) == suspended
    assert "resumed" in cli("resume", "--env", e["env"]).stdout
    assert read_state(e["env"])[0].suspended is None
