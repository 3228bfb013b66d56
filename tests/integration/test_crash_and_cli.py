"""Killed at any point, the next reconcile converges; the CLI's other commands; the demo."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from helpers import (
    GitRepo,
    cli,
    cli_json,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_deployment,
    read_state,
    uid,
)


def test_reconcile_killed_mid_apply_converges(tmp_path):
    u = uid()
    env, pool, flow = f"crash{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:0")
    names = [f"{flow}/d{i:02d}" for i in range(24)]
    for name in names:
        create_deployment(flow, name.split("/")[1], pool, {"namespace": "keep-me"})
    repo = GitRepo(tmp_path / "gitops")
    doc = {"work_pools": {pool: {"job_variables": {"image": "flows:1"}}},
           "deployments": {n: {"job_variables": {"image": "flows:1"}} for n in names}}
    sha = repo.commit_env(env, doc)
    args = [sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env, "--concurrency", "1"]

    # kill the apply with SIGKILL during start-up, then mid-write. A run killed while it held the
    # environment's lock keeps it until its lease ends (about a minute): the next apply waits for it.
    killed_with_partial_writes = False
    for delay in (1.0, 6.0, 7.5):
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        time.sleep(delay)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            done = sum(deployment_job_variables(n).get("image") == "flows:1" for n in names)
            killed_with_partial_writes |= 0 < done < len(names)
        state, _ = read_state(env)
        assert state.last_applied_revision in (None, sha)  # never claimed early
        if state.last_applied_revision == sha:
            break

    code, result = cli_json("apply", "--source", repo.url, "--env", env)
    assert result["status"] in ("applied", "in-sync", "up-to-date")
    assert all(deployment_job_variables(n) == {"namespace": "keep-me", "image": "flows:1"} for n in names)
    assert pool_default(pool, "image") == "flows:1"
    state, _ = read_state(env)
    assert state.last_applied_revision == sha and not state.has_unfinished_writes()
    # the pool's default from before prefect-gitops survived every kill
    assert state.inventory.work_pools[pool]["image"].previous == "flows:0"
    print(f"killed with partial writes observed: {killed_with_partial_writes}")

    # removing everything from Git restores and unsets exactly what was managed
    repo.commit_env(env, {})
    cli_json("apply", "--source", repo.url, "--env", env)
    assert pool_default(pool, "image") == "flows:0"
    assert all(deployment_job_variables(n) == {"namespace": "keep-me"} for n in names)


def test_only_changed_targets_are_written(tmp_path):
    u = uid()
    env, pool, flow = f"w{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool)
    create_deployment(flow, "a", pool)
    create_deployment(flow, "b", pool)
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"deployments": {f"{flow}/a": {"job_variables": {"image": "x:1"}},
                                          f"{flow}/b": {"job_variables": {"image": "y:1"}}}})
    cli_json("apply", "--source", repo.url, "--env", env)
    updated_b = read_deployment(f"{flow}/b").updated
    repo.commit_env(env, {"deployments": {f"{flow}/a": {"job_variables": {"image": "x:2"}},
                                          f"{flow}/b": {"job_variables": {"image": "y:1"}}}})
    code, result = cli_json("apply", "--source", repo.url, "--env", env)
    assert result["applied"] == 1
    assert read_deployment(f"{flow}/b").updated == updated_b
    assert deployment_job_variables(f"{flow}/a") == {"image": "x:2"}


def test_schema_command_prints_the_json_schema():
    schema = json.loads(cli("schema").stdout)
    assert schema["title"] == "prefect-gitops environment"
    assert schema["additionalProperties"] is False


def test_demo_runs_on_a_fresh_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path)  # nothing configured: the demo starts its own server
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "demo"], capture_output=True, text=True,
                          env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo passed" in done.stdout
    assert '"registry.example.com/flows:1.4.3" -> "registry.example.com/flows:1.4.4"' in done.stdout
