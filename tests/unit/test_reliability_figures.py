"""The reliability figures' table (tests/reliability/figures_table.py): JSON lines -> Markdown."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_PATH = Path(__file__).parents[1] / "reliability" / "figures_table.py"
_spec = importlib.util.spec_from_file_location("figures_table", _PATH)
assert _spec is not None and _spec.loader is not None
figures_table = importlib.util.module_from_spec(_spec)
sys.modules["figures_table"] = figures_table  # dataclasses look their module up by name
_spec.loader.exec_module(figures_table)


def line(trial: str, **figures: object) -> str:
    return json.dumps({"trial": trial, "converged": True, "lost": 0, "doubled": 0, "faults": {}, "retried": 0,
                       "failed_cleanly": 0, **figures})


def rows(markdown: str) -> dict[str, list[str]]:
    """Table rows by trial kind, the header and the rule left out."""
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in markdown.strip().splitlines()]
    assert cells[0] == list(figures_table.COLUMNS) and set(cells[1]) == {"---"}
    return {row[0]: row[1:] for row in cells[2:]}


def test_figures_are_summed_by_trial_kind() -> None:
    lines = [
        line("kill", faults={"sigkill": 1}, retried=2),
        line("kill", converged=False, lost=1, faults={"sigkill": 1}),
        "",
        line("api-fault", faults={"http-503": 3, "reset": 1}, retried=4, failed_cleanly=1),
        line("api-fault", faults={"http-503": 2}, doubled=1),
        line("planner-property"), line("planner-property", converged=False),
    ]
    got = rows(figures_table.table(lines))
    assert got["kill"] == ["2", "1/2", "1", "0", "sigkill: 2", "2", "0"]
    assert got["api-fault"] == ["2", "2/2", "0", "1", "http-503: 5, reset: 1", "4", "1"]
    assert got["planner-property"] == ["2", "1/2", "0", "0", "none", "0", "0"]


def test_every_known_kind_has_a_row_in_order_and_unknown_kinds_follow() -> None:
    got = rows(figures_table.table([line("zeta"), line("alpha-new")]))
    assert list(got) == [*figures_table.KINDS, "alpha-new", "zeta"]
    assert got["storm"] == ["0", "0/0", "0", "0", "none", "0", "0"]  # a trial file that did not run shows
    assert got["zeta"][:2] == ["1", "1/1"]


@pytest.mark.parametrize("bad", ["not json", json.dumps({"converged": True}), line("kill", lost=-1),
                                 line("kill", retried="2"), line("kill", faults=["sigkill"])])
def test_a_line_that_is_not_a_record_is_refused_with_its_number(bad: str) -> None:
    with pytest.raises(ValueError, match="figures line 2"):
        figures_table.totals([line("kill"), bad])


def test_results_markdown_says_where_the_figures_come_from() -> None:
    facts = figures_table.RunFacts(date="2026-12-01 23:00 UTC", commit="abc123def456", cores=2,
                                   prefect_version="3.8.8", mode="full (PREFECT_GITOPS_FULL_TRIALS=1)",
                                   wall_seconds=412.4, pytest_exit=1)
    text = figures_table.results_markdown([line("storm", faults={"writer": 8})], facts)
    assert rows(text.split("\n\n", 2)[2].split("\n\n")[0])["storm"] == ["1", "1/1", "0", "0", "writer: 8", "0", "0"]
    for fact in ("Date: 2026-12-01 23:00 UTC", "Commit: abc123def456", "Machine: 2 cores", "Prefect: 3.8.8",
                 "Counts: full (PREFECT_GITOPS_FULL_TRIALS=1)", "Wall time: 412 s", "Trials: FAILED (pytest exit 1)"):
        assert f"- {fact}\n" in text
