"""Where a no-op reconcile spends its time, step by step (benchmark only).

    .venv/bin/python bench/profile_noop.py [--n 1000] [--reps 5] [--event-log]

By default a full read (full_check=True: every target read); with --event-log, a drift check that
asks the server's event log first (the default when Git is unchanged and the last check ended in sync).

Starts a fresh local server, creates the benchmark's pools and N deployments and a GitOps repo
(the same as run.py), applies once, then runs reconcile() in this process (no flow run) with a
drift check due every time, timing each adapter call (our own methods are wrapped; nothing of
Prefect is touched). Prints the median of each step and one paginated read of all deployments.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run as bench  # noqa: E402


def timed(owner, name: str, steps: dict) -> None:
    original = getattr(owner, name)

    @contextlib.contextmanager
    def clock():
        start = time.perf_counter()
        try:
            yield
        finally:
            steps[name].append(time.perf_counter() - start)

    if asyncio.iscoroutinefunction(original):
        async def wrapper(*args, **kwargs):
            with clock():
                return await original(*args, **kwargs)
    else:
        def wrapper(*args, **kwargs):
            with clock():
                return original(*args, **kwargs)
    setattr(owner, name, wrapper)


async def profile(server: bench.Server, repo_url: str, reps: int, event_log: bool) -> None:
    from prefect.client.orchestration import PrefectClient

    import prefect_gitops.reconcile as reconcile_module
    import prefect_gitops.record as record_module
    from prefect_gitops.adapters.git import GitSource
    from prefect_gitops.adapters.locks import environment_lock
    from prefect_gitops.adapters.prefect_api import PrefectAPI
    from prefect_gitops.reconcile import ReconcileRequest, reconcile

    steps: dict[str, list[float]] = defaultdict(list)
    for name in ("read_state", "write_state", "read_deployments", "read_work_pools", "read_work_queues",
                 "read_change_events"):
        timed(PrefectAPI, name, steps)
    for name in ("resolve",):
        timed(GitSource, name, steps)
    for name in ("load_environment", "plan"):
        timed(reconcile_module, name, steps)
    timed(record_module, "finish_apply", steps)
    totals, reads = [], []
    async with PrefectClient(server.url) as client:
        api = PrefectAPI(client)

        @contextlib.asynccontextmanager
        async def lock(env, timeout):
            start = time.perf_counter()
            async with environment_lock(client, env, timeout):
                steps["lock (acquire)"].append(time.perf_counter() - start)
                yield
                start = time.perf_counter()
            steps["lock (release)"].append(time.perf_counter() - start)

        # settle: the first check after the apply reads every target (the apply's 1,000 writes are in the log)
        await reconcile(ReconcileRequest(environment=bench.ENV, source=GitSource(repo_url)), api, None, lock=lock)
        steps.clear()
        for _ in range(reps):
            start = time.perf_counter()
            await client.read_deployments(limit=200, offset=0)
            offset = 200
            while len(await client.read_deployments(limit=200, offset=offset)) == 200:
                offset += 200
            reads.append(time.perf_counter() - start)
            request = ReconcileRequest(environment=bench.ENV, source=GitSource(repo_url), full_check=not event_log)
            start = time.perf_counter()
            result = await reconcile(request, api, None, lock=lock)
            totals.append(time.perf_counter() - start)
            assert result.status == "in-sync", (result.status, result.message)
            assert (result.drift_check == "event log") == event_log, result.drift_check
    print(f"reconcile() {bench.median(totals):.3f} s; one paginated read of all deployments "
          f"{bench.median(reads):.3f} s; ratio {bench.median(totals) / bench.median(reads):.2f}x")
    for name, values in steps.items():
        per_run = sum(values) / reps
        print(f"  {name:<20} {per_run:.3f} s per reconcile ({len(values) // reps} call(s))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--event-log", action="store_true", help="profile a drift check that asks the event log")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prefect-gitops-profile-") as tmp:
        work = Path(tmp)
        server = bench.Server(work / "home", bench.free_port())
        server.start()
        try:
            os.environ.update({k: v for k, v in server.env.items() if k.startswith("PREFECT_")})
            os.environ["PREFECT_GITOPS_CACHE_DIR"] = str(work / "cache")
            (work / "peer").mkdir()
            asyncio.run(bench.create_objects(server, args.n, work / "peer"))
            repo = bench.Repo(work / "repo")
            repo.commit(bench.environment_file(args.n, "1.0.0", check_interval=0), "first")
            subprocess.run([bench.PY, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", bench.ENV],
                           check=True, capture_output=True, env=os.environ)
            asyncio.run(profile(server, repo.url, args.reps, args.event_log))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
