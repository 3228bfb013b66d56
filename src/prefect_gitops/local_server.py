"""A throwaway local Prefect server (SQLite), as the demo, the tests and the benchmark start it.

One place starts it, so whatever the demo runs on is what the tests run on. `check_scheduler` proves
the server's background services work (a deployment with an interval schedule gets scheduled runs):
a dependency that breaks Prefect's scheduler, as SQLAlchemy 2.1 does under Prefect 3.8, shows at once
instead of as schedules that silently never fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any, Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # typeshed: the address is Any
        return port


LEASE_STORAGE = "prefect.server.concurrency.lease_storage.filesystem"


def server_env(home: str | Path, port: int) -> dict[str, str]:
    """The settings of a server in `home` on 127.0.0.1:`port`, and of the clients that talk to it."""
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_URL": f"http://127.0.0.1:{port}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home}/prefect.db",
        # concurrency leases on disk (in `home`), not in the server's memory: a server killed while a
        # reconcile holds its environment's lock forgets in-memory leases but keeps the slot taken in
        # its database, so the lock would stay held for ever; from disk, a restarted server lets the
        # holder release it, or repossesses it when the lease runs out
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": LEASE_STORAGE,
    }


def wait_healthy(api_url: str, proc: subprocess.Popen[Any] | None = None, timeout: float = 120,
                 log_path: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                return
        if (proc is not None and proc.poll() is not None) or time.monotonic() > deadline:
            tail = log_path.read_text()[-3000:] if log_path and log_path.exists() else ""
            raise RuntimeError(f"the Prefect server at {api_url} did not start (log: {log_path})\n{tail}")
        time.sleep(0.5)


def server_pair_problem(prefect: str, sqlalchemy: str) -> str | None:
    """Why this Prefect cannot run a server with this SQLAlchemy, or None. Prefect 3.8's scheduler
    fails on SQLAlchemy 2.1 ("Can't evaluate bulk DML statement") and no schedule ever fires; 3.9
    works with 2.0 and 2.1. pyproject's ranges cannot say so (a range cannot depend on another
    package's version), so the servers prefect-gitops starts refuse the pair instead."""
    from packaging.version import Version

    if Version(prefect) < Version("3.9") and Version(sqlalchemy) >= Version("2.1"):
        return (f"Prefect {prefect}'s scheduler does not work with SQLAlchemy {sqlalchemy} (no scheduled run "
                f"would ever be created): install 'SQLAlchemy<2.1' (constraints.txt pins it) or Prefect 3.9")
    return None


def check_server_pair() -> None:
    import importlib.metadata

    problem = server_pair_problem(importlib.metadata.version("prefect"), importlib.metadata.version("sqlalchemy"))
    if problem:
        raise RuntimeError(problem)


@contextlib.contextmanager
def running_server(home: Path, port: int, env: dict[str, str] | None = None,
                   log: IO[str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """`prefect server start` on 127.0.0.1:`port` with its data in `home`; yields once it is healthy,
    stops it on exit. `env` is the whole environment of the server process (default: os.environ)."""
    check_server_pair()
    env = dict(os.environ if env is None else env)
    log_path = home / "server.log"
    out = log or open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(env.get("PREFECT_API_URL", f"http://127.0.0.1:{port}/api"), proc, log_path=log_path)
        yield proc
    finally:
        stop_process(proc)
        if log is None:
            out.close()


def stop_process(proc: subprocess.Popen[Any], grace: float = 20) -> None:
    """SIGTERM, and SIGKILL if it has not ended after `grace` seconds."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def check_scheduler(timeout: float = 60) -> int:
    """Create a deployment with an hourly interval schedule and wait for the server to schedule runs
    of it (its recent-deployments scheduler looks every few seconds); delete it again. Returns how many
    runs were scheduled; raises RuntimeError when none were within `timeout` seconds."""
    import uuid
    from datetime import timedelta

    from prefect import get_client
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.schedules import IntervalSchedule

    async with get_client() as client:
        flow_id = await client.create_flow_from_name("prefect-gitops-scheduler-check")
        deployment_id = await client.create_deployment(
            flow_id=flow_id, name=f"check-{uuid.uuid4().hex[:8]}",
            schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(interval=timedelta(hours=1)), active=True)])
        try:
            deadline = time.monotonic() + timeout
            flt = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
            while True:
                runs = await client.read_flow_runs(deployment_filter=flt)
                if runs:
                    return len(runs)
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the Prefect server scheduled no run of an hourly deployment within {timeout:.0f} s: "
                        "its scheduler is not working (see the server log), so no schedule will ever fire")
                await asyncio.sleep(1)
        finally:
            await client.delete_deployment(deployment_id)
