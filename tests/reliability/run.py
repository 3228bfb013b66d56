"""Run the reliability trials and write their figures to tests/reliability/RESULTS.md.

    python tests/reliability/run.py          # the full counts (PREFECT_GITOPS_FULL_TRIALS=1), ~10 minutes
    python tests/reliability/run.py --ci     # the reduced counts CI runs
    python tests/reliability/run.py -- -k planner   # anything after -- goes to pytest

Runs `python -m pytest tests/reliability -p no:cacheprovider -n 0` with PREFECT_GITOPS_FIGURES set to a
temporary file, where every trial appends its figures (figures.py), then sums them by trial kind
(figures_table.py), writes RESULTS.md, prints the table and exits with pytest's exit status. It does
not know which trial files exist: whatever ran is counted, and a kind that did not run shows 0 trials.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from figures_table import RunFacts, results_markdown, table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ci", action="store_true", help="the reduced trial counts (as CI runs them)")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="prefect-gitops-figures-") as tmp:
        figures = Path(tmp) / "figures.jsonl"
        figures.touch()
        env = {**os.environ, "PREFECT_GITOPS_FIGURES": str(figures)}
        env.pop("PREFECT_GITOPS_FULL_TRIALS", None)
        if not args.ci:
            env["PREFECT_GITOPS_FULL_TRIALS"] = "1"
        started = time.monotonic()
        command = [sys.executable, "-m", "pytest", str(HERE), "-p", "no:cacheprovider", "-n", "0", *args.pytest_args]
        exit_code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        wall = time.monotonic() - started
        lines = figures.read_text(encoding="utf-8").splitlines()

    facts = RunFacts(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), commit=_commit(),
                     cores=os.cpu_count() or 0, prefect_version=importlib.metadata.version("prefect"),
                     mode="ci (reduced)" if args.ci else "full (PREFECT_GITOPS_FULL_TRIALS=1)",
                     wall_seconds=wall, pytest_exit=exit_code)
    (HERE / "RESULTS.md").write_text(results_markdown(lines, facts), encoding="utf-8")
    print(table(lines), end="")
    print(f"{len(lines)} trial(s) in {wall:.0f} s; written to {HERE / 'RESULTS.md'}")
    return exit_code


def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!tests/reliability/RESULTS.md")
    return commit + (" (with uncommitted changes)" if changed else "")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
