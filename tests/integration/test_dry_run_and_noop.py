"""A dry run writes nothing (CLI and flow parameter), and a reconcile with Git unchanged and no drift
check due stops after one `git ls-remote`, one read of the recorded state and one of the environment's
GitOps Target block (where it lives): real server, real Git;
the requests are counted by the benchmark's counting proxy in front of the server and the git
invocations by the benchmark's git wrapper."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from helpers import (
    GitRepo,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_state,
    run_reconcile_flow,
    server_snapshot,
    set_deployment_job_variables,
    uid,
)

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def estate(tmp_path):
    u = uid()
    env, pool, flow = f"d{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    create_deployment(flow, "hourly", pool)
    return dict(env=env, pool=pool, daily=f"{flow}/daily", hourly=f"{flow}/hourly", repo=GitRepo(tmp_path / "gitops"),
                tmp=tmp_path)


def flags(e, *more):
    return ("--source", e["repo"].url, "--env", e["env"], *more)


def recorded(env: str) -> str:
    """The whole recorded state, history included, as stored."""
    state, handle = read_state(env)
    assert handle is not None
    return state.model_dump_json()


def test_dry_run_writes_nothing_cli_and_flow(estate):
    e = estate
    e["repo"].commit_env(e["env"], {"work_pools": {e["pool"]: {"job_variables": {"image": "flows:1.4.2"}}},
                                    "deployments": {e["daily"]: {"job_variables": {"image": "flows:1.4.3"}}}})
    cli_json_here("apply", *flags(e))
    # pending: drift on daily, a new revision that changes the pool and takes over hourly
    set_deployment_job_variables(e["daily"], {"namespace": "jobs", "image": "flows:hotfix"})
    sha = e["repo"].commit_env(e["env"], {"work_pools": {e["pool"]: {"job_variables": {"image": "flows:1.5.0"}}},
                                          "deployments": {e["daily"]: {"job_variables": {"image": "flows:1.4.3"}},
                                                          e["hourly"]: {"job_variables": {"image": "flows:2.0.0"}}}})
    pending = {(e["pool"], "image", "flows:1.4.2", "flows:1.5.0", "desired"),
               (e["daily"], "image", "flows:hotfix", "flows:1.4.3", "drift"),
               (e["hourly"], "image", None, "flows:2.0.0", "desired")}
    server = server_snapshot([e["pool"]], [e["daily"], e["hourly"]])
    state = recorded(e["env"])

    code, report = cli_json_here("apply", *flags(e, "--dry-run"))
    assert report["status"] == "planned" and report["applied"] == 0 and report["revision"] == sha, report
    assert {(c["target"], c["key"], c["old"], c["new"], c["reason"]) for c in report["changes"]} == pending
    assert server_snapshot([e["pool"]], [e["daily"], e["hourly"]]) == server
    assert recorded(e["env"]) == state

    flow_state, report = run_reconcile_flow(environment=e["env"], source_url=e["repo"].url, dry_run=True)
    assert flow_state.is_completed(), report
    assert report["status"] == "planned" and report["applied"] == 0 and report["revision"] == sha, report
    assert {(c["target"], c["key"], c["old"], c["new"], c["reason"]) for c in report["changes"]} == pending
    assert server_snapshot([e["pool"]], [e["daily"], e["hourly"]]) == server
    assert recorded(e["env"]) == state

    # the changes were real: without the dry run they are applied
    code, report = cli_json_here("apply", *flags(e))
    assert report["status"] == "applied" and report["applied"] == 3, report
    assert deployment_job_variables(e["hourly"]) == {"image": "flows:2.0.0"}


def _measured_apply(e, proxy, git_log: Path, *more) -> tuple[int, dict, dict, list[list[str]]]:
    """`prefect-gitops apply` talking to the server through the counting proxy, with git counted:
    (exit code, report, requests by endpoint, git invocations)."""
    proxy.reset()
    git_log.write_text("")
    env = {**os.environ, "PREFECT_API_URL": f"{proxy.url}/api",
           "PATH": f"{BENCH / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
           "BENCH_GIT_LOG": str(git_log), "BENCH_REAL_GIT": shutil.which("git")}
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", *flags(e, *more), "--output", "json"],
                          capture_output=True, text=True, env=env, timeout=300)
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {"stderr": done.stderr[-3000:]}
    calls = [line.split() for line in git_log.read_text().splitlines() if line.strip()]
    return done.returncode, report, proxy.snapshot()["by_endpoint"], calls


def _verb(args: list[str]) -> str:
    """The git subcommand of a logged invocation (options such as -C DIR and -c K=V skipped)."""
    i = 0
    while i < len(args) and args[i].startswith("-"):
        i += 2 if args[i] in ("-C", "-c") else 1
    return args[i] if i < len(args) else ""


TARGET_READS = ("/work_pools", "/deployments", "/work_queues", "/flows/filter", "/events/filter")


def test_git_unchanged_and_no_drift_check_due_costs_one_ls_remote_and_one_read(estate):
    e = estate
    sys.path.insert(0, str(BENCH))
    try:
        from proxy import CountingProxy
    finally:
        sys.path.remove(str(BENCH))
    server = urlsplit(os.environ["PREFECT_API_URL"])
    proxy = CountingProxy(server.hostname, server.port).start()
    git_log = e["tmp"] / "git.log"

    sha = e["repo"].commit_env(e["env"], {"drift": {"check_interval_seconds": 300},
                                          "deployments": {e["daily"]: {"job_variables": {"image": "flows:1.4.3"}}}})
    code, report, requests, calls = _measured_apply(e, proxy, git_log)
    assert code == 0 and report["status"] == "applied", report
    assert any(any(r in k for r in TARGET_READS) for k in requests), requests  # the proxy sees the reads

    # Git unchanged, the last check 300 s ago at most: the cheap path (scheduled runs; the CLI's --quick)
    code, report, requests, calls = _measured_apply(e, proxy, git_log, "--quick")
    assert code == 0 and report["status"] == "up-to-date" and report["applied"] == 0, report
    assert report["revision"] == sha and report["drift_check"] is None
    assert [_verb(c) for c in calls] == ["ls-remote"], calls
    state_reads = [k for k in requests if "gitops-environment-" in k]
    assert state_reads == [f"GET /api/block_types/slug/gitops-environment-state/block_documents/name/gitops-{e['env']}"], requests
    assert requests[state_reads[0]] == 1, requests
    # where the environment lives: one read of its GitOps Target block (none here: the control server)
    target_reads = [k for k in requests if "gitops-target" in k]
    assert target_reads == [f"GET /api/block_types/slug/gitops-target/block_documents/name/gitops-target-{e['env']}"], requests
    assert requests[target_reads[0]] == 1, requests
    assert [k for k in requests if any(r in k for r in TARGET_READS)] == [], requests
    assert [k for k in requests if "concurrency_limits" in k or k.startswith(("PATCH /api/block_documents", "PUT /api/block_documents"))] == [], requests
    state, _ = read_state(e["env"])
    assert state.last_applied_revision == sha and len(state.history) == 1

    # asked for a full check, the same reconcile reads the targets (what the cheap path saves)
    code, report, requests, calls = _measured_apply(e, proxy, git_log, "--full-check")
    assert code == 0 and report["status"] == "in-sync" and report["drift_check"] == "full read: asked for", report
    assert any(any(r in k for r in TARGET_READS) for k in requests), requests
