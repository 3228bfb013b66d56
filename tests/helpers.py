"""Real Git repositories and real Prefect objects for the integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import yaml

GIT_ID = ["-c", "user.name=Test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


def uid() -> str:
    return uuid.uuid4().hex[:8]


class GitRepo:
    """A real repository made with the git CLI; `url` is its file:// URL."""

    def __init__(self, root: Path, branch: str = "main"):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", branch)

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *GIT_ID, *args], cwd=self.root, check=True,
                              capture_output=True, text=True).stdout.strip()

    def write(self, relative: str, content: str | dict) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))

    def commit(self, message: str = "change", **files: str | dict) -> str:
        for relative, content in files.items():
            self.write(relative, content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def commit_env(self, env: str, content: str | dict, message: str = "change") -> str:
        self.write(f"environments/{env}.yaml", content)
        return self.commit(message)


@contextlib.contextmanager
def pointed_at(api_url: str):
    """The module's CLI runs (os.environ) and in-process clients (Prefect's settings) talk to `api_url`
    instead of the session's server, and back to it afterwards."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    ui_url = api_url.removesuffix("/api")
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    os.environ.update(PREFECT_API_URL=api_url, PREFECT_UI_URL=ui_url)
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_UI_URL: ui_url}):
            yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(coro):
    return asyncio.run(coro)


async def _with_client(fn):
    from prefect import get_client

    async with get_client() as client:
        return await fn(client)


def k8s_template() -> dict:
    from prefect_kubernetes.worker import KubernetesWorker

    return KubernetesWorker.get_default_base_job_template()


def create_pool(name: str, image_default: str | None = None) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    template = k8s_template()
    if image_default is not None:
        template["variables"]["properties"]["image"]["default"] = image_default

    async def go(client):
        await client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=template))

    run(_with_client(go))


def create_deployment(flow_name: str, name: str, pool: str, job_variables: dict | None = None) -> str:
    async def go(client):
        flow_id = await client.create_flow_from_name(flow_name)
        return str(await client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool,
                                                  job_variables=job_variables or {}))

    return run(_with_client(go))


def read_deployment(full_name: str) -> Any:
    async def go(client):
        return await client.read_deployment_by_name(full_name)

    return run(_with_client(go))


def deployment_job_variables(full_name: str) -> dict:
    return dict(read_deployment(full_name).job_variables or {})


def pool_template(name: str) -> dict:
    async def go(client):
        return (await client.read_work_pool(name)).base_job_template

    return run(_with_client(go))


def pool_default(name: str, key: str, missing: Any = "<absent>") -> Any:
    return pool_template(name)["variables"]["properties"][key].get("default", missing)


def set_deployment_job_variables(full_name: str, variables: dict) -> None:
    from prefect.client.schemas.actions import DeploymentUpdate

    async def go(client):
        d = await client.read_deployment_by_name(full_name)
        await client.update_deployment(d.id, DeploymentUpdate(job_variables=variables))

    run(_with_client(go))


def set_pool_default(name: str, key: str, value: Any) -> None:
    from prefect.client.schemas.actions import WorkPoolUpdate

    async def go(client):
        template = (await client.read_work_pool(name)).base_job_template
        template["variables"]["properties"][key]["default"] = value
        await client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))

    run(_with_client(go))


def server_snapshot(pools: list[str], deployments: list[str]) -> dict:
    """Everything a reconcile could write to, for 'nothing was written' checks."""
    return {
        "pools": {p: pool_template(p) for p in pools},
        "deployments": {d: deployment_job_variables(d) for d in deployments},
    }


def global_limit(name: str) -> Any:
    """The global concurrency limit `name` as the session's server has it (None: it does not exist)."""
    from prefect.exceptions import ObjectNotFound

    async def go(client):
        try:
            return await client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            return None

    return run(_with_client(go))


def read_state(env: str):
    from prefect_gitops.adapters.prefect_api import PrefectAPI

    async def go(client):
        return await PrefectAPI(client).read_state(env)

    return run(_with_client(go))


def write_state(state, handle) -> None:
    from prefect_gitops.adapters.prefect_api import PrefectAPI

    async def go(client):
        return await PrefectAPI(client).write_state(state, handle)

    run(_with_client(go))


def cli(*args: str, check_codes=(0,)) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", *args], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=300)
    assert done.returncode in check_codes, f"exit {done.returncode}\nstdout:{done.stdout}\nstderr:{done.stderr}"
    return done


def cli_json(*args: str, check_codes=(0,)) -> tuple[int, dict]:
    done = cli(*args, "--output", "json", check_codes=check_codes)
    return done.returncode, json.loads(done.stdout)


def cli_json_here(*args: str, check_codes=(0,)) -> tuple[int, dict]:
    """`cli_json` run in this process: the same command and flow run (typer's CliRunner calls the CLI's
    app), without a new Python process. Each process costs ~3 s of CPU importing Prefect, and CI has two
    cores; tests that read only the JSON report use this, the tests of the process itself (exit without a
    traceback, nothing secret on stderr or in the process list, the console script) use `cli`. A crash
    raises here instead of becoming an exit code."""
    from typer.testing import CliRunner

    from prefect_gitops.cli import app

    result = CliRunner().invoke(app, [*args, "--output", "json"], catch_exceptions=False)
    assert result.exit_code in check_codes, f"exit {result.exit_code}\nstdout:{result.stdout}"
    return result.exit_code, json.loads(result.stdout)


EVENTS_WAIT = 90.0  # generous: the server persists events in batches, later still on a loaded machine


def read_events(event: str, environment: str, *, flow_run_id: str | None = None, count: int = 1,
                wait: float = EVENTS_WAIT) -> list[dict]:
    """The `event` events of one environment, newest first, read back from the server once at least
    `count` of them are there (only those of the flow run `flow_run_id`, when given): events are
    persisted asynchronously, a moment after they are emitted, so this polls until they are all in.
    Fails when they are not there after `wait` seconds."""
    run_id = None if flow_run_id is None else str(flow_run_id)

    def of_the_run(events: list[dict]) -> list[dict]:
        return [ev for ev in events if run_id is None or ev.get("payload", {}).get("flow_run_id") == run_id]

    return _poll_events({"event": {"name": [event]},
                         "resource": {"id": [f"prefect-gitops.environment.{environment}"]}},
                        wait, select=of_the_run, count=count,
                        what=f"{count} {event} event(s) of {environment}"
                             + (f" from flow run {run_id}" if run_id else ""))


def wait_for_change_event(event: str, resource_id: str, since, wait: float = EVENTS_WAIT) -> list[dict]:
    """Until the server's event log shows `event` (e.g. prefect.deployment.updated) for that resource
    (e.g. prefect.deployment.<id>) since `since`: the server persists events a moment after the
    change, and a drift check that asks the log sees a change only once it is there."""
    return _poll_events({"event": {"name": [event]}, "resource": {"id": [resource_id]}}, wait,
                        since=since.isoformat(), what=f"a {event} event for {resource_id} since {since.isoformat()}")


def _poll_events(flt: dict, wait: float, since: str = "2000-01-01T00:00:00Z", *, select=None, count: int = 1,
                 what: str = "the expected events") -> list[dict]:
    """The events matching `flt` (every page, newest first), narrowed by `select`, once there are at
    least `count` of them; an AssertionError naming `what` and showing what was there after `wait` s."""
    import time

    import httpx

    url = os.environ["PREFECT_API_URL"]
    body = {"filter": {**flt, "occurred": {"since": since}, "order": "DESC"}, "limit": 50}
    deadline = time.monotonic() + wait
    while True:
        response = httpx.post(f"{url}/events/filter", json=body, timeout=30)
        response.raise_for_status()
        page = response.json()
        events = list(page["events"])
        while page.get("next_page") and len(events) < page.get("total", 0):
            response = httpx.get(page["next_page"], timeout=30)
            response.raise_for_status()
            page = response.json()
            events.extend(page["events"])
        selected = select(events) if select else events
        if len(selected) >= count:
            return selected
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not on the server after {wait:.0f} s; there were {len(selected)}: "
                                 f"{json.dumps(selected)[:3000]}")
        time.sleep(0.5)


def read_artifacts(key: str) -> list[Any]:
    """Newest first."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    async def go(client):
        return await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                           sort=ArtifactSort.CREATED_DESC)

    return run(_with_client(go))


CANARY_FLOWS_DIR = Path(__file__).parent / "flows"


def canary_pool_template() -> dict:
    """The process worker's template, plus an `image` variable the run sees as $SMOKE_IMAGE."""
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    template["variables"]["properties"]["image"] = {"type": "string", "title": "Image", "default": "flows:0"}
    template["job_configuration"]["env"] = {"SMOKE_IMAGE": "{{ image }}"}
    return template


def create_canary_pool(name: str) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate

    async def go(client):
        await client.create_work_pool(WorkPoolCreate(name=name, type="process", base_job_template=canary_pool_template()))

    run(_with_client(go))


def create_canary_deployment(name: str, pool: str, job_variables: dict | None = None) -> str:
    from prefect.utilities.callables import parameter_schema

    import sys as _sys
    _sys.path.insert(0, str(CANARY_FLOWS_DIR))
    from canary_target import canary_target

    async def go(client):
        flow_id = await client.create_flow_from_name("canary-target")
        return str(await client.create_deployment(
            flow_id=flow_id, name=name, work_pool_name=pool, entrypoint="canary_target.py:canary_target",
            parameter_openapi_schema=parameter_schema(canary_target).model_dump(),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(CANARY_FLOWS_DIR)}}],
            job_variables=job_variables or {}))

    return run(_with_client(go))


def flow_runs_of(deployment_full_name: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    async def go(client):
        d = await client.read_deployment_by_name(deployment_full_name)
        return await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[d.id])))

    return run(_with_client(go))


@contextlib.contextmanager
def process_worker(pool: str, log_path: Path, *args: str, cwd: Path | None = None, env: dict | None = None):
    """A real `prefect worker` (process type) polling every second, stopped on exit."""
    log = open(log_path, "w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process", *args],
        stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
        env={**os.environ, **(env or {}), "PREFECT_WORKER_QUERY_SECONDS": "1"})
    try:
        yield worker
    finally:
        from prefect_gitops.local_server import stop_process

        stop_process(worker)
        log.close()


def run_reconcile_flow(**parameters) -> tuple[Any, dict]:
    """The gitops-reconcile flow run in this process with these parameters (a real flow run, as a
    deployment's worker would run it): its final state and its report."""
    from prefect_gitops.adapters.events import flush_to_api
    from prefect_gitops.flows import reconcile

    async def go():
        state = await reconcile(**parameters, return_state=True)
        return state, await state.result(raise_on_failure=False)

    try:
        return run(go())
    finally:
        flush_to_api()  # the run's logs and events reach the server now, not at exit when it is gone
