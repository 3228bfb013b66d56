"""Table-driven planner tests: each tests/cases/planner/*.yaml is desired + actual + inventory -> plan."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from prefect_gitops.model import EnvironmentFile
from prefect_gitops.plan import ActualState, DeploymentActual, PoolActual, QueueActual, plan
from prefect_gitops.state import Inventory

CASES = Path(__file__).parent.parent / "cases" / "planner"
SHARED_POOLS = yaml.safe_load((CASES / "_pools.yaml").read_text())


def _actual(raw: dict) -> ActualState:
    pools = dict(SHARED_POOLS)
    pools.update((raw or {}).get("work_pools") or {})
    return ActualState(
        work_pools={n: PoolActual(name=n, id=f"id-{n}", base_job_template={"variables": v}) for n, v in pools.items()},
        deployments={
            n: DeploymentActual(name=n, id=f"id-{n}", work_pool_name=d.get("work_pool"), job_variables=d.get("job_variables") or {})
            for n, d in ((raw or {}).get("deployments") or {}).items()
        },
        work_queues={n: QueueActual(name=n, id=f"id-{n}", values=v)
                     for n, v in ((raw or {}).get("work_queues") or {}).items()},
    )


def _case_ids():
    return sorted(p.stem for p in CASES.glob("*.yaml") if not p.name.startswith("_"))


@pytest.mark.parametrize("case_name", _case_ids())
def test_planner_case(case_name):
    case = yaml.safe_load((CASES / f"{case_name}.yaml").read_text())
    result = plan(
        EnvironmentFile.model_validate(case.get("desired") or {}),
        _actual(case.get("actual")),
        Inventory.model_validate(case.get("inventory") or {}),
        case.get("drift_mode", "correct"),
    )
    expect = case["expect"]

    problems = [(".".join(p.path), p.message) for p in result.problems]
    expected_problems = expect.get("problems", [])
    assert len(problems) == len(expected_problems), problems
    for (path, message), wanted in zip(problems, expected_problems):
        assert path == wanted["path"]
        assert wanted["contains"] in message, message

    got = [
        {"target": c.target, "key": c.key, "action": c.action, "old": c.old, "new": c.new, "reason": c.reason,
         "apply": c.apply, "removed_from_git": c.removed_from_git}
        for c in result.changes
    ]
    wanted = [{"apply": True, "removed_from_git": False, **c} for c in expect.get("changes", [])]
    assert got == wanted

    if "noops" in expect:
        assert sorted((n.target, n.key, n.reason) for n in result.noops) == sorted(
            (n["target"], n["key"], n["reason"]) for n in expect["noops"]
        )
