"""The reliability figures as a table (pure): the JSON lines `figures.record` writes -> Markdown.

One row per trial kind, in a fixed order (a kind no trial ran shows 0 trials, so a missing trial file
is visible); kinds this list does not know follow, by name. tests/unit/test_reliability_figures.py
tests it; tests/reliability/run.py uses it for RESULTS.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterable

KINDS = ("kill", "api-fault", "server-restart", "git-fault", "storm", "planner-property")
COLUMNS = ("Trial", "Trials run", "Converged", "Changes lost", "Changes doubled", "Faults injected",
           "Retried", "Failed cleanly")


@dataclass
class Totals:
    trials: int = 0
    converged: int = 0
    lost: int = 0
    doubled: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    retried: int = 0
    failed_cleanly: int = 0

    def add(self, line: dict[str, object]) -> None:
        self.trials += 1
        self.converged += bool(line["converged"])
        self.lost += _count(line, "lost")
        self.doubled += _count(line, "doubled")
        self.retried += _count(line, "retried")
        self.failed_cleanly += _count(line, "failed_cleanly")
        faults = line.get("faults") or {}
        if not isinstance(faults, dict):
            raise ValueError(f"faults is {faults!r}, not a mapping of kind to count")
        for kind, n in faults.items():
            self.faults[kind] = self.faults.get(kind, 0) + int(n)

    def row(self, kind: str) -> list[str]:
        faults = ", ".join(f"{k}: {n}" for k, n in sorted(self.faults.items())) or "none"
        return [kind, str(self.trials), f"{self.converged}/{self.trials}", str(self.lost), str(self.doubled),
                faults, str(self.retried), str(self.failed_cleanly)]


def _count(line: dict[str, object], key: str) -> int:
    value = line.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{key} is {value!r}, not a count")
    return value


def totals(lines: Iterable[str]) -> dict[str, Totals]:
    """The figures by trial kind: every known kind, then the others by name. A line that is not a
    record names its number in the ValueError."""
    by_kind: dict[str, Totals] = {kind: Totals() for kind in KINDS}
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            by_kind.setdefault(str(line["trial"]), Totals()).add(line)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"figures line {number}: {exc}") from exc
    return {k: by_kind[k] for k in [*KINDS, *sorted(set(by_kind) - set(KINDS))]}


def table(lines: Iterable[str]) -> str:
    """The Markdown table of the figures."""
    rows = [list(COLUMNS), ["---"] * len(COLUMNS)]
    rows += [t.row(kind) for kind, t in totals(lines).items()]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


@dataclass(frozen=True)
class RunFacts:
    """What RESULTS.md says about the run the figures come from."""

    date: str
    commit: str
    cores: int
    prefect_version: str
    mode: str  # "full" or "ci"
    wall_seconds: float
    pytest_exit: int


def results_markdown(lines: Iterable[str], facts: RunFacts) -> str:
    outcome = "passed" if facts.pytest_exit == 0 else f"FAILED (pytest exit {facts.pytest_exit})"
    return (
        "# Reliability figures\n\n"
        "Written by `python tests/reliability/run.py` (see the README's Reliability section); do not edit.\n\n"
        + table(lines)
        + f"\n- Date: {facts.date}\n- Commit: {facts.commit}\n- Machine: {facts.cores} cores\n"
        f"- Prefect: {facts.prefect_version}\n- Counts: {facts.mode}\n"
        f"- Wall time: {facts.wall_seconds:.0f} s\n- Trials: {outcome}\n")
