"""What each reliability trial counts, and how many trials run.

A trial calls `record(...)` once per trial it ran; with PREFECT_GITOPS_FIGURES set (by
`tests/reliability/run.py`) each record is appended to that file as one JSON line, and run.py sums them
into the table of tests/reliability/RESULTS.md and the README's Reliability section. Without it nothing
is written: the assertions are the test, the figures are the report.

`trial_count(ci, full)` is how many trials a test runs: the reduced count in CI and in a plain pytest run,
the full count with PREFECT_GITOPS_FULL_TRIALS=1 (what run.py sets).
"""

from __future__ import annotations

import json
import os


def full_trials() -> bool:
    return os.environ.get("PREFECT_GITOPS_FULL_TRIALS") == "1"


def trial_count(ci: int, full: int) -> int:
    return full if full_trials() else ci


def record(trial: str, *, converged: bool, lost: int = 0, doubled: int = 0,
           faults: dict[str, int] | None = None, retried: int = 0, failed_cleanly: int = 0) -> None:
    """One trial of kind `trial` (e.g. "kill", "api-fault", "server-restart", "git-fault", "storm",
    "planner-property"): did the next reconcile converge to Git, how many changes were lost or applied
    twice, the faults injected by kind, how many requests were retried, how many runs failed cleanly
    (ended Failed with exactly what was applied recorded)."""
    path = os.environ.get("PREFECT_GITOPS_FIGURES")
    if not path:
        return
    line = {"trial": trial, "converged": converged, "lost": lost, "doubled": doubled,
            "faults": faults or {}, "retried": retried, "failed_cleanly": failed_cleanly}
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
