"""The Prefect server SIGKILLed mid-apply and started again on the same database.

A server of this module's own (not the session's: it is killed), started as the demo starts its own
(prefect_gitops.local_server). The apply is a CLI subprocess talking straight to it; the server is
killed once it shows the N-th write (N drawn from a seeded random), then started again. Whatever the
run does next (its client retries the lost connection for about a minute: it may finish, or fail),
the environment's lock slot is free within the lease time once the run's process is gone, and the
next apply converges with the revision applied once in the history. In the full count a trial also
SIGKILLs the apply while the server is down: the slot is then freed only by its lease running out.
Reduced count: one trial (~2 min at load 8 on 2 cores: a server start, a restart, the client's
reconnect backoff, two applies); PREFECT_GITOPS_FULL_TRIALS=1: three (~4 min, one waits out a lease).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from figures import record, trial_count
from helpers import GitRepo, _with_client, create_deployment, create_pool, read_state, run, uid
from prefect_gitops.adapters.locks import LEASE_SECONDS, environment_limit
from prefect_gitops.local_server import free_port, running_server, server_env

DEPLOYMENTS = 30
REPOSSESSOR_SECONDS = 2  # PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS, tests/conftest.py


class OwnServer:
    """A Prefect server in its own PREFECT_HOME that can be SIGKILLed and started again on the same
    database; `using()` points this process's Prefect client at it."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.env = {**os.environ, **server_env(home, self.port)}
        self.log = open(home / "server.log", "a")
        self.stack: contextlib.ExitStack | None = None

    def start(self) -> None:
        self.stack = contextlib.ExitStack()
        self.proc = self.stack.enter_context(running_server(self.home, self.port, env=self.env, log=self.log))

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        assert self.stack is not None
        self.stack.close()

    def close(self) -> None:
        if self.stack is not None:
            self.stack.close()
        self.log.close()

    @contextlib.contextmanager
    def using(self):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.env["PREFECT_API_URL"]}):
            yield


@pytest.fixture
def own_server(tmp_path_factory):
    server = OwnServer(tmp_path_factory.mktemp("restarted-server"))
    server.start()
    try:
        yield server
    finally:
        server.close()


def _apply(server: OwnServer, repo: GitRepo, env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                             "--concurrency", "1", "--output", "json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server.env)


def _written(flow: str, image: str) -> int:
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def go(client):
        deployments = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow])))
        return sum((d.job_variables or {}).get("image") == image for d in deployments)

    return run(_with_client(go))


def _active_slots(env: str) -> int:
    async def go(client):
        return (await client.read_global_concurrency_limit_by_name(environment_limit(env))).active_slots

    return run(_with_client(go))


def test_server_killed_mid_apply_restarts_and_the_next_apply_converges(own_server, tmp_path):
    for trial in range(trial_count(1, 3)):
        replay = os.environ.get("PREFECT_GITOPS_TRIAL_SEED")
        seed = int(replay) + trial if replay else random.randrange(1 << 30)
        rng = random.Random(seed)
        kill_apply_too = trial % 2 == 1  # the full count's second trial
        kill_after = rng.randint(2, 12)
        why = f"trial {trial}, seed {seed}: server killed after write {kill_after}, apply killed too: {kill_apply_too}"
        u = uid()
        env, pool, flow = f"restart{u}", f"k8s-{u}", f"etl-{u}"
        image = f"flows:{u}"
        with own_server.using():
            create_pool(pool, image_default="flows:0")
            names = [f"{flow}/d{i:02d}" for i in range(DEPLOYMENTS)]
            for name in names:
                create_deployment(flow, name.split("/")[1], pool)
        repo = GitRepo(tmp_path / env)
        sha = repo.commit_env(env, {"work_pools": {pool: {"job_variables": {"image": image}}},
                                    "deployments": {n: {"job_variables": {"image": image}} for n in names}})

        apply = _apply(own_server, repo, env)
        deadline = time.monotonic() + 180
        with own_server.using():
            while _written(flow, image) < kill_after:
                assert apply.poll() is None, f"{why}: the apply ended before the kill: {apply.communicate()}"
                assert time.monotonic() < deadline, f"{why}: fewer than {kill_after} writes within 180 s"
                time.sleep(0.05)
        own_server.kill()
        if kill_apply_too:
            apply.send_signal(signal.SIGKILL)
        own_server.start()  # the same database, the same port
        out, err = apply.communicate(timeout=300)
        gone = time.monotonic()

        # the slot is free within the lease time once the run's process is gone: released by the run
        # itself, or repossessed by the server when its lease runs out
        with own_server.using():
            while (held := _active_slots(env)) > 0:
                assert time.monotonic() - gone < LEASE_SECONDS + REPOSSESSOR_SECONDS + 30, (
                    f"{why}: the lock's slot is still held {time.monotonic() - gone:.0f} s after the apply ended "
                    f"(exit {apply.returncode}: {out[-1500:]} {err[-1500:]})")
                time.sleep(1)
        assert held == 0

        code, result = _next_apply(own_server, repo, env)
        with own_server.using():
            images = {n: _image(n) for n in names}
            state, _ = read_state(env)
        converged = (code == 0 and set(images.values()) == {image} and state.last_applied_revision == sha
                     and not state.has_unfinished_writes())
        applied_entries = [h.outcome for h in state.history if h.revision == sha].count("applied")
        record("server-restart", converged=converged, lost=sum(i != image for i in images.values()),
               doubled=max(0, applied_entries - 1), faults={"server-kill": 1, "apply-kill": int(kill_apply_too)},
               failed_cleanly=int(apply.returncode == 1))
        assert code == 0 and result["status"] in ("applied", "in-sync"), f"{why}: {result}"
        assert converged, f"{why}: {images}, {state.last_applied_revision}, {state.inventory}"
        assert applied_entries == 1, f"{why}: {[(h.revision, h.outcome) for h in state.history]}"


def _next_apply(server: OwnServer, repo: GitRepo, env: str) -> tuple[int, dict]:
    done = _apply(server, repo, env)
    out, err = done.communicate(timeout=300)
    try:
        return done.returncode, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"exit {done.returncode}\nstdout:{out}\nstderr:{err[-4000:]}") from None


def _image(full_name: str) -> object:
    from helpers import deployment_job_variables

    return deployment_job_variables(full_name).get("image")
