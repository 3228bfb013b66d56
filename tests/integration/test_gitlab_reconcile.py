"""A reconcile from a GitLab source block over authenticated Git HTTP, reporting a commit status."""

from __future__ import annotations

import json
import secrets
import subprocess
import time

from git_http_server import GitHttpServer
from helpers import (
    GIT_ID,
    _with_client,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_artifacts,
    read_events,
    read_state,
    run,
    uid,
)


def test_gitlab_block_source_reconciles_and_reports_a_commit_status(tmp_path):
    from prefect_gitlab import GitLabCredentials

    from prefect_gitops.blocks import GitOpsSource
    from prefect_gitops.flows import reconcile

    u = uid()
    env, pool, flow = f"gl{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool)
    create_deployment(flow, "daily", pool)
    token = "glpat-" + secrets.token_hex(12)
    bare = tmp_path / "srv" / "platform" / "gitops.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    work = tmp_path / "work"
    subprocess.run(["git", "clone", "-q", str(bare), str(work)], check=True, capture_output=True)
    (work / "environments").mkdir()
    (work / "environments" / f"{env}.yaml").write_text(
        json.dumps({"deployments": {f"{flow}/daily": {"job_variables": {"image": "flows:gl-1"}}}}))
    subprocess.run(["git", *GIT_ID, "-C", str(work), "add", "-A"], check=True)
    subprocess.run(["git", *GIT_ID, "-C", str(work), "commit", "-q", "-m", "qa"], check=True)
    subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
    sha = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()

    with GitHttpServer(tmp_path / "srv", token) as server:
        url = server.url_for("platform/gitops")
        block = f"gitlab-{u}"
        GitOpsSource(url=url, gitlab_credentials=GitLabCredentials(token=token, url=server.api_url),
                     gitlab_project="platform/gitops").save(block)

        async def go():
            state = await reconcile(environment=env, source_block=block, return_state=True)
            return state, await state.result(raise_on_failure=False)

        def commit(doc: dict, message: str) -> str:
            (work / "environments" / f"{env}.yaml").write_text(json.dumps(doc))
            subprocess.run(["git", *GIT_ID, "-C", str(work), "commit", "-q", "-am", message], check=True)
            subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
            return subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()

        flow_run_ids = []
        state, report = run(go())
        flow_run_ids.append(state.state_details.flow_run_id)
        assert state.is_completed(), report
        assert report["applied"] == 1 and deployment_job_variables(f"{flow}/daily") == {"image": "flows:gl-1"}
        assert [(s["sha"], s["body"]["state"], s["body"]["name"]) for s in server.statuses] == [
            (sha, "success", f"prefect-gitops/{env}")]

        # a refused file: the revision gets the status "failed"
        bad = commit({"deployments": {f"{flow}/no-such": {"job_variables": {"image": "flows:gl-x"}}}}, "bad")
        state, report = run(go())
        flow_run_ids.append(state.state_details.flow_run_id)
        assert state.is_failed() and server.statuses[-1]["sha"] == bad
        assert server.statuses[-1]["body"]["state"] == "failed"

        # another rollout holds the environment: the run ends Busy and the revision gets "canceled"
        busy = commit({"rollout": {"lock_timeout_seconds": 1},
                       "deployments": {f"{flow}/daily": {"job_variables": {"image": "flows:gl-1"}}}}, "busy")

        async def go_while_locked():
            from prefect import get_client

            from prefect_gitops.adapters.locks import environment_lock

            async with get_client() as client, environment_lock(client, env, 30):
                return await go()

        state, report = run(go_while_locked())
        flow_run_ids.append(state.state_details.flow_run_id)
        assert state.name == "Busy" and report["status"] == "busy"
        assert (server.statuses[-1]["sha"], server.statuses[-1]["body"]["state"]) == (busy, "canceled")

        # a wrong token: a clear error, nothing written, no token anywhere
        GitOpsSource(url=url, gitlab_credentials=GitLabCredentials(token="wrong-" + token, url=server.api_url),
                     gitlab_project="platform/gitops").save(block, overwrite=True)
        (work / "environments" / f"{env}.yaml").write_text(
            json.dumps({"deployments": {f"{flow}/daily": {"job_variables": {"image": "flows:gl-2"}}}}))
        subprocess.run(["git", *GIT_ID, "-C", str(work), "commit", "-q", "-am", "qa 2"], check=True)
        subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
        state, report = run(go())
        flow_run_ids.append(state.state_details.flow_run_id)
        assert state.is_failed()
        assert "GitLab rejected the token" in report["message"]
        assert deployment_job_variables(f"{flow}/daily") == {"image": "flows:gl-1"}

    everything = json.dumps(report) + str(state.message) + read_artifacts(f"gitops-{env}")[0].data
    # the scan below reads the events of the first (applied) and the last (wrong token) run
    failed_events = read_events("prefect-gitops.reconcile.failed", env, flow_run_id=flow_run_ids[-1])
    applied_events = read_events("prefect-gitops.reconcile.applied", env, flow_run_id=flow_run_ids[0])
    everything += json.dumps(failed_events) + json.dumps(applied_events)
    everything += read_state(env)[0].model_dump_json()

    async def logs(client):
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        return [log.message for log in await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200)]

    # the logs of this test's own runs (not the shared server's oldest 200), each run's there
    deadline = time.monotonic() + 30  # logs reach the server in batches, after the run's final state
    while True:
        run_logs = run(_with_client(logs))
        if any("GitLab rejected the token" in m for m in run_logs):
            break
        assert time.monotonic() < deadline, f"the last run's logs never arrived: {run_logs}"
        time.sleep(0.5)
    assert len(run_logs) >= len(flow_run_ids)
    everything += "\n".join(run_logs)
    assert token not in everything
