"""Work queues from Git, and the control queue: a reconcile run is picked ahead of a backlog by a real worker."""

from __future__ import annotations

import time
from pathlib import Path

from helpers import (
    GitRepo,
    _with_client,
    cli_json_here,
    create_canary_deployment,
    create_canary_pool,
    process_worker,
    create_pool,
    run,
    uid,
    wait_for_change_event,
)
from prefect_gitops.state import utcnow

REPO_ROOT = Path(__file__).resolve().parents[2]


def queues(pool: str) -> dict:
    async def go(client):
        return {q.name: (q.priority, q.concurrency_limit, q.is_paused) for q in await client.read_work_queues(work_pool_name=pool)}

    return run(_with_client(go))


def test_work_queues_are_created_kept_and_drift_corrected(tmp_path):
    u = uid()
    env, pool = f"q{u}", f"k8s-{u}"
    create_pool(pool)
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"drift": {"check_interval_seconds": 0},
                          "rollout": {"control_queue": {"concurrency_limit": 2}},
                          "work_pools": {pool: {"work_queues": {"critical": {"priority": 2, "concurrency_limit": 5}}}}})
    code, report = cli_json_here("apply", "--source", repo.url, "--env", env)
    assert report["status"] == "applied"
    got = queues(pool)
    assert got["prefect-gitops"] == (1, 2, False)
    assert got["critical"] == (2, 5, False)
    assert got["default"][0] == 3  # shifted down by the server, not managed
    # converged: the server's shifting of priorities is not mistaken for drift
    code, report = cli_json_here("plan", "--source", repo.url, "--env", env, check_codes=(0,))
    assert report["changes"] == []

    async def edit(client):
        q = await client.read_work_queue_by_name("critical", work_pool_name=pool)
        await client.update_work_queue(q.id, concurrency_limit=50)
        return q.id

    edited = utcnow()
    queue_id = run(_with_client(edit))
    # the drift check asks the event log first: the edit shows there once the server persisted it
    wait_for_change_event("prefect.work-queue.updated", f"prefect.work-queue.{queue_id}", edited)
    code, report = cli_json_here("apply", "--source", repo.url, "--env", env, "--quick")
    assert report["drift_check"].startswith("full read: "), report
    assert [(c["target"], c["key"], c["reason"]) for c in report["changes"]] == [(f"{pool}/critical", "concurrency_limit", "drift")]
    assert queues(pool)["critical"][1] == 5


def test_reconcile_on_the_control_queue_is_picked_before_a_backlog(tmp_path):
    u = uid()
    env, pool = f"cq{u}", f"proc-{u}"
    create_canary_pool(pool)
    repo = GitRepo(tmp_path / "gitops")
    repo.commit_env(env, {"rollout": {"control_queue": {}}, "work_pools": {pool: {}}})
    cli_json_here("apply", "--source", repo.url, "--env", env)
    assert queues(pool)["prefect-gitops"][0] == 1

    backlog_deployment = create_canary_deployment(f"backlog-{u}", pool)

    async def schedule(client):
        backlog = [await client.create_flow_run_from_deployment(backlog_deployment, tags=["backlog"]) for _ in range(4)]
        flow_id = await client.create_flow_from_name("gitops-reconcile")
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"reconcile-{u}", work_pool_name=pool, work_queue_name="prefect-gitops",
            entrypoint="flows/reconcile.py:reconcile",
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO_ROOT)}}])
        control = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"environment": env, "source_url": repo.url, "dry_run": True})
        return [r.id for r in backlog], control.id

    backlog_ids, control_id = run(_with_client(schedule))
    with process_worker(pool, tmp_path / "worker.log", "--limit", "1"):
        async def read(client):
            return await client.read_flow_run(control_id), [await client.read_flow_run(i) for i in backlog_ids]

        deadline = time.monotonic() + 180
        while True:
            control, backlog = run(_with_client(read))
            if control.state.is_final() or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert control.state.is_completed(), (control.state, (tmp_path / "worker.log").read_text()[-3000:])
        while not any(r.start_time for r in backlog) and time.monotonic() < deadline:
            time.sleep(1)  # the backlog runs once the control run is done
            control, backlog = run(_with_client(read))
        started = [r.start_time for r in backlog if r.start_time is not None]
        assert started, "the worker never started the backlog"
        assert all(control.start_time < s for s in started), (control.start_time, started)
