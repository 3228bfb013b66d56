"""A reconcile from a GitLab source block over authenticated Git HTTP, reporting a commit status."""

from __future__ import annotations

import json
import secrets
import subprocess

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

        state, report = run(go())
        assert state.is_completed(), report
        assert report["applied"] == 1 and deployment_job_variables(f"{flow}/daily") == {"image": "flows:gl-1"}
        assert [(s["sha"], s["body"]["state"], s["body"]["name"]) for s in server.statuses] == [
            (sha, "success", f"prefect-gitops/{env}")]

        # a wrong token: a clear error, nothing written, no token anywhere
        GitOpsSource(url=url, gitlab_credentials=GitLabCredentials(token="wrong-" + token, url=server.api_url),
                     gitlab_project="platform/gitops").save(block, overwrite=True)
        (work / "environments" / f"{env}.yaml").write_text(
            json.dumps({"deployments": {f"{flow}/daily": {"job_variables": {"image": "flows:gl-2"}}}}))
        subprocess.run(["git", *GIT_ID, "-C", str(work), "commit", "-q", "-am", "qa 2"], check=True)
        subprocess.run(["git", "-C", str(work), "push", "-q", "origin", "main"], check=True, capture_output=True)
        state, report = run(go())
        assert state.is_failed()
        assert "GitLab rejected the token" in report["message"]
        assert deployment_job_variables(f"{flow}/daily") == {"image": "flows:gl-1"}

    everything = json.dumps(report) + str(state.message) + read_artifacts(f"gitops-{env}")[0].data
    everything += json.dumps(read_events("prefect-gitops.reconcile.failed", env))
    everything += json.dumps(read_events("prefect-gitops.reconcile.applied", env))
    everything += read_state(env)[0].model_dump_json()

    async def logs(client):
        return [log.message for log in await client.read_logs(limit=200)]

    everything += "\n".join(run(_with_client(logs)))
    assert token not in everything
