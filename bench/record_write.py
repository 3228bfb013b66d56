"""An apply's record write at the history cap, alone: no deployments, no Git, only the record through the
product's adapter on a fresh local server (SQLite) — the figure of issue 17's target (<= 0.3 s), without the
hour a full N = 10,000 run takes.

    .venv/bin/python bench/record_write.py --n 10000 --reps 7      # about 1 minute
    .venv/bin/python bench/record_write.py --backend postgres      # on the production-shaped server

The state holds what the benchmark's environment holds at N (an image and an env per deployment, half of
them taking the image from their pool: 1.5 keys per deployment), the history 50 entries of an apply of a
new image for all N (N/2 changes each). Each rep reads the state as a reconcile does (without the history),
adds one such entry, and times write_state: the entry's document and the state, with the entry the previous write pruned off the
cap deleted alongside.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path


def make_state(n: int):
    from prefect_gitops.state import EnvironmentState, HISTORY_LIMIT, HistoryEntry, ManagedKey, utcnow
    from prefect_gitops.plan import Change

    state = EnvironmentState(environment="bench")
    for i in range(n):
        name = f"bench-{(i // 10) % 10:02d}/dep-{i:05d}"
        state.inventory.put("deployment", name, "env", ManagedKey(
            value={"TEAM": f"team-{i % 7}"}, applied=True, had_previous=False, revision="a" * 40, applied_at=utcnow()))
        if i % 2:
            state.inventory.put("deployment", name, "image", ManagedKey(
                value="registry.example.com/flows:2.0.0", applied=True, had_previous=True,
                previous="registry.example.com/flows:1.0.0", revision="a" * 40, applied_at=utcnow()))

    def apply_entry(tag: str) -> HistoryEntry:
        now = utcnow()
        return HistoryEntry(revision=tag * 40, outcome="applied", started_at=now, finished_at=now, changes=[
            Change(target_type="deployment", target=f"bench-{(i // 10) % 10:02d}/dep-{i:05d}", key="image",
                   action="set", old="registry.example.com/flows:1.0.0", old_present=True,
                   new=f"registry.example.com/flows:2.0.{tag}", reason="desired") for i in range(1, n, 2)])

    for k in range(HISTORY_LIMIT):
        state.add_history(apply_entry(f"{k % 10}"))
    return state, apply_entry


async def measure(n: int, reps: int) -> dict:
    from prefect import get_client

    from prefect_gitops.adapters.prefect_api import PrefectAPI

    state, apply_entry = make_state(n)
    counted = {"n": 0}

    async def hook(request):
        counted["n"] += 1

    async with get_client() as client:
        api = PrefectAPI(client)
        await api.write_state(state, None)  # the cap's 50 entries and the state
        client._client.event_hooks["request"].append(hook)
        seconds, requests = [], []
        for rep in range(reps):
            light, handle = await api.read_state("bench", history=False)
            light.add_history(apply_entry(f"{rep % 10}"))
            counted["n"] = 0
            started = time.perf_counter()
            await api.write_state(light, handle)
            seconds.append(time.perf_counter() - started)
            requests.append(counted["n"])
    return {"n": n, "managed_keys": state.inventory.count(), "entry_changes": len(range(1, n, 2)),
            "median_s": statistics.median(seconds), "seconds": [round(s, 3) for s in seconds],
            "requests": requests}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10000)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                        help="postgres: the production-shaped server (PostgreSQL, Redis, two API replicas), as run.py")
    args = parser.parse_args()

    import os
    import signal
    import sys

    from prefect_gitops.local_server import free_port, running_server, server_env

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on kill
    home = Path(tempfile.mkdtemp(prefix="prefect-gitops-record-"))
    if args.backend == "postgres":
        from prefect_gitops.production_server import running_production_server

        with running_production_server(home) as server:
            os.environ.update(server.client_env(0), PREFECT_SERVER_ANALYTICS_ENABLED="false")
            print(json.dumps({"backend": "postgres", **asyncio.run(measure(args.n, args.reps))}))
        return
    port = free_port()
    env = server_env(home, port)
    with running_server(home, port, env={**os.environ, **env}):
        os.environ.update(env)
        print(json.dumps({"backend": "sqlite", **asyncio.run(measure(args.n, args.reps))}))


if __name__ == "__main__":
    main()
