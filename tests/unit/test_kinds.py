"""The registry of target kinds (prefect_gitops.kinds): README, "Layout": adding a kind is one module plus
its registration; the data it lives in (TargetType, the inventory, ActualState) must name it the same way."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from prefect_gitops.drift_events import CHANGE_EVENTS
from prefect_gitops.kinds import KINDS, kind, kind_of_event, register
from prefect_gitops.state import Inventory
from prefect_gitops.targets import ActualState, TargetType


def test_kinds_are_registered_in_write_order():
    assert [k.name for k in KINDS] == ["work_pool", "deployment", "work_queue"]
    assert all(kind(k.name) is k for k in KINDS)
    with pytest.raises(KeyError):
        kind("flow")
    with pytest.raises(ValueError):
        register(KINDS[0])


def test_every_kind_has_its_name_and_section_in_the_stored_records():
    assert {k.name for k in KINDS} == set(typing.get_args(TargetType))
    assert [k.section for k in KINDS] == list(Inventory.model_fields)
    assert [k.section for k in KINDS] == [f.name for f in dataclasses.fields(ActualState)]


def test_the_server_change_events_of_every_kind_are_asked_for_and_told_apart():
    assert sorted(CHANGE_EVENTS) == sorted([
        *(f"prefect.deployment.{a}" for a in ("created", "updated", "deleted")),
        *(f"prefect.work-pool.{a}" for a in ("created", "updated", "deleted")),
        *(f"prefect.work-queue.{a}" for a in ("created", "updated", "deleted", "paused", "ready", "not-ready")),
    ])
    assert kind_of_event("prefect.work-queue.not-ready") == (kind("work_queue"), "not-ready")
    assert kind_of_event("prefect.work-pool.updated") == (kind("work_pool"), "updated")
    assert kind_of_event("prefect.flow-run.Completed") is None
