"""The apply's write concurrency on SQLite and on PostgreSQL (issue 16). Not part of the test suite.

    .venv/bin/python bench/concurrency.py                       # N = 400, 4/8/16 in flight, 3 reps each
    .venv/bin/python bench/concurrency.py --n 100 --reps 1      # a quick look

For each backend, a fresh server: the local SQLite server the demo and the tests start
(prefect_gitops.local_server), and the production-shaped one (prefect_gitops.production_server:
PostgreSQL, Redis, two API replicas, the services apart; the CLI talks to replica 1). On each, run.py's
estate (10 kubernetes pools, N deployments, a real Git repo describing them), a first apply that takes
them over, then per repetition, for each --concurrency level in turn (interleaved, so a slow moment of
the machine hits every level alike), a new image for all N: 5 pool defaults + N/2 deployments written
by `prefect-gitops apply --concurrency C` (through bench/cli_timed.py and bench/measure.py, behind
bench/proxy.py's counting proxy, as run.py measures applies). Reported per backend and level, median of
--reps: the CLI's wall time, reconcile()'s time, the writes per second inside reconcile(), and the
server's 503 answers (SQLite's "database is locked", retried by the client). Writes results to
bench/concurrency.json; the figures and what was decided from them are in findings.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from proxy import CountingProxy  # noqa: E402
from run import (  # noqa: E402
    ENV, PY, Measured, Repo, apply_writes, create_objects, environment_file, log, machine)

from prefect_gitops.local_server import free_port, running_server, server_env  # noqa: E402
from prefect_gitops.production_server import running_production_server  # noqa: E402


class Endpoint:
    """What run.py's helpers need of a server: its API URL."""

    def __init__(self, url: str):
        self.url = url


@contextlib.contextmanager
def backend(name: str, workdir: Path) -> Iterator[tuple[Endpoint, dict[str, str]]]:
    """A fresh server of that backend; its API and the settings of the clients that talk to it."""
    home = workdir / name
    home.mkdir()
    if name == "sqlite":
        port = free_port()
        env = server_env(home, port)
        with running_server(home, port, env={**os.environ, **env}):
            yield Endpoint(env["PREFECT_API_URL"]), env
    else:
        with running_production_server(home) as server:
            yield Endpoint(server.api_urls[0]), server.client_env(0)


def apply(workdir: Path, proxy: CountingProxy, client_env: dict[str, str], repo: Repo, concurrency: int,
          label: str) -> dict:
    timer = workdir / "reconcile-time"
    timer.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(client_env, PREFECT_API_URL=f"{proxy.url}/api", PREFECT_HOME=str(workdir / "client-home"),
               PREFECT_GITOPS_CACHE_DIR=str(workdir / "git-cache"), BENCH_RECONCILE_TIME=str(timer),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proxy.reset()
    result = Measured([PY, str(BENCH / "cli_timed.py"), "apply", "--source", repo.url, "--env", ENV,
                       "--concurrency", str(concurrency), "--output", "json"], env, BENCH.parent,
                      workdir / f"{label}.log", timeout=1800).run()
    time.sleep(0.2)  # let the proxy see the last connection close
    counts = proxy.snapshot()
    report = json.loads(result["output"]) if result["output"].strip().startswith("{") else {}
    times = [float(x) for x in timer.read_text().split()]
    return {"concurrency": concurrency, "wall": result["wall"], "reconcile_s": times[-1] if times else None,
            "status": report.get("status"), "applied": report.get("applied"), "exit": result["exit"],
            "requests": counts["total"], "n503": counts["statuses"].get(503, 0)}


def measure_backend(name: str, n: int, levels: list[int], reps: int, workdir: Path) -> list[dict]:
    runs: list[dict] = []
    n_writes = apply_writes(n)
    with backend(name, workdir) as (endpoint, client_env):
        port = int(endpoint.url.rsplit(":", 1)[1].split("/", 1)[0])
        proxy = CountingProxy("127.0.0.1", port).start()
        peer = workdir / f"{name}-peer"
        peer.mkdir()
        started = time.perf_counter()
        asyncio.run(create_objects(endpoint, n, peer))  # type: ignore[arg-type]  # needs only .url
        log(f"{name}: created {n} deployments in {time.perf_counter() - started:.1f} s")
        repo = Repo(workdir / f"{name}-gitops")
        repo.commit(environment_file(n, "1.0.0"), "initial")
        takeover = apply(workdir, proxy, client_env, repo, 4, f"{name}-takeover")
        log(f"{name}: takeover {takeover}")
        for rep in range(reps):
            for concurrency in levels:
                repo.commit(environment_file(n, f"2.{rep}.{concurrency}"), f"image 2.{rep}.{concurrency}")
                run = apply(workdir, proxy, client_env, repo, concurrency, f"{name}-{rep}-{concurrency}")
                run.update(backend=name, rep=rep, writes=n_writes)
                if run["status"] != "applied" or run["applied"] != n_writes:
                    log(f"UNEXPECTED {name} c={concurrency}: {run}")
                log(f"{name} c={concurrency} rep {rep}: {run['wall']:.1f} s whole, reconcile() "
                    f"{run['reconcile_s']:.1f} s, {run['n503']} x 503, {run['status']} {run['applied']}")
                runs.append(run)
    return runs


def table(runs: list[dict], levels: list[int]) -> str:
    rows = ["| backend | in flight | CLI wall (s) | reconcile() (s) | writes/s in reconcile() | 503s |",
            "|---|---|---|---|---|---|"]
    for name in dict.fromkeys(r["backend"] for r in runs):
        for concurrency in levels:
            mine = [r for r in runs if r["backend"] == name and r["concurrency"] == concurrency]
            wall = statistics.median(r["wall"] for r in mine)
            rec = statistics.median(r["reconcile_s"] for r in mine)
            rows.append(f"| {name} | {concurrency} | {wall:.1f} | {rec:.1f} | {mine[0]['writes'] / rec:.0f} | "
                        f"{statistics.median(r['n503'] for r in mine):.0f} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=400, help="deployments (default 400: 205 writes per apply)")
    parser.add_argument("--levels", default="4,8,16", help="writes in flight to compare (default 4,8,16)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--output", type=Path, default=BENCH / "concurrency.json")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="prefect-gitops-concurrency-") as tmp:
        for name in args.backends.split(","):
            workdir = Path(tmp) / name
            workdir.mkdir()
            runs += measure_backend(name, args.n, levels, args.reps, workdir)
    shown = table(runs, levels)
    print(shown)
    args.output.write_text(json.dumps({"machine": machine(), "n": args.n, "levels": levels, "reps": args.reps,
                                       "runs": runs, "table": shown}, indent=1))


if __name__ == "__main__":
    main()
