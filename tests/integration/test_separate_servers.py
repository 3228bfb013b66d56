"""Environments on separate Prefect servers (README "Running in production": Environments on separate
servers or workspaces): the session's server is the control plane, where the flows run and the GitOps
Target blocks are; a second real Prefect server, with basic auth (PREFECT_SERVER_API_AUTH_STRING, as a
self-hosted server has it), is where the environments with a `gitops-target-<env>` block live.

Everything is asserted by reading both servers back: the writes, the record, the history and the lock
on the environment's server; the flow run, its artifact and its events on the control server; the
promotion gate and `promote` read the source environment's record from the source's server; the
target's auth string (a canary) appears nowhere on the control server nor in the record; a wrong one
fails the run with a typed error and writes nothing, an unreachable server fails it as transient.
Wall time: 55-110 s alone on a loaded 2-core machine, the session server and the second server's start (each
10-25 s) included; the tests themselves ~35 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

import httpx
import pytest

from helpers import (
    GitRepo,
    create_deployment,
    create_pool,
    deployment_job_variables,
    global_limit,
    read_artifacts,
    read_events,
    read_state,
    run,
    run_reconcile_flow,
    uid,
)
from prefect_gitops.local_server import free_port, running_server, server_env
from test_secret_canaries import encoded_forms

CONTROL_URL = os.environ["PREFECT_API_URL"]


@pytest.fixture(scope="module")
def prod_server(tmp_path_factory):
    """A second Prefect server with its own home, port and database, behind basic auth."""
    home = tmp_path_factory.mktemp("prod-server")
    port = free_port()
    auth = f"admin:canary-target-{secrets.token_hex(12)}"
    env = {**os.environ, **server_env(home, port), "PREFECT_SERVER_API_AUTH_STRING": auth}
    with running_server(Path(home), port, env):
        yield {"url": f"http://127.0.0.1:{port}/api", "auth": auth, "port": port}


@contextlib.contextmanager
def on(server: dict):
    """The helpers (they use get_client()) talking to `server` instead of the control server."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server["url"], PREFECT_API_AUTH_STRING: server["auth"]}):
        yield


def save_target(environment: str, api_url: str, auth_string: str | None) -> None:
    """The GitOps Target block on the control server, its auth string in a Secret block of its own."""
    from prefect.blocks.system import Secret

    from prefect_gitops.blocks import GitOpsTarget

    secret = None
    if auth_string is not None:
        Secret(value=auth_string).save(f"prefect-{environment}-auth", overwrite=True)
        secret = Secret.load(f"prefect-{environment}-auth")
    GitOpsTarget(api_url=api_url, auth_string=secret).save(f"gitops-target-{environment}", overwrite=True)


def estate_on_both(u: str) -> dict:
    """The same pool and deployment names on both servers (as two environments' servers would have)."""
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    return {"pool": pool, "daily": f"{flow}/daily"}


def control_post(path: str, body: dict) -> list:
    response = httpx.post(f"{CONTROL_URL}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


@pytest.fixture(scope="module")
def applied_prod(prod_server, tmp_path_factory):
    """Environment `p<u>` on the prod server, reconciled once by a flow run on the control server."""
    u = uid()
    env = f"p{u}"
    with on(prod_server):
        names = estate_on_both(u)
    names_on_control = estate_on_both(u)
    assert names_on_control == names
    save_target(env, prod_server["url"], prod_server["auth"])
    repo = GitRepo(tmp_path_factory.mktemp("gitops") / "repo")
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")  # promote pushes to it
    sha = repo.commit_env(env, {"deployments": {names["daily"]: {"job_variables": {"image": "flows:2.0.0"}}}})
    state, report = run_reconcile_flow(environment=env, source_url=repo.url)
    return dict(u=u, env=env, repo=repo, sha=sha, state=state, report=report, **names)


def test_an_environment_with_a_target_block_is_written_and_recorded_on_its_own_server(applied_prod, prod_server):
    e = applied_prod
    assert e["state"].is_completed(), e["report"]
    assert e["report"]["status"] == "applied" and e["report"]["applied"] == 1, e["report"]

    # the writes, the record, the history and the lock: on the prod server only
    with on(prod_server):
        assert deployment_job_variables(e["daily"]) == {"namespace": "jobs", "image": "flows:2.0.0"}
        state, handle = read_state(e["env"])
        limit = global_limit(f"prefect-gitops-env-{e['env']}")
    assert handle is not None and state.last_applied_revision == e["sha"] and len(state.history) == 1
    assert limit is not None and limit.limit == 1 and limit.active_slots == 0  # taken there, and freed
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs"}  # control's same-named one untouched
    assert read_state(e["env"])[1] is None
    assert global_limit(f"prefect-gitops-env-{e['env']}") is None

    # the flow run, its artifact and its events: on the control server
    flow_run_id = e["report"]["flow_run_id"]
    [artifact] = read_artifacts(f"gitops-{e['env']}")
    assert str(artifact.flow_run_id) == flow_run_id
    [applied] = read_events("prefect-gitops.reconcile.applied", e["env"], flow_run_id=flow_run_id)
    assert applied["payload"]["revision"] == e["sha"]
    there = httpx.post(f"{prod_server['url']}/events/filter", auth=tuple(prod_server["auth"].split(":", 1)),
                       json={"filter": {"event": {"prefix": ["prefect-gitops."]}}, "limit": 50}, timeout=30)
    assert there.status_code == 200 and there.json()["events"] == []

    # `status` (the CLI, a process of its own on the control server's settings) reads it from there too
    from helpers import cli_json

    code, shown = cli_json("status", "--env", e["env"])
    assert shown["last_applied_revision"] == e["sha"]


def test_the_target_auth_string_never_reaches_the_control_server_or_the_record(applied_prod, prod_server):
    e = applied_prod
    forms = encoded_forms(prod_server["auth"].split(":", 1)[1])
    flow_run_id = e["report"]["flow_run_id"]
    places = {
        "report": json.dumps(e["report"]),
        "flow run": json.dumps(control_post("/flow_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})),
        "task runs": json.dumps(control_post("/task_runs/filter", {"flow_runs": {"id": {"any_": [flow_run_id]}}})),
        "logs": json.dumps(control_post("/logs/filter", {"logs": {"flow_run_id": {"any_": [flow_run_id]}}})),
        "artifacts": json.dumps(control_post("/artifacts/filter", {"artifacts": {"key": {"any_": [f"gitops-{e['env']}"]}}})),
        "events": json.dumps(read_events("prefect-gitops.reconcile.applied", e["env"], flow_run_id=flow_run_id)),
        "block documents as shown": json.dumps(control_post("/block_documents/filter", {})),
    }
    with on(prod_server):
        state, _ = read_state(e["env"])
    places["recorded state"] = state.model_dump_json()
    assert any(f"gitops-{e['env']}" in text for text in places.values())  # the places are the run's
    leaks = {where for where, text in places.items() for form in forms if form in text.encode()}
    assert leaks == set()


def test_the_promotion_gate_and_promote_read_the_source_record_from_its_server(applied_prod, prod_server):
    """qa<u> lives on the control server and promotes from p<u>, which lives on the prod server: the gate
    passes only because p<u>'s record is read there (the control server has none: "never reconciled")."""
    from prefect_gitops.flows import promote

    e = applied_prod
    qa = f"qa{e['u']}"
    qa_file = {"rollout": {"promotion": {"from": e["env"], "soak_seconds": 0}},
               "deployments": {e["daily"]: {"job_variables": {"image": "flows:2.0.0"}}}}
    e["repo"].commit_env(qa, qa_file)
    state, report = run_reconcile_flow(environment=qa, source_url=e["repo"].url)
    assert state.is_completed() and report["status"] == "applied", report
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs", "image": "flows:2.0.0"}  # control's

    # p<u> moves on (on its server); promote p<u> -> qa<u> commits its image into qa's file
    e["repo"].commit_env(e["env"], {"deployments": {e["daily"]: {"job_variables": {"image": "flows:3.0.0"}}}})
    state, report = run_reconcile_flow(environment=e["env"], source_url=e["repo"].url)
    assert report["status"] == "applied", report
    async def promote_in_process():
        state = await promote(from_environment=e["env"], to_environment=qa, source_url=e["repo"].url,
                              return_state=True)
        return state, await state.result(raise_on_failure=False)

    promoted, result = run(promote_in_process())
    assert promoted.is_completed() and result["status"] == "promoted", result
    assert [(c["target"], c["new"]) for c in result["changes"]] == [(e["daily"], "flows:3.0.0")]
    state, report = run_reconcile_flow(environment=qa, source_url=e["repo"].url)
    assert report["status"] == "applied", report
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs", "image": "flows:3.0.0"}


def test_a_rejected_key_fails_typed_and_writes_nothing(prod_server, tmp_path):
    u = uid()
    env = f"w{u}"
    with on(prod_server):
        names = estate_on_both(u)
    save_target(env, prod_server["url"], "admin:not-the-auth-string")
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"deployments": {names["daily"]: {"job_variables": {"image": "flows:2.0.0"}}}})

    state, report = run_reconcile_flow(environment=env, source_url=repo.url)
    assert state.is_failed() and report["status"] == "failed", report
    assert state.message.startswith(f"reconcile of {env} failed (permanent): "), state.message
    assert report["message"].startswith(
        f"the Prefect server of environment '{env}' ({prod_server['url']}, block gitops-target-{env}) rejected "
        "the block's credentials (HTTP 401)"), report["message"]
    assert "not-the-auth-string" not in json.dumps(report) and "not-the-auth-string" not in (state.message or "")
    with on(prod_server):
        assert deployment_job_variables(names["daily"]) == {"namespace": "jobs"}
        assert read_state(env)[1] is None and global_limit(f"prefect-gitops-env-{env}") is None
    assert read_state(env)[1] is None  # nor on the control server instead


def test_an_unreachable_target_fails_as_transient_naming_it(tmp_path):
    env = f"x{uid()}"
    port = free_port()  # nothing listens there
    save_target(env, f"http://127.0.0.1:{port}/api", None)
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"deployments": {"etl/daily": {"job_variables": {"image": "flows:2.0.0"}}}})

    state, report = run_reconcile_flow(environment=env, source_url=repo.url)
    assert state.is_failed() and report["status"] == "failed", report
    assert state.message.startswith(f"reconcile of {env} failed (transient): "), state.message
    assert f"reading the recorded state of '{env}': cannot reach the Prefect server at http://127.0.0.1:{port}" \
        in report["message"], report["message"]
    assert read_state(env)[1] is None


def test_the_lock_is_taken_on_the_environments_server(applied_prod, prod_server):
    """A slot of p<u>'s lock held on the prod server (as another rollout would hold it) makes the
    reconcile wait there and end Busy; the control server has no such limit to wait on."""
    e = applied_prod
    auth = tuple(prod_server["auth"].split(":", 1))
    e["repo"].commit_env(e["env"], {"rollout": {"lock_timeout_seconds": 1},
                                    "deployments": {e["daily"]: {"job_variables": {"image": "flows:4.0.0"}}}})
    held = httpx.post(f"{prod_server['url']}/v2/concurrency_limits/increment-with-lease", auth=auth, timeout=30,
                      json={"names": [f"prefect-gitops-env-{e['env']}"], "slots": 1, "mode": "concurrency",
                            "lease_duration": 60})
    assert held.status_code == 200 and held.json()["limits"], held.text
    try:
        state, report = run_reconcile_flow(environment=e["env"], source_url=e["repo"].url)
    finally:
        httpx.post(f"{prod_server['url']}/v2/concurrency_limits/decrement-with-lease", auth=auth, timeout=30,
                   json={"lease_id": held.json()["lease_id"]}).raise_for_status()
    assert report["status"] == "busy" and state.name == "Busy", report
    with on(prod_server):
        assert deployment_job_variables(e["daily"])["image"] == "flows:3.0.0"  # nothing written


def test_rollback_restores_the_environment_on_its_server(applied_prod, prod_server):
    """p<u> applied 2.0.0 then 3.0.0 on the prod server: one step back is 2.0.0 there, from p<u>'s
    history there; control's same-named deployment (qa<u>'s, at 3.0.0) is not touched."""
    from prefect_gitops.flows import rollback

    e = applied_prod

    async def rollback_in_process():
        state = await rollback(environment=e["env"], steps=1, return_state=True)
        return state, await state.result(raise_on_failure=False)

    state, report = run(rollback_in_process())
    assert state.is_completed() and report["status"] == "rolled-back" and report["revision"] == e["sha"], report
    with on(prod_server):
        assert deployment_job_variables(e["daily"])["image"] == "flows:2.0.0"
        recorded, _ = read_state(e["env"])
    assert recorded.rolled_back is not None and recorded.rolled_back.to_revision == e["sha"]
    assert deployment_job_variables(e["daily"])["image"] == "flows:3.0.0"


def test_policy_is_read_from_the_control_server(prod_server, tmp_path):
    """The GitOps Policy block named by the run is the control server's, for an environment elsewhere."""
    from prefect_gitops.blocks import GitOpsPolicy

    u = uid()
    env = f"y{u}"
    with on(prod_server):
        names = estate_on_both(u)
    save_target(env, prod_server["url"], prod_server["auth"])
    GitOpsPolicy(all_targets={"denied_keys": ["namespace"]}).save(f"policy-{u}")
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"deployments": {names["daily"]: {"job_variables": {"namespace": "other"}}}})

    state, report = run_reconcile_flow(environment=env, source_url=repo.url, policy_block=f"policy-{u}")
    assert state.is_failed() and "namespace" in report["message"] and "policy" in report["message"], report
    with on(prod_server):
        assert deployment_job_variables(names["daily"]) == {"namespace": "jobs"}
