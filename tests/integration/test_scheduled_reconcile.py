"""The scheduled path, end to end: nobody triggers anything.

The control flows are deployed from the project's own prefect.yaml (through `prefect-file`, with a
10-second schedule instead of 5 minutes), a real `prefect worker` serves the control pool, a change is
committed to the GitOps repo, and the server's scheduler starts the reconcile that applies it.
"""

from __future__ import annotations

import os
import time

import pytest

from control_plane import ControlPlane
from helpers import _with_client, deployment_job_variables, pointed_at, read_deployment, read_state, run

INTERVAL = 10
SCHEDULED_RUN_DEADLINE = 300


@pytest.fixture(scope="module")
def own_server(tmp_path_factory):
    """A Prefect server of this module's own, for everything in it (the helpers in this process, the deploy,
    the worker and the flow runs it starts): the production-shaped one (PostgreSQL, Redis, the scheduler in
    a services process of its own, as Prefect's self-hosting guide runs it), where this machine has its
    parts, else a SQLite server.

    Why not the session's SQLite server: on a loaded machine (CI's two cores, three test workers each with
    its server, flow runs and CLIs) a SQLite server collapsed under this module's runs in three CI-shaped
    runs, even a fresh one of its own: writers waiting on SQLite's one write lock held all 15 pooled
    connections ("QueuePool limit ... reached", "database is locked"), every write got 503, and the
    worker took no scheduled run for 5 minutes. PostgreSQL has no such single lock."""
    from prefect_gitops.production_server import missing_parts, running_production_server

    home = tmp_path_factory.mktemp("scheduled-server")
    if missing_parts() is None:
        with running_production_server(home, replicas=1) as server, pointed_at(server.api_urls[0]):
            yield server.api_urls[0]
        return
    from prefect_gitops.local_server import free_port, running_server, server_env

    port = free_port()
    env = server_env(home, port)
    with running_server(home, port, {**os.environ, **env}), pointed_at(env["PREFECT_API_URL"]):
        yield env["PREFECT_API_URL"]


@pytest.fixture(scope="module")
def control_plane(own_server, tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("control-scheduled"), schedule_interval=INTERVAL).start()
    yield plane
    plane.stop()


def read_flow_run(flow_run_id: str):
    async def go(client):
        return await client.read_flow_run(flow_run_id)

    return run(_with_client(go))


def scheduled_runs_seen(deployment_id) -> str:
    """For a failure's message: the deployment's runs as the server has them (did the scheduler make
    any, in which queue, and did a worker take them?)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client):
        runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                                           limit=20)
        return [f"{r.name}: {r.state_name} expected {r.expected_start_time} queue {r.work_pool_name}/"
                f"{r.work_queue_name} auto {r.auto_scheduled}" for r in runs]

    lines = run(_with_client(go))
    return f"{len(lines)} run(s) of reconcile-qa (up to 20):\n" + "\n".join(lines)


def test_a_commit_is_applied_by_a_scheduled_run(control_plane):
    deployment = read_deployment("gitops-reconcile/reconcile-qa")
    assert [s.schedule.interval.total_seconds() for s in deployment.schedules] == [INTERVAL]

    sha = control_plane.repo.commit_env("qa", control_plane.qa_file("flows:qa-scheduled"))
    # a deadline, not a speed target: the CI's machine is loaded (three test workers, each with its server)
    deadline = time.monotonic() + SCHEDULED_RUN_DEADLINE
    while (state := read_state("qa")[0]).last_applied_revision != sha:
        assert time.monotonic() < deadline, (
            f"no scheduled run applied {sha} within {SCHEDULED_RUN_DEADLINE} s; qa last applied "
            f"{state.last_applied_revision}\n"
            f"{scheduled_runs_seen(deployment.id)}\n" + control_plane.worker_log())
        time.sleep(2)
    assert deployment_job_variables(control_plane.workload) == {"image": "flows:qa-scheduled"}

    entry = next(h for h in state.history if h.revision == sha)
    applier = read_flow_run(entry.flow_run_id)
    assert applier.deployment_id == deployment.id
    assert applier.auto_scheduled and "prefect-gitops-trigger" not in applier.tags  # the scheduler started it


def test_prod_is_reconciled_on_its_schedule_too(control_plane):
    deadline = time.monotonic() + 180
    while read_state("prod")[0].last_applied_revision != control_plane.repo.git("rev-parse", "HEAD"):
        assert time.monotonic() < deadline, "no scheduled run of reconcile-prod applied prod's file"
        time.sleep(2)
    assert deployment_job_variables(control_plane.prod_workload) == {"image": "flows:prod-1"}
