"""Every case of tests/cases/hostile/ through the loader, as a reconcile reads it (load_environment on a
work tree): refused with a ConfigError naming the file, the key (starting with the case's expect_key;
none for a whole-file problem),
the line where the case gives one, and the message; never another exception (no traceback). Cases the
server must decide (found_by: server) load cleanly here; tests/integration/test_hostile_input.py runs
every case through the real reconcile and the CLI."""

from __future__ import annotations

import pytest

from hostile_cases import Names, expected, load_cases, place
from prefect_gitops.errors import ConfigError
from prefect_gitops.loader import load_environment

CASES = load_cases()
NAMES = Names(pool="hostile-pool", flow="hostile-flow")


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
    assert all(c.get("found_by") in ("loader", "server") for c in CASES.values())


@pytest.mark.parametrize("name", sorted(CASES))
def test_case_is_refused_by_the_loader(name, tmp_path):
    case = CASES[name]
    place(case, NAMES, tmp_path / "repo", "hostile", tmp_path / "outside")
    key, message, line = expected(case, NAMES)
    try:
        loaded = load_environment(tmp_path / "repo", "environments", "hostile")
    except ConfigError as exc:
        problem = exc.problems[0]
    else:
        assert message is None or case["found_by"] == "server", f"{name}: accepted"
        assert loaded.file == "environments/hostile.yaml"
        return
    assert message is not None and case["found_by"] == "loader", f"{name}: refused by the loader: {problem}"
    assert problem.file == "environments/hostile.yaml", problem
    assert problem.key is None if key is None else (problem.key or "").startswith(key), problem
    assert message in problem.message, problem
    if line is not None:
        assert problem.line == line, problem
