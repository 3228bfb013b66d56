"""README (Rollout gates, one writer per environment): "Two runs that both find the limit (or a shared
control queue, or the state's block types on a new server) missing both create it; the one that loses
that race adopts what the other created and carries on."

Each test runs two real reconciles (`prefect-gitops apply`, each a real flow run in its own process)
at once, each through its own port of a recording reverse proxy in front of the real server
(tests/race_recorder.py). The proxy lets the reads of the raced-for object out only once both runs
have sent one, and records every read and create of it. The tests then check, at the HTTP layer,
that both runs' reads of it went out before either run's create did and the server answered both
that it was missing, and that both runs created it and the server took one create (201) and refused
the other (409): the race really happened. Then the documented outcome, read back from the server: exactly one object, the
runs' exact statuses, everything applied."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from helpers import GitRepo, create_deployment, create_pool, deployment_job_variables, k8s_template, read_state, uid
from race_recorder import RaceRecorder, Route, Target, json_body, wait_all

from prefect_gitops.local_server import free_port, running_server, server_env

RACERS = ["a", "b"]


def race(proxy: RaceRecorder, applies: dict[str, list[str]]) -> dict[str, dict]:
    """`prefect-gitops apply ... --output json` for every racer at once, each through its own port of
    the proxy; the JSON reports. Every run must exit 0 (applied or nothing to do)."""
    processes = {
        racer: subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", *args, "--output", "json"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PREFECT_API_URL": proxy.url(racer)})
        for racer, args in applies.items()}
    done = wait_all(processes, timeout=300)
    reports = {}
    for racer, (code, stdout, stderr) in done.items():
        assert code == 0, f"{racer} exited {code}\nstdout:{stdout[-3000:]}\nstderr:{stderr[-3000:]}\n{proxy.describe()}"
        reports[racer] = json.loads(stdout)
    return reports


def assert_one_create_won(proxy: RaceRecorder) -> None:
    """Both runs sent a create; the server created it once and refused the other with 409."""
    proxy.assert_every_read_missing_before_any_create()
    outcomes = sorted(proxy.final_create_status(r) or 0 for r in RACERS)
    assert outcomes == [201, 409], f"final create statuses {outcomes}\n{proxy.describe()}"


def test_racing_reconciles_of_one_environment_create_its_lock_limit_once(tmp_path):
    race_for_the_lock_limit(tmp_path, os.environ["PREFECT_API_URL"])


def race_for_the_lock_limit(tmp_path, apis: str | Route) -> None:
    """Two reconciles of one environment, each through the proxy to `apis` (the server, or a route to
    a replica per request), race to create the environment's lock: one create wins, then one run
    applies and the other waits for the lock and finds the revision in sync, and the slot ends free."""
    u = uid()
    env, flow, pool = f"race{u}", f"race-{u}", f"k8s-race-{u}"
    create_pool(pool, image_default="flows:0")
    create_deployment(flow, "daily", pool)
    repo = GitRepo(tmp_path / "gitops")
    sha = repo.commit_env(env, {"rollout": {"lock_timeout_seconds": 240},
                                "deployments": {f"{flow}/daily": {"job_variables": {"image": "flows:1"}}}})
    limit = f"prefect-gitops-env-{env}"
    target = Target(
        name=f"concurrency limit {limit}",
        is_read=lambda method, path: method == "GET" and path == f"/api/v2/concurrency_limits/{limit}",
        is_create=lambda method, path, body: (method == "POST" and path.rstrip("/") == "/api/v2/concurrency_limits"
                                              and json_body(body).get("name") == limit),
        found_missing=lambda status, body: status == 404)

    with RaceRecorder(RACERS, target, apis) as proxy:
        reports = race(proxy, {r: ["--source", repo.url, "--env", env] for r in RACERS})

    assert_one_create_won(proxy)
    # the lock then did its job: one run applied the revision, the other waited and found it in sync
    assert sorted((rep["status"], rep["applied"], rep["revision"]) for rep in reports.values()) == [
        ("applied", 1, sha), ("in-sync", 0, sha)], reports

    async def limits(client):
        found, offset = [], 0
        while page := await client.read_global_concurrency_limits(limit=200, offset=offset):
            found += page
            offset += len(page)
        return [(lim.limit, lim.active, lim.active_slots) for lim in found if lim.name == limit]

    assert asyncio.run(_on(os.environ["PREFECT_API_URL"], limits)) == [(1, True, 0)]
    assert deployment_job_variables(f"{flow}/daily") == {"image": "flows:1"}
    state, _ = read_state(env)
    assert (state.last_applied_revision, state.condition.reason) == (sha, "InSync")


def test_racing_reconciles_of_two_environments_create_their_shared_control_queue_once(tmp_path):
    u = uid()
    flow, pool = f"race-q-{u}", f"k8s-race-q-{u}"
    create_pool(pool, image_default="flows:0")
    envs = {r: f"race{r}{u}" for r in RACERS}
    repo = GitRepo(tmp_path / "gitops")
    for racer, env in envs.items():
        create_deployment(flow, racer, pool)
        repo.write(f"environments/{env}.yaml", {
            "rollout": {"control_queue": {"work_pools": [pool]}},
            "deployments": {f"{flow}/{racer}": {"job_variables": {"image": f"flows:{racer}"}}}})
    sha = repo.commit("two environments, one control queue")
    queues_path = f"/api/work_pools/{pool}/queues"
    target = Target(
        name=f"work queue {pool}/prefect-gitops",
        is_read=lambda method, path: method == "POST" and path == f"{queues_path}/filter",
        is_create=lambda method, path, body: (method == "POST" and path.rstrip("/") == queues_path
                                              and json_body(body).get("name") == "prefect-gitops"),
        found_missing=lambda status, body: status == 200 and "prefect-gitops" not in {q["name"] for q in json.loads(body)})

    with RaceRecorder(RACERS, target, os.environ["PREFECT_API_URL"]) as proxy:
        reports = race(proxy, {r: ["--source", repo.url, "--env", envs[r]] for r in RACERS})

    assert_one_create_won(proxy)
    for racer, rep in reports.items():
        # the deployment's image and the queue's priority, concurrency limit and paused flag
        assert (rep["status"], rep["applied"], rep["revision"]) == ("applied", 4, sha), rep

    async def queues(client):
        return sorted((q.name, q.priority, q.concurrency_limit, q.is_paused)
                      for q in await client.read_work_queues(work_pool_name=pool))

    # one control queue, and the pool's default queue shifted below it
    assert asyncio.run(_on(os.environ["PREFECT_API_URL"], queues)) == [
        ("default", 2, None, False), ("prefect-gitops", 1, 2, False)]
    for racer, env in envs.items():
        assert deployment_job_variables(f"{flow}/{racer}") == {"image": f"flows:{racer}"}
        state, _ = read_state(env)
        assert (state.last_applied_revision, state.condition.reason) == (sha, "Applied")
        assert set(state.inventory.work_queues) == {f"{pool}/prefect-gitops"}


def test_racing_first_reconciles_on_a_new_server_register_the_state_block_type_once(tmp_path):
    """A server that has never seen prefect-gitops: the first state writes of two environments both
    register the state's block type."""
    from prefect.client.schemas.actions import WorkPoolCreate

    from prefect_gitops.adapters.prefect_api import PrefectAPI
    from prefect_gitops.adapters.state_store import STATE_BLOCK_TYPE

    home, port = tmp_path / "server", free_port()
    home.mkdir()
    server = server_env(home, port)
    api_url = server["PREFECT_API_URL"]
    u = uid()
    envs = {r: f"new{r}{u}" for r in RACERS}
    repo = GitRepo(tmp_path / "gitops")
    for racer, env in envs.items():
        repo.write(f"environments/{env}.yaml", {"work_pools": {f"k8s-{racer}": {"job_variables": {"image": f"flows:{racer}"}}}})
    sha = repo.commit("two environments on a new server")
    target = Target(
        name=f"block type {STATE_BLOCK_TYPE}",
        is_read=lambda method, path: method == "GET" and path == f"/api/block_types/slug/{STATE_BLOCK_TYPE}",
        is_create=lambda method, path, body: (method == "POST" and path.rstrip("/") == "/api/block_types"
                                              and json_body(body).get("slug") == STATE_BLOCK_TYPE),
        found_missing=lambda status, body: status == 404)

    with running_server(home, port, env={**os.environ, **server}):
        async def setup(client):
            assert STATE_BLOCK_TYPE not in {t.slug for t in await client.read_block_types()}
            for racer in RACERS:
                await client.create_work_pool(WorkPoolCreate(name=f"k8s-{racer}", type="kubernetes",
                                                             base_job_template=k8s_template()))

        asyncio.run(_on(api_url, setup))
        with RaceRecorder(RACERS, target, api_url) as proxy:
            reports = race(proxy, {r: ["--source", repo.url, "--env", envs[r]] for r in RACERS})

        async def outcome(client):
            types = [t for t in await client.read_block_types() if t.slug == STATE_BLOCK_TYPE]
            schemas = [s for s in await client.read_block_schemas() if types and s.block_type_id == types[0].id]
            states = {r: (await PrefectAPI(client).read_state(env, history=False))[0] for r, env in envs.items()}
            defaults = {r: (await client.read_work_pool(f"k8s-{r}")).base_job_template["variables"]["properties"]
                        ["image"].get("default") for r in RACERS}
            return len(types), len(schemas), states, defaults

        n_types, n_schemas, states, defaults = asyncio.run(_on(api_url, outcome))

    assert_one_create_won(proxy)
    for racer, rep in reports.items():
        assert (rep["status"], rep["applied"], rep["revision"]) == ("applied", 1, sha), rep
    assert (n_types, n_schemas) == (1, 1)
    assert {r: (s.last_applied_revision, s.condition.reason) for r, s in states.items()} == {
        r: (sha, "Applied") for r in RACERS}
    assert defaults == {r: f"flows:{r}" for r in RACERS}


async def _on(api_url: str, fn):
    """`fn(client)` with a client of the server at `api_url` (the session's, or a test's own)."""
    from prefect.client.orchestration import PrefectClient

    async with PrefectClient(api_url) as client:
        return await fn(client)
