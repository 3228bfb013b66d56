"""The storm: many reconciles of one environment started at once while Git moves through revisions.

The control plane is deployed the way users deploy it (tests/integration/control_plane.py: prefect.yaml,
a real `prefect worker`; the schedules paused, see below). Half of the storm is
`run_deployment` of reconcile-qa (the deployment's concurrency limit queues them: ENQUEUE), half is
`prefect-gitops apply` run by hand at the same moment (no deployment limit: only the environment lock
keeps them apart). Git moves on each time the latest revision has been applied, until K revisions or
two thirds of the storm has ended.

What must hold, read back from the server:
- one writer at a time: the task runs that write (a wave's writes, the record) of different flow runs
  never overlap in time;
- nothing lost: after the storm (and one more reconcile, as the next tick, if the storm's last fetch
  came before Git's last move) the deployment runs Git's last
  revision and the record says it is applied;
- nothing doubled: no revision is in the history as applied twice, by this storm's runs;
- every run ends as documented: deployment runs Completed or Busy (status.py's RunEnd), the applies
  exit 0 or 3; none Failed (a run that fetched a revision, waited for the lock and found a newer one
  applied ends "up to date", not refused as a rewritten history).

Runs: 4 at once (PREFECT_GITOPS_FULL_TRIALS=1: 20), 3 revisions (full: 5). Seeded: the order in which the
two kinds of reconciles are started (seed in every assertion message). Wall time: about 165 s (the
control plane ~25 s of it) on a 2-core machine loaded 4x over; a good part is the worker starting a process
per deployment run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))  # the shared ControlPlane
from control_plane import REPO_ROOT, ControlPlane  # noqa: E402
from figures import full_trials, record, trial_count  # noqa: E402
from helpers import _with_client, deployment_job_variables, read_state, run  # noqa: E402

SEED = int(os.environ.get("PREFECT_GITOPS_TRIAL_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
DEPLOYMENT = "gitops-reconcile/reconcile-qa"
WRITING_TASKS = (": write ", "record ")  # task run names of the steps that write (reconcile.py)


def _start_deployment_runs(count: int) -> list[str]:
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    async def one() -> str:
        # SQLite answers 503 while its writer is busy; Prefect's client retries a few times, and on a
        # loaded machine that is not always enough: the storm's own starts must not fail the trial
        for attempt in range(10):
            try:
                return str((await run_deployment(DEPLOYMENT, timeout=0)).id)
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code != 503 or attempt == 9:
                    raise
                await asyncio.sleep(1 + attempt)
        raise AssertionError("unreachable")

    async def go():  # one after the other: a few ms apart, and SQLite answers 503 to a burst of creates
        return [await one() for _ in range(count)]

    return asyncio.run(go())


def _flow_runs(ids: list[str]) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go(client):
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))

    return run(_with_client(go)) if ids else []


def _deployment_runs_since(since) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterStartTime
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client):
        deployment = await client.read_deployment_by_name(DEPLOYMENT)
        return await client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=since)))

    return run(_with_client(go))


def _writing_intervals(flow_run_ids: list[str]) -> dict[str, tuple]:
    """{flow run: (first write task's start, last write task's end)} for runs that wrote."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def go(client):
        return await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids)))

    spans: dict[str, list] = {}
    for task in run(_with_client(go)):
        if any(mark in task.name for mark in WRITING_TASKS):
            assert task.start_time and task.end_time, f"seed {SEED}: unfinished task run {task.name}"
            spans.setdefault(str(task.flow_run_id), []).append((task.start_time, task.end_time))
    return {run_id: (min(s for s, _ in times), max(e for _, e in times)) for run_id, times in spans.items()}


@pytest.mark.skipif(not full_trials(), reason="a long trial (a control plane, reconciles racing on its worker; ~3 min "
                    "on two cores): PREFECT_GITOPS_FULL_TRIALS=1 / tests/reliability/run.py run it; in CI one writer "
                    "per environment is test_rollout_gates' and test_control_deployments' busy run")
def test_storm_of_reconciles_while_git_moves(tmp_path):
    rng = random.Random(SEED)
    runs, revisions = trial_count(4, 20), trial_count(3, 5)
    t0 = time.monotonic()
    # schedules deployed paused: a 10 s schedule makes the server's scheduler insert 100 runs ahead for
    # each reconcile deployment, and on a loaded SQLite server that alone locks the database for minutes
    plane = ControlPlane(tmp_path, schedules_active=False).start()
    print(f"control plane up in {time.monotonic() - t0:.0f} s", file=sys.stderr)
    try:
        _storm(plane, tmp_path, rng, runs, revisions)
    finally:
        plane.stop()


def _storm(plane: ControlPlane, tmp_path: Path, rng: random.Random, runs: int, revisions: int) -> None:
    import datetime as dt

    from prefect_gitops.status import RunEnd

    started = dt.datetime.now(dt.timezone.utc)
    by_hand = runs // 2
    images = [f"flows:storm-{i}" for i in range(1, revisions + 1)]
    shas = [plane.repo.commit_env(plane.env, plane.qa_file(images[0]), "storm 1")]
    order = ["deployment"] * (runs - by_hand) + ["apply"] * by_hand
    rng.shuffle(order)

    applies: list[subprocess.Popen] = []
    env = {**plane.env_vars(), "PREFECT_GITOPS_SOURCE": plane.repo.url}
    for kind in order:  # the applies start as their processes come up; the deployment runs all at once
        if kind == "apply":
            applies.append(subprocess.Popen(
                [sys.executable, "-m", "prefect_gitops", "apply", "--env", plane.env, "--output", "json"],
                cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    deployment_runs = _start_deployment_runs(runs - by_hand)

    storm_start = time.monotonic()
    deadline = storm_start + 600
    while True:  # Git moves on whenever its latest revision is applied, while most of the storm is ahead
        finals = [r for r in _flow_runs(deployment_runs) if r.state is not None and r.state.is_final()]
        ended = len(finals) + sum(p.poll() is not None for p in applies)
        if ended == runs:
            break
        current = deployment_job_variables(plane.workload).get("image")
        if current == images[len(shas) - 1] and len(shas) < revisions and ended < runs * 2 // 3:
            shas.append(plane.repo.commit_env(plane.env, plane.qa_file(images[len(shas)]), f"storm {len(shas) + 1}"))
        assert time.monotonic() < deadline, f"seed {SEED}: the storm did not end in 600 s\n{plane.worker_log()}"
        time.sleep(0.5)

    print(f"storm ended in {time.monotonic() - storm_start:.0f} s", file=sys.stderr)  # shown with -s
    # every run ended as documented
    reports = []
    for proc in applies:
        out, err = proc.communicate()
        assert proc.returncode in (0, 3), f"seed {SEED}: apply exit {proc.returncode}\n{out}\n{err[-3000:]}"
        reports.append(json.loads(out))
    states = {str(r.id): r.state.name for r in _flow_runs(deployment_runs)}
    allowed = {RunEnd.COMPLETED.value, RunEnd.BUSY.value}
    assert set(states.values()) <= allowed, f"seed {SEED}: {states}\n{plane.worker_log()}"

    # nothing lost: Git's last revision is applied (by the storm, else by the next reconcile)
    last = shas[-1]
    if read_state(plane.env)[0].last_applied_revision != last:
        deployment_runs += _start_deployment_runs(1)  # what the next schedule tick does
    while (state := read_state(plane.env)[0]).last_applied_revision != last:
        assert time.monotonic() < deadline, f"seed {SEED}: {last[:12]} never applied\n{plane.worker_log()}"
        time.sleep(0.5)
    assert deployment_job_variables(plane.workload)["image"] == images[len(shas) - 1], f"seed {SEED}"  # the last committed
    assert not state.has_unfinished_writes(), f"seed {SEED}"

    # nothing doubled: each revision at most once in the history as applied (this storm's entries)
    storm_runs = set(deployment_runs) | {r["flow_run_id"] for r in reports} | {
        str(r.id) for r in _deployment_runs_since(started)}
    applied = [e.revision for e in state.history if e.outcome == "applied" and e.flow_run_id in storm_runs]
    assert last in applied, f"seed {SEED}: {applied}"
    assert len(applied) == len(set(applied)), f"seed {SEED}: a revision applied twice: {applied}"
    assert set(applied) <= set(shas), f"seed {SEED}: {applied} vs {shas}"

    # one writer at a time: the writing task runs of different flow runs never overlap
    writers = [e.flow_run_id for e in state.history if e.flow_run_id in storm_runs]
    spans = _wait_for_spans(writers)
    ordered = sorted(spans.items(), key=lambda item: item[1][0])
    for (a, (_, a_end)), (b, (b_start, _)) in zip(ordered, ordered[1:]):
        assert a_end <= b_start, f"seed {SEED}: flow runs {a} and {b} wrote at the same time: {ordered}"

    record("storm", converged=True, doubled=len(applied) - len(set(applied)),
           faults={"concurrent-runs": runs, "git-moves": len(shas)})


def _wait_for_spans(writers: list[str], wait: float = 90.0) -> dict[str, tuple]:
    """Task runs reach the server through the events pipeline: wait until every writer's are there."""
    deadline = time.monotonic() + wait
    while True:
        spans = _writing_intervals(writers)
        if set(writers) <= set(spans) or time.monotonic() > deadline:
            assert set(writers) <= set(spans), f"seed {SEED}: no writing task runs for {set(writers) - set(spans)}"
            return spans
        time.sleep(0.5)


def test_a_run_superseded_while_it_waited_for_the_lock_has_nothing_to_do(tmp_path):
    """What the storm can produce by chance, made certain: run X fetches revision 1, and while it waits for
    the environment's lock another run applies revision 2 (its child). X then holds a revision older than
    the applied one: it must end up to date (the newer revision holds it), not refused as a rewritten
    history and not writing revision 1 over revision 2. The wait is the reconcile's own lock seam (the
    `lock` argument), entered by the other run's real reconcile before X's lock is granted."""
    import contextlib

    from prefect.client.orchestration import get_client

    from helpers import GitRepo, create_deployment, create_pool, uid
    from prefect_gitops.adapters.git import GitSource
    from prefect_gitops.adapters.locks import environment_lock
    from prefect_gitops.adapters.prefect_api import PrefectAPI
    from prefect_gitops.reconcile import ReconcileRequest, reconcile
    from prefect_gitops.status import Status

    u = uid()
    env, pool, flow = f"stale{u}", f"stale-{u}", f"stale-{u}"
    create_pool(pool, image_default="flows:0")
    create_deployment(flow, "job", pool)
    repo = GitRepo(tmp_path / "gitops")
    desired = lambda image: {"deployments": {f"{flow}/job": {"job_variables": {"image": image}}}}  # noqa: E731
    repo.commit_env(env, desired("flows:1"))

    async def go():
        async with get_client() as client:
            api = PrefectAPI(client)

            def request() -> ReconcileRequest:
                return ReconcileRequest(environment=env, source=GitSource(repo.url, cache_dir=tmp_path / "cache"))

            first = await reconcile(request(), api, lock=lambda e, t: environment_lock(client, e, t))
            assert first.status == Status.APPLIED, first.message  # revision 1 is applied; X will fetch it
            moved: list[str] = []

            @contextlib.asynccontextmanager
            async def lock_granted_after_another_run(e: str, timeout: float):
                # X has fetched revision 1 by now; Git moves on and another run applies revision 2
                moved.append(repo.commit_env(env, desired("flows:2"), "revision 2"))
                other = await reconcile(request(), api, lock=lambda e, t: environment_lock(client, e, t))
                assert other.status == Status.APPLIED and other.revision == moved[0], other.message
                async with environment_lock(client, e, timeout):
                    yield

            x_request = request()
            x_request.full_check = True  # as a person's apply: past the "up to date" shortcut to the lock
            x = await reconcile(x_request, api, lock=lock_granted_after_another_run)
            state, _ = await api.read_state(env)
            return x, state, moved[0]

    x, state, newer = run(go())
    assert x.status == Status.UP_TO_DATE, f"{x.status}: {x.message}"
    assert "superseded" in x.message
    assert state.last_applied_revision == newer and state.condition.ready, state.condition
    from helpers import deployment_job_variables as job_variables

    assert job_variables(f"{flow}/job")["image"] == "flows:2"  # revision 1 was not written over revision 2
