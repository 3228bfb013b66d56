"""prefect-gitops benchmark (issues 6 and 17). Not part of the test suite.

    .venv/bin/python bench/run.py                      # N = 100 and 1,000, 3 repetitions, writes bench/results.md
    .venv/bin/python bench/run.py --sizes 1000,10000 --reps 3 --reps-large 1 --no-peer --no-trigger   # N = 10,000
    .venv/bin/python bench/run.py --sizes 100 --reps 3 --no-peer --no-trigger   # a quick look

For each N, on a fresh local Prefect server (SQLite, temp PREFECT_HOME, 127.0.0.1, analytics off)
with a counting reverse proxy in front of it (bench/proxy.py; every measured process talks to the
proxy, so requests are counted at the HTTP layer without touching the product):

  setup      10 kubernetes work pools (N // 100 above N = 1,000; prefect-kubernetes' default base job
             template), 10 flows, N deployments (dep i: flow bench-(i//10 % 10), pool k8s-(i % pools)), a real git repo
             (git CLI, file:// URL) with environments/bench.yaml describing them, and a first
             `prefect-gitops apply` that takes them over (reported, not a target).
  no-op      `prefect-gitops apply` with Git unchanged and nothing drifted:
               shortcut    no drift check due (check_interval 300): one ls-remote and one state read
               drift check drift.check_interval_seconds: 0, so a check is due every time; the last one
                           ended in sync, so it asks the server's event log first (the product's default)
               full read   also full_read_interval_seconds: 0 (every managed target read and compared)
  drift      a drift check with 1% of the deployments changed through the API first (the bench waits
             until the event log shows the changes; the check then reads every target and corrects them)
  apply      a new image for all N: the image default of pools k8s-00..04 (the deployments there
             inherit it) and job_variables.image of every deployment of pools k8s-05..09
  history    the recorded state with the history at its cap (50 entries of the apply above):
             full-read no-op and apply again (the state's and the history's size, and the cost
             of reading and writing them, timed through the product's adapter)
  floor      bench/floor.py: the apply's PATCH requests in a bare bounded loop (same client, same
             concurrency), run right before each apply so both see the same server; and one
             paginated read of all deployments (200 per page), run right before each checking no-op
  trigger    `prefect-gitops trigger --env bench --wait` against a deployment of the reconcile flow
             run by a real `prefect worker start --type process`: latency from the CLI's start to the
             change being visible in the API, default polling and PREFECT_WORKER_QUERY_SECONDS=1
  peer       `prefect --no-prompt deploy --all` with a prefect.yaml of the same N deployments and the
             same image change; then again with nothing changed

Every figure is the median of --reps runs (the peer at N >= 1,000: see --peer-reps-large).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
CLI = str(Path(PY).with_name("prefect-gitops"))
PREFECT = str(Path(PY).with_name("prefect"))
REAL_GIT = shutil.which("git") or "/usr/bin/git"
GIT_ID = ["-c", "user.name=Bench", "-c", "user.email=bench@example.com", "-c", "commit.gpgsign=false"]
REGISTRY = "registry.example.com/flows"
ENV = "bench"
FLOWS = [f"bench-{f:02d}" for f in range(10)]

sys.path.insert(0, str(BENCH))
from proxy import CountingProxy  # noqa: E402

from prefect_gitops.local_server import server_env, wait_healthy  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def deployment_name(i: int) -> str:
    return f"{FLOWS[(i // 10) % 10]}/dep-{i:04d}"


def pools(n: int) -> list[str]:
    """10 work pools up to N = 1,000, then one per 100 deployments (100 at N = 10,000)."""
    return [f"k8s-{p:02d}" for p in range(max(10, n // 100))]


def image_pools(n: int) -> list[str]:
    """The first half: their deployments take the image from the pool default."""
    every = pools(n)
    return every[:len(every) // 2]


def pool_of(i: int, n: int) -> str:
    return f"k8s-{i % len(pools(n)):02d}"


def apply_writes(n: int) -> int:
    """The writes of "a new image for all N": the image pools' defaults and the other pools' deployments."""
    return len(image_pools(n)) + sum(1 for i in range(n) if pool_of(i, n) not in image_pools(n))


# -- processes -----------------------------------------------------------------------------------

class Measured:
    """Run a command through bench/measure.py: wall time from spawn to exit and the command's own peak RSS."""

    def __init__(self, argv: list[str], env: dict, cwd: Path, log_path: Path, timeout: float):
        self.argv, self.env, self.cwd, self.log_path, self.timeout = argv, env, cwd, log_path, timeout

    def run(self) -> dict:
        figures = self.log_path.with_suffix(".measure.json")
        out = open(self.log_path, "wb")
        err = open(self.log_path.with_suffix(".stderr"), "wb")
        start = time.perf_counter()
        proc = subprocess.Popen([PY, "-S", str(BENCH / "measure.py"), str(figures), *self.argv], env=self.env,
                                cwd=self.cwd, stdout=out, stderr=err, start_new_session=True)
        timed_out = False
        try:
            proc.wait(self.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        outer = time.perf_counter() - start
        out.close()
        err.close()
        try:
            measured = json.loads(figures.read_text())
        except (OSError, ValueError):
            measured = {"wall": outer, "rss_mb": None, "exit": proc.returncode}
        return {"wall": measured["wall"], "exit": measured["exit"], "timed_out": timed_out,
                "rss_mb": measured["rss_mb"], "output": self.log_path.read_text(errors="replace"),
                "stderr": self.log_path.with_suffix(".stderr").read_text(errors="replace")[-3000:]}


class Server:
    def __init__(self, home: Path, port: int):
        self.home, self.port = home, port
        self.url = f"http://127.0.0.1:{port}/api"
        self.env = {**os.environ, **server_env(home, port)}  # the demo's and the tests' settings
        self.env.pop("PREFECT_API_KEY", None)

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.log = open(self.home / "server.log", "w")
        self.proc = subprocess.Popen([PY, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                                      "--port", str(self.port)], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_healthy(self.url, self.proc, log_path=self.home / "server.log")
        except RuntimeError:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


class ProductionBackend:
    """The production-shaped server instead (prefect_gitops.production_server: PostgreSQL 15, Redis, two API
    replicas, the services apart); measured through replica 0. Needs PostgreSQL 15, redis-server and prefect-redis."""

    def __init__(self, home: Path, port: int):
        self.home = home
        self._stack = contextlib.ExitStack()

    def start(self) -> None:
        from prefect_gitops.production_server import running_production_server

        self.home.mkdir(parents=True, exist_ok=True)
        server = self._stack.enter_context(running_production_server(self.home))
        self.url = server.api_urls[0]
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])
        self.env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_KEY"}
        self.env.update(server.client_env(0), PREFECT_SERVER_ANALYTICS_ENABLED="false")

    def stop(self) -> None:
        self._stack.close()


# -- the GitOps repo -----------------------------------------------------------------------------

class Repo:
    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True)
        self.git("init", "-q", "-b", "main")

    @property
    def url(self) -> str:
        return self.root.as_uri()

    def git(self, *args: str) -> str:
        return subprocess.run([REAL_GIT, *GIT_ID, *args], cwd=self.root, check=True, capture_output=True,
                              text=True).stdout.strip()

    def commit(self, text: str, message: str) -> str:
        path = self.root / "environments" / f"{ENV}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")


def environment_file(n: int, image: str, check_interval: int | None = None,
                     overrides: dict[int, str] | None = None, full_read_interval: int | None = None) -> str:
    """Pools k8s-00..04 carry `image` as their default; deployments of k8s-05..09 carry it themselves."""
    overrides = overrides or {}
    lines = [f"# {n} deployments, image {image}", "work_pools:"]
    for pool in pools(n):
        if pool in image_pools(n):
            lines.append(f"  {pool}:\n    job_variables: {{image: {REGISTRY}:{image}, namespace: flows-bench}}")
        else:
            lines.append(f"  {pool}:\n    job_variables: {{namespace: flows-bench}}")
    lines.append("deployments:")
    for i in range(n):
        team = f"team-{i % 7}"
        if pool_of(i, n) in image_pools(n):
            lines.append(f"  {deployment_name(i)}:\n    job_variables: {{env: {{TEAM: {team}}}}}")
        else:
            own = overrides.get(i, image)
            lines.append(f"  {deployment_name(i)}:\n    job_variables: {{image: {REGISTRY}:{own}, env: {{TEAM: {team}}}}}")
    if check_interval is not None or full_read_interval is not None:
        lines.append("drift:")
    if check_interval is not None:
        lines.append(f"  check_interval_seconds: {check_interval}")
    if full_read_interval is not None:
        lines.append(f"  full_read_interval_seconds: {full_read_interval}")
    return "\n".join(lines) + "\n"


FLOWS_PY = "from prefect import flow\n\n" + "".join(
    f'\n@flow(name="{name}")\ndef f{i:02d}():\n    pass\n\n' for i, name in enumerate(FLOWS))


def prefect_yaml(n: int, image: str, workdir: Path) -> str:
    lines = ["name: bench-peer", "prefect-version: 3.8.8", "build: null", "push: null", "pull:",
             "- prefect.deployments.steps.set_working_directory:", f"    directory: {workdir}", "deployments:"]
    for i in range(n):
        flow_index = (i // 10) % 10
        lines += [f"- name: dep-{i:04d}", f"  entrypoint: flows.py:f{flow_index:02d}",
                  "  work_pool:", f"    name: {pool_of(i, n)}",
                  f"    job_variables: {{image: {REGISTRY}:{image}, env: {{TEAM: team-{i % 7}}}}}"]
    return "\n".join(lines) + "\n"


# -- direct API calls (the orchestrator's own, not counted) ---------------------------------------

def api(server: Server):
    from prefect.client.orchestration import PrefectClient

    return PrefectClient(server.url)


async def create_objects(server: Server, n: int, peer_dir: Path) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect_kubernetes.worker import KubernetesWorker

    from prefect_gitops.adapters.prefect_api import bounded_gather

    template = KubernetesWorker.get_default_base_job_template()
    async with api(server) as client:
        for pool in pools(n):
            await client.create_work_pool(WorkPoolCreate(name=pool, type="kubernetes", base_job_template=template))
        flow_ids = [await client.create_flow_from_name(name) for name in FLOWS]
        schema = {"type": "object", "title": "Parameters", "properties": {}, "required": [], "definitions": {}}

        def create(i: int):
            async def go():
                for attempt in range(10):  # the client retries 503s 5 times; SQLite can stay locked longer
                    try:
                        return await client.create_deployment(
                            flow_id=flow_ids[(i // 10) % 10], name=f"dep-{i:04d}", work_pool_name=pool_of(i, n),
                            entrypoint=f"flows.py:f{(i // 10) % 10:02d}", path=str(peer_dir),
                            parameter_openapi_schema=schema, job_variables={})
                    except Exception:
                        if attempt == 9:
                            raise
                        await asyncio.sleep(2)
            return go

        outcomes = await bounded_gather(4, [create(i) for i in range(n)])
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        if errors:
            raise errors[0]


async def drift_deployments(server: Server, indexes: list[int], tag: str) -> None:
    """Change deployments through the API, then wait until the server's event log shows every change
    (the drift check asks it first; the server persists events a moment after the change)."""
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter, EventResourceFilter

    since = dt.datetime.now(dt.timezone.utc)
    async with api(server) as client:
        ids = []
        for i in indexes:
            d = await client.read_deployment_by_name(deployment_name(i))
            variables = {**(d.job_variables or {}), "env": {"TEAM": f"drifted-{tag}"}}
            await client.update_deployment(d.id, DeploymentUpdate(job_variables=variables))
            ids.append(f"prefect.deployment.{d.id}")
        flt = EventFilter(occurred=EventOccurredFilter(since=since, until=since + dt.timedelta(hours=1)),
                          event=EventNameFilter(name=["prefect.deployment.updated"]), resource=EventResourceFilter(id=ids))
        deadline = time.monotonic() + 60
        while (await client.read_events(filter=flt, limit=50)).total < len(ids) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)


async def flow_run_seconds(server: Server, flow_run_id: str) -> float | None:
    async with api(server) as client:
        run = await client.read_flow_run(flow_run_id)
    if run.start_time and run.end_time:
        return (run.end_time - run.start_time).total_seconds()
    return None


async def state_size(server: Server) -> dict:
    """The record's documents: the state (read by every reconcile) and the history entries, in bytes."""
    from prefect_gitops.adapters.state_store import ENTRY_BLOCK_TYPE, record_documents

    async with api(server) as client:
        documents = await record_documents(client, ENV)
        state, _ = await _gitops(client).read_state(ENV, history=False)
    entries = [d for d in documents if d.block_type and d.block_type.slug == ENTRY_BLOCK_TYPE]
    entry_bytes = [len(json.dumps(d.data)) for d in entries]  # as stored: packed
    stored_state = next((len(json.dumps(d.data)) for d in documents if d.name == f"gitops-{ENV}"), 0)
    body = state.model_dump_json(exclude={"history"})
    return {"bytes": stored_state + sum(entry_bytes), "state_bytes": len(body), "state_stored_bytes": stored_state,
            "history_bytes": sum(entry_bytes),
            "largest_entry_bytes": max(entry_bytes, default=0), "history": len(state.history_index),
            "managed_keys": state.inventory.count(), "history_changes": sum(h.changes for h in state.history_index)}


def _gitops(client):
    from prefect_gitops.adapters.prefect_api import PrefectAPI

    return PrefectAPI(client)


async def state_cost(server: Server, reps: int) -> dict:
    """What reading and writing the recorded state costs at its current size, through the product's
    adapter: the read and the write of a no-op reconcile (the state alone), the read of the whole
    history, and the record write of an apply (its history entry and the state; at the cap, with the
    entry the previous write pruned deleted alongside). The entry added is a copy of the newest, as large
    as an apply of all N."""
    light_reads, full_reads, writes, history_writes = [], [], [], []
    async with api(server) as client:
        gitops = _gitops(client)
        for _ in range(reps):
            t = time.perf_counter()
            await gitops.read_state(ENV)
            full_reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            state, handle = await gitops.read_state(ENV, history=False)
            light_reads.append(time.perf_counter() - t)
            t = time.perf_counter()
            handle = await gitops.write_state(state, handle)
            writes.append(time.perf_counter() - t)
            newest = await gitops.read_history(state, 1)
            if newest:
                state.add_history(newest[0].model_copy(update={"seq": None}))
                t = time.perf_counter()
                await gitops.write_state(state, handle)
                history_writes.append(time.perf_counter() - t)
    size = await state_size(server)
    return {"read_s": median(light_reads), "read_with_history_s": median(full_reads), "write_s": median(writes),
            "write_with_history_s": median(history_writes) if history_writes else None,
            "bytes": size["bytes"], "state_bytes": size["state_bytes"], "history_bytes": size["history_bytes"],
            "state_stored_bytes": size["state_stored_bytes"], "largest_entry_bytes": size["largest_entry_bytes"], "managed_keys": size["managed_keys"],
            "history": size["history"]}


async def fill_history(server: Server) -> dict:
    """Bring the recorded history to its cap (50) with copies of the newest apply, as a long-lived env has."""
    from prefect_gitops.state import HISTORY_LIMIT

    async with api(server) as client:
        gitops = _gitops(client)
        state, handle = await gitops.read_state(ENV, history=False)
        newest = next(h for h in await gitops.read_history(state, len(state.history_index))
                      if h.outcome == "applied")
        while len(state.history_index) < HISTORY_LIMIT:
            state.add_history(newest.model_copy(update={"seq": None}))
        await gitops.write_state(state, handle)
    return await state_size(server)


async def deployment_image(server: Server, name: str) -> str | None:
    async with api(server) as client:
        d = await client.read_deployment_by_name(name)
    return (d.job_variables or {}).get("image")


# -- one measured run ----------------------------------------------------------------------------

class Bench:
    def __init__(self, n: int, reps: int, workdir: Path, port: int, args):
        self.n, self.reps, self.workdir, self.args = n, reps, workdir, args
        backend = ProductionBackend if getattr(args, "backend", "sqlite") == "postgres" else Server
        self.server = backend(workdir / "server-home", port)
        self.repo = Repo(workdir / "gitops")
        self.peer_dir = workdir / "peer"
        self.peer_dir.mkdir()
        (self.peer_dir / "flows.py").write_text(FLOWS_PY)
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.git_log = workdir / "git.log"
        self.counter = 0
        self.results: dict = {"n": n, "runs": {}, "notes": []}

    def measured_env(self, via_proxy: bool = True) -> dict:
        env = dict(self.server.env)
        if via_proxy:
            env["PREFECT_API_URL"] = f"{self.proxy.url}/api"
        env.update(PREFECT_HOME=str(self.workdir / "client-home"),
                   PREFECT_GITOPS_CACHE_DIR=str(self.workdir / "git-cache"),
                   PATH=f"{BENCH / 'bin'}{os.pathsep}{env.get('PATH', '')}",
                   BENCH_GIT_LOG=str(self.git_log), BENCH_REAL_GIT=REAL_GIT,
                   PYTHONUNBUFFERED="1")
        return env

    def run(self, kind: str, argv: list[str], timeout: float = 1800, cwd: Path | None = None,
            env: dict | None = None) -> dict:
        self.counter += 1
        self.git_log.write_text("")
        self.proxy.reset()
        result = Measured(argv, env or self.measured_env(), cwd or ROOT,
                          self.logs / f"{self.counter:03d}-{kind}.log", timeout).run()
        time.sleep(0.2)  # let the proxy see the last connection close
        counts = self.proxy.snapshot()
        calls = [line.split() for line in self.git_log.read_text().splitlines() if line.strip()]
        result.update(requests=counts["total"], by_endpoint=counts["by_endpoint"], statuses=counts["statuses"],
                      n503=counts["statuses"].get(503, 0),
                      git_ops=len(calls), git_remote=sum(1 for c in calls if _git_verb(c) in ("ls-remote", "fetch")),
                      git_verbs=[_git_verb(c) for c in calls])
        return result

    def apply(self, kind: str, expect: str | None = None, expect_applied: int | None = None,
              expect_check: str | None = None) -> dict:
        timer = self.workdir / "reconcile-time"
        timer.write_text("")
        env = {**self.measured_env(), "BENCH_RECONCILE_TIME": str(timer)}
        # --quick: what a scheduled run does (the shortcut, the event log), the paths measured here
        result = self.run(kind, [PY, str(BENCH / "cli_timed.py"), "apply", "--source", self.repo.url, "--env", ENV,
                                 "--quick", "--output", "json"], env=env)
        times = [float(x) for x in timer.read_text().split()]
        result["reconcile_s"] = times[-1] if times else None
        out = result.pop("output")
        stderr = result.pop("stderr")
        report = {}
        try:
            report = json.loads(out)
        except ValueError:
            pass
        result.update(status=report.get("status"), applied=report.get("applied"), flow_run_id=report.get("flow_run_id"),
                      message=(report.get("message") or "")[:300], drift_check=report.get("drift_check"))
        result["flow_s"] = asyncio.run(flow_run_seconds(self.server, report["flow_run_id"])) if report.get("flow_run_id") else None
        ok = (result["exit"] == 0 and (expect is None or result["status"] == expect)
              and (expect_applied is None or result["applied"] == expect_applied)
              and (expect_check is None or result["drift_check"] == expect_check))
        if not ok:
            note = (f"N={self.n} {kind}: exit {result['exit']}, status {result['status']!r} (expected {expect!r}), "
                    f"applied {result['applied']} (expected {expect_applied}), drift check {result['drift_check']!r}"
                    f" (expected {expect_check!r}); {result['message']}")
            log("UNEXPECTED: " + note)
            self.results["notes"].append(note)
            if result["status"] is None:
                log(out[-2000:] + stderr[-2000:])
        log(f"  {kind}: {result['wall']:.2f} s whole, flow {_fmt(result['flow_s'])} s, reconcile() "
            f"{_fmt(result['reconcile_s'])} s, {result['requests']} requests ({result['n503']} x 503), "
            f"{result['git_ops']} git ({result['git_remote']} remote), {_fmt(result['rss_mb'], 0)} MB, "
            f"{result['status']} {result['applied']}")
        self.results["runs"].setdefault(kind, []).append(result)
        return result

    # -- phases ------------------------------------------------------------------------------------

    def go(self) -> dict:
        n = self.n
        log(f"N={n}: starting a fresh Prefect server in {self.server.home}")
        self.server.start()
        self.proxy = CountingProxy("127.0.0.1", self.server.port).start()
        try:
            t = time.perf_counter()
            asyncio.run(create_objects(self.server, n, self.peer_dir))
            log(f"N={n}: created {len(pools(n))} pools, 10 flows, {n} deployments in {time.perf_counter() - t:.1f} s")
            self.phases()
        finally:
            self.server.stop()
        return self.results

    def phases(self) -> None:
        n, reps = self.n, self.reps
        k = max(1, n // 100)
        n_apply = apply_writes(n)

        self.repo.commit(environment_file(n, "1.0.0"), "initial")
        self.run_floor("floor_takeover", "--image", f"{REGISTRY}:floor", "--pools", ",".join(pools(n)),
                       "--every-deployment", "--key", "bench_floor")
        self.apply("takeover", expect="applied")

        log(f"N={n}: no-op, shortcut (Git unchanged, no drift check due)")
        for _ in range(reps):
            self.apply("noop_shortcut", expect="up-to-date")

        self.repo.commit(environment_file(n, "1.0.0", check_interval=0, full_read_interval=0),
                         "check drift every time, reading every target")
        self.apply("noop_full_first", expect="in-sync")
        log(f"N={n}: no-op, full read (check_interval_seconds: 0, full_read_interval_seconds: 0, nothing drifted), "
            "each after one floor read (one paginated read of all deployments)")
        for _ in range(reps):
            self.floor_read()
            self.apply("noop_full", expect="in-sync", expect_applied=0, expect_check="full read: drift.full_read_interval_seconds is 0")

        self.repo.commit(environment_file(n, "1.0.0", check_interval=0), "check drift every time")
        self.apply("noop_events_first", expect="in-sync")
        log(f"N={n}: no-op, drift check due (check_interval_seconds: 0, the event log asked first, nothing drifted), "
            "each after one floor read")
        for _ in range(reps):
            self.floor_read()
            self.apply("noop_events", expect="in-sync", expect_applied=0, expect_check="event log")

        log(f"N={n}: drift check, {k} deployment(s) changed through the API")
        for rep in range(reps):
            indexes = [(rep * k + j) * 97 % n for j in range(k)]
            asyncio.run(drift_deployments(self.server, indexes, str(rep)))
            self.apply("drift", expect="applied", expect_applied=k)

        log(f"N={n}: apply, a new image for all {n} ({len(image_pools(n))} pool defaults + "
            f"{n_apply - len(image_pools(n))} deployments), each after the floor doing the same writes")
        for rep in range(reps):
            self.floor_patch(f"floor-{rep}")
            self.repo.commit(environment_file(n, f"2.0.{rep}"), f"image 2.0.{rep}")
            self.apply("apply", expect="applied", expect_applied=n_apply)
        self.results["state_after_apply"] = asyncio.run(state_size(self.server))
        log(f"  state: {self.results['state_after_apply']}")
        self.results["state_cost_after_apply"] = asyncio.run(state_cost(self.server, reps))
        log(f"  state cost: {self.results['state_cost_after_apply']}")

        if not self.args.no_history:
            self.results["state_at_cap"] = asyncio.run(fill_history(self.server))
            log(f"N={n}: history at its cap: {self.results['state_at_cap']}")
            self.results["state_cost_at_cap"] = asyncio.run(state_cost(self.server, reps))
            log(f"  state cost: {self.results['state_cost_at_cap']}")
            self.repo.commit(environment_file(n, f"2.0.{reps - 1}", check_interval=0, full_read_interval=0),
                             "history at cap")
            self.apply("cap_first", expect="in-sync", expect_applied=0)
            for _ in range(reps):
                self.apply("cap_noop_full", expect="in-sync", expect_applied=0)
            for rep in range(reps):
                self.repo.commit(environment_file(n, f"3.0.{rep}", check_interval=0), f"image 3.0.{rep}")
                self.apply("cap_apply", expect="applied", expect_applied=n_apply)
            self.results["state_at_cap_end"] = asyncio.run(state_size(self.server))

        if not self.args.no_trigger:
            self.trigger()
        if not self.args.no_peer:
            self.peer()
        else:  # the peer's figures of an earlier run, marked as such
            self.results["peer_measured_at"] = peer_measured_at(Path(self.args.peer_from))

    def floor_patch(self, image: str) -> None:
        self.run_floor("floor_patch", "--image", f"{REGISTRY}:{image}", "--pools", ",".join(image_pools(self.n)))

    def run_floor(self, kind: str, *args: str) -> None:
        self._floor(self.run(kind, [PY, str(BENCH / "floor.py"), "patch", *args, "--concurrency", "4"]), kind)

    def floor_read(self) -> None:
        self._floor(self.run("floor_read", [PY, str(BENCH / "floor.py"), "read"]), "floor_read")

    def _floor(self, r: dict, kind: str) -> None:
        out = r.pop("output")
        try:
            data = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            data = {}
            self.results["notes"].append(f"N={self.n} {kind}: {out[-500:]}")
        r.update(inner_s=data.get("seconds"), inner_requests=data.get("requests"), writes=data.get("writes"),
                 error_count=data.get("error_count"))
        log(f"  {kind}: {_fmt(r['inner_s'])} s timed, {r['inner_requests']} requests in the loop "
            f"({r['requests']} for the whole process), {r.get('writes')} writes, 503s: {r['statuses'].get(503, 0)}")
        self.results["runs"].setdefault(kind, []).append(r)

    # -- trigger latency ---------------------------------------------------------------------------

    def trigger(self) -> None:
        from prefect.client.schemas.actions import WorkPoolCreate

        from prefect_gitops.flows import reconcile as reconcile_flow

        async def deploy():
            async with api(self.server) as client:
                await client.create_work_pool(WorkPoolCreate(name="bench-control", type="process"))
                flow_id = await client.create_flow_from_name("gitops-reconcile")
                await client.create_deployment(
                    flow_id=flow_id, name=f"reconcile-{ENV}", work_pool_name="bench-control",
                    entrypoint="flows/reconcile.py:reconcile", path=str(ROOT),
                    pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}],
                    parameters={"environment": ENV, "source_url": self.repo.url},
                    parameter_openapi_schema=reconcile_flow.parameters.model_dump(mode="json"))

        asyncio.run(deploy())
        target = next(i for i in range(self.n) if pool_of(i, self.n) not in image_pools(self.n))
        name = deployment_name(target)
        counter = [0]
        for label, query in (("default", None), ("tuned", "1")):
            env = self.measured_env(via_proxy=False)
            env.pop("BENCH_GIT_LOG")
            if query:
                env["PREFECT_WORKER_QUERY_SECONDS"] = query
            worker_log = open(self.logs / f"worker-{label}.log", "w")
            worker = subprocess.Popen([PREFECT, "worker", "start", "--pool", "bench-control", "--type", "process"],
                                      env=env, cwd=ROOT, stdout=worker_log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
            try:
                time.sleep(12)  # started and polling
                log(f"N={self.n}: trigger latency, worker polling {label} "
                    f"({'PREFECT_WORKER_QUERY_SECONDS=' + query if query else 'PREFECT_WORKER_QUERY_SECONDS unset: 10 s'})")
                for _ in range(self.reps):
                    counter[0] += 1
                    image = f"trigger-{counter[0]}"
                    base = f"3.0.{self.reps - 1}" if not self.args.no_history else f"2.0.{self.reps - 1}"
                    self.repo.commit(environment_file(self.n, base, overrides={target: image}),
                                     f"trigger {counter[0]}")
                    self._one_trigger(label, name, f"{REGISTRY}:{image}", env)
            finally:
                os.killpg(worker.pid, signal.SIGTERM)
                try:
                    worker.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(worker.pid, signal.SIGKILL)
                    worker.wait()
                worker_log.close()

    def _one_trigger(self, label: str, name: str, expected: str, env: dict) -> None:
        self.counter += 1
        out = open(self.logs / f"{self.counter:03d}-trigger-{label}.log", "wb")
        start = time.perf_counter()
        proc = subprocess.Popen([CLI, "trigger", "--env", ENV, "--wait", "--timeout", "600"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        visible = None
        deadline = start + 600
        while True:
            ended = proc.poll() is not None
            if visible is None and asyncio.run(deployment_image(self.server, name)) == expected:
                visible = time.perf_counter() - start
            if ended or time.perf_counter() > deadline:
                break
            time.sleep(0.1)
        exited = time.perf_counter() - start
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        out.close()
        r = {"visible_s": visible, "cli_exit_s": exited, "exit": proc.returncode}
        if visible is None or proc.returncode != 0:
            self.results["notes"].append(f"N={self.n} trigger ({label}): visible {visible}, exit {proc.returncode}; "
                                         + (self.logs / f"{self.counter:03d}-trigger-{label}.log").read_text()[-500:])
        log(f"  trigger ({label}): visible after {_fmt(visible)} s, CLI exited after {exited:.2f} s (exit {proc.returncode})")
        self.results["runs"].setdefault(f"trigger_{label}", []).append(r)

    # -- the peer ------------------------------------------------------------------------------------

    def peer(self) -> None:
        n = self.n
        large = n >= 1000
        reps = self.args.peer_reps_large if large else self.reps
        timeout = self.args.peer_timeout
        argv = [PREFECT, "--no-prompt", "deploy", "--all"]

        def deploy(kind: str, count: int, image: str, timeout: float) -> dict:
            (self.peer_dir / "prefect.yaml").write_text(prefect_yaml(count, image, self.peer_dir))
            r = self.run(kind, argv, timeout=timeout, cwd=self.peer_dir)
            out = r.pop("output")
            r["deployments"] = count
            if r["exit"] != 0 and not r["timed_out"]:
                self.results["notes"].append(f"N={n} {kind}: exit {r['exit']}: {out[-800:]}")
            log(f"  {kind} ({count}): {r['wall']:.1f} s{' (timed out)' if r['timed_out'] else ''}, "
                f"{r['requests']} requests, exit {r['exit']}, 503s: {r['statuses'].get(503, 0)}, {_fmt(r['rss_mb'], 0)} MB")
            self.results["runs"].setdefault(kind, []).append(r)
            return r

        if n > 1000:  # not run (~30 min per run at 10,000): its cost per deployment at 100 and 1,000, extrapolated
            self.results["peer_measured_at"] = peer_measured_at(Path(self.args.peer_from))
            self.results["notes"].append(f"N={n}: the peer was not run; its figures are extrapolated from its runs at "
                                         f"N=100 and N=1000 in {self.args.peer_from}")
            return
        if large and self.args.peer_projection is not None:
            projected = self.args.peer_projection * n
            if projected > timeout:
                self.results["notes"].append(
                    f"N={n}: the peer was not run at N={n}: N=100 projects {projected:.0f} s per run "
                    f"(> {timeout:.0f} s); extrapolated from N=100 and N=300 instead")
                return self.peer_extrapolated()
        log(f"N={n}: peer, prefect --no-prompt deploy --all ({reps} run(s) each)")
        for rep in range(reps):
            r = deploy("peer_change", n, f"peer-{rep}", timeout)
            if r["timed_out"]:
                self.results["notes"].append(f"N={n}: prefect deploy --all of {n} did not finish within "
                                             f"{timeout:.0f} s; extrapolated from N=100 and N=300")
                return self.peer_extrapolated()
        for rep in range(reps):
            deploy("peer_unchanged", n, f"peer-{reps - 1}", timeout)

    def peer_extrapolated(self) -> None:
        for count in (100, 300):
            r = None
            for rep in range(2):
                image = f"peer-x{count}-{rep}"
                (self.peer_dir / "prefect.yaml").write_text(prefect_yaml(count, image, self.peer_dir))
                r = self.run(f"peer_change_{count}", [PREFECT, "--no-prompt", "deploy", "--all"], timeout=900,
                             cwd=self.peer_dir)
                r.pop("output")
                self.results["runs"].setdefault(f"peer_change_{count}", []).append(r)
                log(f"  peer change ({count}): {r['wall']:.1f} s, {r['requests']} requests")
            r = self.run(f"peer_unchanged_{count}", [PREFECT, "--no-prompt", "deploy", "--all"], timeout=900,
                         cwd=self.peer_dir)
            r.pop("output")
            self.results["runs"].setdefault(f"peer_unchanged_{count}", []).append(r)
            log(f"  peer unchanged ({count}): {r['wall']:.1f} s, {r['requests']} requests")


def _git_verb(args: list[str]) -> str:
    i = 0
    while i < len(args):
        if args[i] in ("-C", "-c"):
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            return args[i]
    return "?"


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# -- the report ----------------------------------------------------------------------------------

def machine() -> dict:
    import prefect

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run([REAL_GIT, "--version"], capture_output=True, text=True).stdout.strip()
    load = os.getloadavg()
    return {"cores": os.cpu_count(), "memory_gib": round(mem, 1) if mem else None, "cpu": cpu,
            "python": platform.python_version(), "prefect": prefect.__version__,
            "os": f"{platform.system()} {platform.release()}", "git": git,
            "load_at_start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"}


def med(results: dict, kind: str, field: str):
    return median([r.get(field) for r in results["runs"].get(kind, [])])


def peer_measured_at(path: Path) -> dict[str, dict[int, float]]:
    """The peer's medians by N, from an earlier run's raw figures (bench/results.json)."""
    try:
        earlier = json.loads(path.read_text())["results"]
    except (OSError, ValueError, KeyError):
        return {}
    return {kind: {r["n"]: med(r, kind, "wall") for r in earlier if med(r, kind, "wall") is not None}
            for kind in ("peer_change", "peer_unchanged")}


def peer_figure(results: dict, kind: str) -> tuple[float | None, str]:
    """The peer's median at N, or a linear extrapolation: from its runs at N=100 and N=1000 in an earlier
    run's figures (N > 1000), or from N=100 and N=300 (a run that timed out)."""
    n = results["n"]
    direct = med(results, kind, "wall")
    if direct is not None and not any(r["timed_out"] for r in results["runs"].get(kind, [])):
        return direct, "measured"
    earlier = {int(k): v for k, v in (results.get("peer_measured_at") or {}).get(kind, {}).items()}
    if n in earlier:
        return earlier[n], "measured in an earlier run (bench/peer.json), not run in this one"
    if 100 in earlier and 1000 in earlier:
        a, b = earlier[100], earlier[1000]
        return a + (b - a) / 900 * (n - 100), (f"extrapolated from its runs at N=100 ({a:.1f} s) and "
                                               f"N=1000 ({b:.1f} s), not run")
    a, b = med(results, f"{kind}_100", "wall"), med(results, f"{kind}_300", "wall")
    if a is None or b is None:
        return None, "not measured"
    slope = (b - a) / 200
    return a + slope * (n - 100), f"extrapolated from N=100 ({a:.1f} s) and N=300 ({b:.1f} s)"


def summarize(all_results: list[dict]) -> tuple[str, str]:
    rows = []
    targets = []
    beyond_pages: dict[str, float] = {}
    header = ("| Measurement | N | Whole process (s) | Flow run (s) | reconcile() (s) | Requests (503s) | Git ops (remote) "
              "| Peak RSS (MB) |\n|---|---|---|---|---|---|---|---|")
    labels = [
        ("takeover", "first apply (takeover of every key; setup)"),
        ("noop_shortcut", "no-op, shortcut (Git unchanged, no drift check due)"),
        ("noop_events", "no-op, drift check due: event log asked, nothing changed (default)"),
        ("noop_full", "no-op, full read (full_read_interval 0: every target read, nothing drifted)"),
        ("drift", "drift check (1% changed through the API, corrected)"),
        ("apply", "apply (a new image for all N)"),
        ("cap_noop_full", "no-op, full read, history at cap (50)"),
        ("cap_apply", "apply, history at cap (50)"),
    ]
    for results in all_results:
        n = results["n"]
        for kind, label in labels:
            if kind not in results["runs"]:
                continue
            rows.append(f"| {label} | {n} | {_fmt(med(results, kind, 'wall'))} | {_fmt(med(results, kind, 'flow_s'))} | "
                        f"{_fmt(med(results, kind, 'reconcile_s'))} | "
                        f"{_fmt(med(results, kind, 'requests'))} ({_fmt(med(results, kind, 'n503'))}) | {_fmt(med(results, kind, 'git_ops'))} "
                        f"({_fmt(med(results, kind, 'git_remote'))}) | {_fmt(med(results, kind, 'rss_mb'), 0)} |")
        if "floor_takeover" in results["runs"]:
            rows.append(f"| floor of the first apply: bare PATCH loop (every pool and deployment once) | {n} | "
                        f"{_fmt(med(results, 'floor_takeover', 'wall'))} | {_fmt(med(results, 'floor_takeover', 'inner_s'))} (loop) | - | "
                        f"{_fmt(med(results, 'floor_takeover', 'inner_requests'))} (loop; {_fmt(med(results, 'floor_takeover', 'n503'))}) | - | "
                        f"{_fmt(med(results, 'floor_takeover', 'rss_mb'), 0)} |")
        if "floor_patch" in results["runs"]:
            rows.append(f"| floor: bare PATCH loop (same writes, concurrency 4) | {n} | "
                        f"{_fmt(med(results, 'floor_patch', 'wall'))} | {_fmt(med(results, 'floor_patch', 'inner_s'))} (loop) | - | "
                        f"{_fmt(med(results, 'floor_patch', 'inner_requests'))} (loop; {_fmt(med(results, 'floor_patch', 'n503'))}) | - | "
                        f"{_fmt(med(results, 'floor_patch', 'rss_mb'), 0)} |")
            rows.append(f"| floor: one paginated read of all deployments (200/page) | {n} | - | - | "
                        f"{_fmt(med(results, 'floor_read', 'inner_s'), 3)} (read) | "
                        f"{_fmt(med(results, 'floor_read', 'inner_requests'))} | - | - |")
        for kind, label in (("peer_change", "peer: prefect deploy --all, image changed"),
                            ("peer_unchanged", "peer: prefect deploy --all, nothing changed")):
            value, how = peer_figure(results, kind)
            if value is not None:
                reqs = med(results, kind, "requests") if how == "measured" else None
                runs = len(results["runs"].get(kind, [])) if how == "measured" else 0
                rows.append(f"| {label}{'' if how == 'measured' else ' (' + how + ')'} | {n} | {_fmt(value, 1)}"
                            f"{f' ({runs} run(s))' if runs and runs < 3 else ''} | - | - | {_fmt(reqs)} | - | "
                            f"{_fmt(med(results, kind, 'rss_mb'), 0) if how == 'measured' else '-'} |")
        for label in ("default", "tuned"):
            kind = f"trigger_{label}"
            if kind in results["runs"]:
                rows.append(f"| trigger --wait to change visible, worker polling {label}"
                            f"{' (10 s)' if label == 'default' else ' (1 s)'} | {n} | "
                            f"{_fmt(med(results, kind, 'visible_s'))} (CLI exit {_fmt(med(results, kind, 'cli_exit_s'))}) "
                            f"| - | - | - | - | - |")

        # ratios and targets
        read = med(results, "floor_read", "inner_s")
        floor = med(results, "floor_patch", "inner_s")
        peer_change, how_change = peer_figure(results, "peer_change")
        peer_same, how_same = peer_figure(results, "peer_unchanged")
        # the target is for a no-op reconcile as it runs by default (a drift check due, or not); a read of
        # every target, forced by full_read_interval_seconds: 0, is reported beside it
        for kind, label, target in (("noop_events", "drift-check no-op", True), ("noop_shortcut", "shortcut no-op", True),
                                    ("noop_full", "full-read no-op", True),
                                    ("cap_noop_full", "full-read no-op, history at cap", True)):
            for field, what in (("flow_s", "flow run"), ("reconcile_s", "reconcile()")):
                inside = med(results, kind, field)
                if inside is not None and read:
                    targets.append((n, f"{label}: inside the flow ({what}) / one paginated read",
                                    f"{inside / read:.2f}x", "<= 2x" if target else "(informational)",
                                    inside <= 2 * read if n >= 1000 and target else None))
            whole = med(results, kind, "wall")
            if whole and peer_same:
                ok = peer_same / whole >= 50
                targets.append((n, f"{label}: peer (nothing changed) / whole process", f"{peer_same / whole:.0f}x",
                                ">= 50x", ok if n >= 1000 else None))
        pages = med(results, "floor_read", "inner_requests")
        for kind, label in (("noop_events", "drift-check no-op"), ("noop_full", "full-read no-op"),
                            ("noop_shortcut", "shortcut no-op")):
            requests = med(results, kind, "requests")
            if requests is not None and pages is not None:
                beyond = requests - pages  # requests that are not pages of a read of every deployment
                smallest = beyond_pages.setdefault(kind, beyond)
                targets.append((n, f"{label}: requests ({_fmt(requests)}) less the pages of one read ({_fmt(pages)})",
                                _fmt(beyond), "grows only by pages (<= the smallest N's)",
                                beyond <= smallest if n >= 1000 else None))
        takeover_floor = med(results, "floor_takeover", "inner_s")
        for kind, label, its_floor in (("takeover", "first apply", takeover_floor), ("apply", "apply", floor),
                                       ("cap_apply", "apply, history at cap", floor)):
            whole = med(results, kind, "wall")
            for field, what in (("flow_s", "flow run"), ("reconcile_s", "reconcile()")):
                inside = med(results, kind, field)
                if inside and its_floor:
                    targets.append((n, f"{label}: inside the flow ({what}) / floor", f"{inside / its_floor:.2f}x",
                                    "<= 1.2x", inside <= 1.2 * its_floor if n >= 1000 else None))
            if whole and its_floor:
                targets.append((n, f"{label}: whole process / floor", f"{whole / its_floor:.2f}x", "(informational)",
                                None))
            if whole and peer_change and kind == "apply":
                targets.append((n, f"{label}: peer (image changed) / whole process", f"{peer_change / whole:.1f}x",
                                ">= 5x", peer_change / whole >= 5 if n >= 1000 else None))
        cost = results.get("state_cost_at_cap") or {}
        if cost.get("write_with_history_s") is not None:
            targets.append((n, "an apply's record write at the history cap (its entry, the state and the pruning of "
                            "the oldest; through the product's adapter)", f"{cost['write_with_history_s']:.3f} s",
                            "<= 0.3 s", cost["write_with_history_s"] <= 0.3 if n >= 1000 else None))
        rss = max([r.get("rss_mb") or 0 for kind, runs in results["runs"].items()
                   if not kind.startswith(("floor", "peer", "trigger")) for r in runs] or [0])
        targets.append((n, "peak RSS of the reconcile process (max over all runs)", f"{rss:.0f} MB", "< 300 MB",
                        rss < 300 if n >= 1000 else None))
    table = header + "\n" + "\n".join(rows)
    target_table = "| N | Figure | Measured | Target | Met |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {n} | {what} | {value} | {goal} | {'-' if ok is None else ('yes' if ok else '**no**')} |"
        for n, what, value, goal, ok in targets)
    return table, target_table


def endpoint_table(results: dict, kind: str) -> str:
    runs = results["runs"].get(kind) or []
    if not runs:
        return ""
    r = runs[len(runs) // 2]
    lines = ["| Request | Count |", "|---|---|"]
    for key, count in sorted(r["by_endpoint"].items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"| `{key}` | {count} |")
    return "\n".join(lines)


def write_results(path: Path, info: dict, all_results: list[dict], table: str, targets: str, args,
                  run: dict) -> None:
    lines = ["# prefect-gitops benchmark results", "",
             f"Produced by `{run['command']}` on {run['finished']} UTC, total {run['minutes']:.1f} min.",
             "", "## Machine", "",
             f"- {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB memory, {info['os']}",
             f"- Python {info['python']}, Prefect {info['prefect']}, {info['git']}",
             f"- load average when the benchmark started: {info['load_at_start']} "
             "(other work on the machine shares the 2 cores; figures are medians for that reason)",
             ("- one production-shaped server per N (prefect_gitops.production_server: PostgreSQL 15, Redis, two API "
              "replicas and the services apart; measured through replica 0), "
              if getattr(args, "backend", "sqlite") == "postgres" else
              "- one local Prefect server per N (SQLite, fresh PREFECT_HOME, 127.0.0.1, analytics off), ")
             + "requests counted by a reverse proxy on 127.0.0.1 in front of it (bench/proxy.py)",
             "", "## Figures", "",
             f"Medians of {args.reps} runs"
             + (f" ({getattr(args, 'reps_large', None)} above N = 1,000)" if getattr(args, "reps_large", None) else "")
             + f" (the peer at N >= 1000: {args.peer_reps_large} run(s), see below). "
             "*Whole process*: `prefect-gitops apply ...` from spawn to exit (run through bench/cli_timed.py, the "
             "same entry point plus a timer). *Flow run*: the reconcile flow run's start to end as recorded by "
             "Prefect (includes the engine's state changes, the artifact and the events). *reconcile()*: the time "
             "spent in the reconcile layer inside that flow. *Requests*: every HTTP request the process sent "
             "to the Prefect API (the flow engine's own included: flow run creation, state changes, logs, "
             "artifact, events). *Git ops*: git invocations (remote ones: ls-remote, fetch).", "",
             table, "", "## Targets", "", targets, ""]
    for results in all_results:
        n = results["n"]
        for key, label in (("state_after_apply", "after the apply runs"), ("state_at_cap", "history filled to its cap"),
                           ("state_at_cap_end", "after the runs at the cap")):
            if key in results:
                s = results[key]
                lines.append(f"- N={n}, recorded state {label}: {s['bytes'] / 1024:.0f} KiB stored"
                             + (f" (the state {s['state_bytes'] / 1024:.0f} KiB of JSON, packed to "
                                f"{s['state_stored_bytes'] / 1024:.0f} KiB; largest history entry "
                                f"{s['largest_entry_bytes'] / 1024:.0f} KiB packed)" if "state_stored_bytes" in s else "")
                             + ", "
                             f"{s['managed_keys']} managed keys, {s['history']} history entries with "
                             f"{s['history_changes']} changes")
        for key, label in (("state_cost_after_apply", "after the apply runs"), ("state_cost_at_cap", "at the history cap")):
            if key in results:
                c = results[key]
                if "state_bytes" not in c:  # a run of the first state format (one nested dict)
                    lines.append(f"- N={n}, cost of the recorded state {label} (first format, {c['bytes'] / 1024:.0f} KiB): "
                                 f"read {c['read_s']:.3f} s, write {c['write_s']:.3f} s")
                    continue
                with_history = (f"{c['write_with_history_s']:.3f} s" if c.get("write_with_history_s") is not None
                                else "-")
                lines.append(f"- N={n}, cost of the recorded state {label} (state {c['state_bytes'] / 1024:.0f} KiB"
                             + (f", stored {c['state_stored_bytes'] / 1024:.0f} KiB" if "state_stored_bytes" in c else "")
                             + f", history {c['history_bytes'] / 1024:.0f} KiB stored; {c['managed_keys']} managed keys, "
                             f"{c['history']} history entries): read without history (every reconcile) "
                             f"{c['read_s']:.3f} s, with history {c['read_with_history_s']:.3f} s; write without "
                             f"a new history entry (a no-op) {c['write_s']:.3f} s, with one (an apply's record) "
                             f"{with_history}")
    lines.append("")
    for results in all_results:
        for kind, label in (("noop_events", "drift-check no-op"), ("noop_full", "full-read no-op"),
                            ("noop_shortcut", "shortcut no-op"), ("apply", "apply")):
            table_ = endpoint_table(results, kind)
            if table_:
                lines += [f"### Requests of one {label} at N={results['n']}", "", table_, ""]
                if kind != "noop_shortcut":
                    verbs = results["runs"][kind][0]["git_verbs"]
                    lines += [f"Git invocations: {', '.join(verbs) or 'none'}", ""]
    findings = BENCH / "findings.md"
    if findings.exists():
        lines += ["## Findings", "", findings.read_text().strip(), ""]
    notes = [note for results in all_results for note in results["notes"]]
    if notes:
        lines += ["## Notes from the run", ""] + [f"- {textwrap.shorten(n_, 600)}" for n_ in notes] + [""]
    lines += ["## Raw data", "", f"`{path.with_suffix('.json').name}` next to this file holds every run's figures.", ""]
    path.write_text("\n".join(lines))


def _raw(all_results: list[dict]) -> list[dict]:
    """The results without the processes' console output (kept in the run's logs with --keep)."""
    return [{**r, "runs": {kind: [{k: v for k, v in run.items() if k not in ("output", "stderr")} for run in runs]
                          for kind, runs in r["runs"].items()}} for r in all_results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,1000")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: the production-shaped server (PostgreSQL, Redis, two API replicas)")
    parser.add_argument("--reps-large", type=int, default=None, help="repetitions above N = 1,000 (default: --reps)")
    parser.add_argument("--peer-timeout", type=float, default=600, help="seconds allowed per peer run")
    parser.add_argument("--peer-reps-large", type=int, default=1, help="peer runs per case at N >= 1000")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--no-trigger", action="store_true")
    parser.add_argument("--no-history", action="store_true", help="skip the history-at-cap runs")
    parser.add_argument("--output", default=str(BENCH / "results.md"))
    parser.add_argument("--peer-from", default=str(BENCH / "peer.json"),
                        help="above N = 1,000 the peer is not run: its figures at 100 and 1,000 are read from here")
    parser.add_argument("--keep", action="store_true", help="keep the temp directories (logs, server DB)")
    parser.add_argument("--report", action="store_true",
                        help="only render the report again from the .json next to --output (and bench/findings.md)")
    args = parser.parse_args()
    args.peer_projection = None
    if args.report:
        data = json.loads(Path(args.output).with_suffix(".json").read_text())
        for key, value in data["args"].items():
            setattr(args, key, value)
        table, targets = summarize(data["results"])
        write_results(Path(args.output), data["machine"], data["results"], table, targets, args, data["run"])
        log(f"wrote {args.output} from {Path(args.output).with_suffix('.json')}")
        return

    started = time.perf_counter()
    # killed (SIGTERM), the run stops its servers as on Ctrl-C: PostgreSQL, Redis and Prefect's processes
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    base = Path(tempfile.mkdtemp(prefix="prefect-gitops-bench-"))
    os.environ.update(PREFECT_HOME=str(base / "orchestrator-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    info = machine()
    log(f"machine: {info}")
    all_results = []
    port = free_port()
    try:
        for n in [int(s) for s in args.sizes.split(",") if s]:
            workdir = base / f"n{n}"
            workdir.mkdir()
            results = Bench(n, args.reps_large if n > 1000 and args.reps_large else args.reps, workdir, port, args).go()
            all_results.append(results)
            per = med(results, "peer_change", "wall")
            if per and n >= 100:
                args.peer_projection = per / n
            run = {"command": " ".join([".venv/bin/python", "bench/run.py"] + sys.argv[1:]),
                   "finished": f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M}",
                   "minutes": (time.perf_counter() - started) / 60}
            Path(args.output).with_suffix(".json").write_text(json.dumps(
                {"machine": info, "run": run, "args": {"reps": args.reps, "reps_large": args.reps_large, "peer_reps_large": args.peer_reps_large,
                          "backend": args.backend},
                 "results": _raw(all_results)}, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
        else:
            log(f"kept {base}")
    table, targets = summarize(all_results)
    print("\n" + table + "\n\n" + targets + "\n")
    write_results(Path(args.output), info, all_results, table, targets, args, run)
    log(f"wrote {args.output} in {(time.perf_counter() - started) / 60:.1f} min")


if __name__ == "__main__":
    main()
