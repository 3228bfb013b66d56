"""Killed at any point, the next reconcile converges; the CLI's other commands; the demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

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

from prefect_gitops.demo_registry import binary


def _images_written(flow: str, image: str) -> int:
    """How many deployments of `flow` run `image`: one filtered read, cheap enough to poll."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    from helpers import _with_client, run

    async def go(client):
        deployments = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
        return sum((d.job_variables or {}).get("image") == image for d in deployments)

    return run(_with_client(go))


@pytest.mark.skipif(os.environ.get("PREFECT_GITOPS_FULL_TRIALS") != "1",
                    reason="a long trial (~4 min on two cores, most of it a killed run's lease running out): "
                           "PREFECT_GITOPS_FULL_TRIALS=1 runs it; CI's kills are reliability/test_kill_trials.py's")
def test_reconcile_killed_mid_apply_converges(tmp_path):
    u = uid()
    env, pool, flow = f"crash{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:0")
    names = [f"{flow}/d{i:02d}" for i in range(60)]
    for name in names:
        create_deployment(flow, name.split("/")[1], pool, {"namespace": "keep-me"})
    repo = GitRepo(tmp_path / "gitops")

    def desired(image):
        return {"work_pools": {pool: {"job_variables": {"image": image}}},
                "deployments": {n: {"job_variables": {"image": image}} for n in names}}

    # A trial commits a new image and SIGKILLs the apply once the server shows some, not all, of its
    # writes: the kill is placed by observed progress, not by a delay. A run killed while it held the
    # environment's lock keeps it until its lease ends (about a minute): the next apply waits for it.
    # One such kill is enough here (the lease, the removal below); tests/reliability/test_kill_trials.py
    # kills at every phase of an apply, chained over revisions, and counts every write.
    mid_write_kills, sha, image = 0, None, None
    for trial in range(1, 5):
        image = f"flows:{trial}"
        sha = repo.commit_env(env, desired(image))
        proc = subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                                 "--concurrency", "1"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
        deadline = time.monotonic() + 180
        while (written := _images_written(flow, image)) < 3 and proc.poll() is None:
            assert time.monotonic() < deadline, "the apply wrote nothing within 180 s"
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        written = _images_written(flow, image)
        state, _ = read_state(env)
        last_killed_mid_write = 0 < written < len(names)
        if last_killed_mid_write:
            mid_write_kills += 1
            assert state.last_applied_revision != sha  # never claimed while writes were missing
            assert state.has_unfinished_writes()  # the attempt was recorded before the writes
        if mid_write_kills == 1:
            break
    assert mid_write_kills >= 1, "no kill landed between two writes"

    code, result = cli_json("apply", "--source", repo.url, "--env", env)
    if last_killed_mid_write:  # the next run writes only what the killed one had not
        assert result["status"] == "applied" and result["revision"] == sha
        assert 0 < result["applied"] <= len(names) + 1 - 3
    else:  # a person's apply reads every target: all there
        assert result["status"] == "in-sync" and result["applied"] == 0
    assert all(deployment_job_variables(n) == {"namespace": "keep-me", "image": image} for n in names)
    assert pool_default(pool, "image") == image
    state, _ = read_state(env)
    assert state.last_applied_revision == sha and not state.has_unfinished_writes()
    # the pool's default from before prefect-gitops survived every kill
    assert state.inventory.work_pools[pool]["image"].previous == "flows:0"

    # removing everything from Git (with the file's consent) restores and unsets exactly what was managed
    repo.commit_env(env, {"allow_empty": True})
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


@pytest.mark.skipif(os.environ.get("PREFECT_GITOPS_DEMO_IN_COMPAT") == "1",
                    reason="CI's compatibility job runs the demo (.ci/run sets PREFECT_GITOPS_DEMO_IN_COMPAT)")
def test_demo_runs_on_a_fresh_home(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["HOME"] = str(tmp_path)  # nothing configured: the demo starts its own server
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "demo"], capture_output=True, text=True,
                          env=env, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "demo passed" in done.stdout
    assert '"registry.example.com/flows:1.4.3" -> "registry.example.com/flows:1.4.4"' in done.stdout
    if binary() is None:
        assert "image scan step skipped: docker-registry is not installed" in done.stdout
        return
    # pull mode: a tag pushed to the demo's registry, committed by the image scan, applied by qa's reconcile
    old, new = r"127\.0\.0\.1:\d+/demo/etl:1\.0\.0", r"127\.0\.0\.1:\d+/demo/etl:1\.1\.0"
    assert "deployment etl/qa-daily: semver ^1: newest tag 1.1.0 of 2: updated" in done.stdout
    assert re.search(rf"image scan: etl/qa-daily: {old} -> {new}\n", done.stdout), done.stdout[-3000:]
    after = done.stdout.split("== qa after the image scan: applied at ", 1)[1]
    assert re.match(rf'[0-9a-f]{{12}} ==\n  set   deployment etl/qa-daily +image +"{old}" -> "{new}"  \[desired\]\n'
                    r"  1 change\(s\) applied", after), after[:1000]


def test_cli_reports_the_run_when_the_answer_to_its_final_state_was_lost(tmp_path, monkeypatch):
    """CI found it: on a stalling server the answer to a run's final state write got lost, Prefect's client
    wrote it again, the server refused the repeat and handed back its copy of the state, without the report;
    `apply` crashed with MissingResult after applying. The report must reach the user all the same."""
    from lost_answer_proxy import LostAnswerProxy

    u = uid()
    env, pool, flow = f"lost{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool)
    create_deployment(flow, "a", pool)
    repo = GitRepo(tmp_path / "gitops")
    sha = repo.commit_env(env, {"deployments": {f"{flow}/a": {"job_variables": {"image": "x:1"}}}})
    with LostAnswerProxy() as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url)
        code, applied = cli_json("apply", "--source", repo.url, "--env", env)
        assert proxy.lost == [applied["flow_run_id"]]  # the answer to its Completed state was lost
        assert (applied["status"], applied["applied"], applied["revision"]) == ("applied", 1, sha)
        # a Failed run's report (a State carrying it) comes through the same way
        repo.commit_env(env, {"deployments": {f"{flow}/a": {"job_variables": {"image": "x:2"}},
                                              f"{flow}/missing": {"job_variables": {"image": "x:2"}}}})
        code, failed = cli_json("apply", "--source", repo.url, "--env", env, check_codes=(1,))
        assert proxy.lost[-1] == failed["flow_run_id"] and len(proxy.lost) == 2
        assert failed["status"] == "failed" and failed["errors"], failed
    assert deployment_job_variables(f"{flow}/a") == {"image": "x:1"}
