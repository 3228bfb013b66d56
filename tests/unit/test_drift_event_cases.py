"""Table-driven: each tests/cases/drift_events/*.yaml is watched targets + managed values + change
events -> the reasons a drift check must read every target (see _README.md there)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from prefect_gitops.drift_events import (
    PERSIST_LAG,
    SKEW,
    ChangeEvent,
    Watched,
    covered_after_event_check,
    covered_after_full_read,
    reasons_to_read,
)
from prefect_gitops.state import Inventory, ManagedKey

CASES = Path(__file__).parent.parent / "cases" / "drift_events"
T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def _inventory(managed: dict) -> Inventory:
    inventory = Inventory()
    for target_type, targets in (managed or {}).items():
        for target, keys in targets.items():
            for key, value in keys.items():
                inventory.put(target_type, target, key, ManagedKey(value=value, applied=True, had_previous=False))
    return inventory


@pytest.mark.parametrize("case_name", sorted(p.stem for p in CASES.glob("*.yaml")))
def test_drift_event_case(case_name):
    case = yaml.safe_load((CASES / f"{case_name}.yaml").read_text())
    events = [ChangeEvent(target_type=e["type"], target=e["target"], action=e["action"],
                          occurred=T0 + dt.timedelta(seconds=e["at"]), updates=e.get("updates") or {})
              for e in case["events"]]
    watched = Watched(work_pools=frozenset(case["watched"]["work_pools"]),
                      deployments=frozenset(case["watched"]["deployments"]),
                      queue_pools=frozenset(case["watched"]["queue_pools"]))
    reasons = reasons_to_read(events, watched, _inventory(case["managed"]))
    assert len(reasons) == len(case["expect"]), reasons
    for reason, wanted in zip(reasons, case["expect"]):
        assert wanted in reason, reasons


def test_what_a_check_records_as_covered():
    # a full read covers what happened before it started, less the clocks' margin
    assert covered_after_full_read(T0) == T0 - SKEW
    # a check that asked the log covers only what had surely been persisted by then...
    long_ago = T0 - dt.timedelta(hours=1)
    assert covered_after_event_check(long_ago, T0) == T0 - PERSIST_LAG
    # ...and never less than what was covered before it
    recent = T0 - dt.timedelta(seconds=10)
    assert covered_after_event_check(recent, T0) == recent
