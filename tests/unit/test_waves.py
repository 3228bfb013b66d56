"""Waves and the promotion gate (prefect_gitops.waves, pure), table-driven.

README, "Waves": the target's own `wave:`, else the first `rollout.waves` selector that matches
(deployment name patterns, deployment tags, work pool name patterns; a pool's queues roll out with the
pool), else wave 0. README, "Environments and promotion": qa must be healthy (its last reconcile
succeeded, it is not rolled back).
"""

from __future__ import annotations

import datetime as dt

import pytest

from prefect_gitops.model import EnvironmentFile, PromotionGate
from prefect_gitops.plan import ActualState, Change, DeploymentActual, PoolActual
from prefect_gitops.state import Condition, EnvironmentState, Inventory, ManagedKey, RolledBack
from prefect_gitops.waves import assign_waves, unsoaked_images, wave_of

SPEC = EnvironmentFile.model_validate({
    "rollout": {"max_parallel": 3, "waves": [
        {"wave": 1, "name": "canary", "tags": ["canary", "early"], "max_parallel": 1},
        {"wave": 2, "name": "batch", "deployments": ["batch/*"], "tags": ["batchy"]},
        {"wave": 3, "name": "k8s pools", "work_pools": ["k8s-*"], "max_parallel": 2},
        {"wave": 4, "name": "late", "deployments": ["*"], "work_pools": ["*"]},
    ]},
    "work_pools": {
        "k8s-eu": {"job_variables": {"image": "i"}},
        "k8s-pinned": {"job_variables": {"image": "i"}, "wave": 7},
        "docker-eu": {"job_variables": {"image": "i"}},
        "k8s-queued": {"work_queues": {"critical": {"priority": 2}}},
    },
    "deployments": {
        "etl/tagged": {"job_variables": {"image": "i"}},
        "etl/tagged-pinned": {"job_variables": {"image": "i"}, "wave": 9},
        "etl/pinned-zero": {"job_variables": {"image": "i"}, "wave": 0},
        "batch/nightly": {"job_variables": {"image": "i"}},
        "batch/tagged": {"job_variables": {"image": "i"}},
        "etl/plain": {"job_variables": {"image": "i"}},
        "etl/k8s-named": {"job_variables": {"image": "i"}},
    },
})
POOL_TEMPLATE = {"variables": {"properties": {"image": {"type": "string"}}}}
ACTUAL = ActualState(
    work_pools={n: PoolActual(n, n, POOL_TEMPLATE) for n in SPEC.work_pools},
    deployments={
        "etl/tagged": DeploymentActual("etl/tagged", "1", "k8s-eu", {}, tags=("team-a", "canary")),
        "etl/tagged-pinned": DeploymentActual("etl/tagged-pinned", "2", "k8s-eu", {}, tags=("canary",)),
        "etl/pinned-zero": DeploymentActual("etl/pinned-zero", "3", "k8s-eu", {}, tags=("early",)),
        "batch/nightly": DeploymentActual("batch/nightly", "4", "k8s-eu", {}, tags=()),
        # matches wave 1 by tag and wave 2 by name: the first selector that matches wins
        "batch/tagged": DeploymentActual("batch/tagged", "5", "k8s-eu", {}, tags=("early",)),
        "etl/plain": DeploymentActual("etl/plain", "6", "k8s-eu", {}, tags=("batchy-not",)),
        # a deployment name that looks like a pool pattern is not matched by work_pools selectors
        "etl/k8s-named": DeploymentActual("etl/k8s-named", "7", "k8s-eu", {}, tags=()),
    })


def change(target_type: str, target: str, key: str = "image") -> Change:
    return Change(target_type=target_type, target=target, key=key, action="set", old="old", new="new", reason="desired")


CASES = [
    # (target type, target, expected wave, why)
    ("deployment", "etl/tagged", 1, "deployment tag selector"),
    ("deployment", "etl/tagged-pinned", 9, "an explicit wave wins over a matching tag selector"),
    ("deployment", "etl/pinned-zero", 0, "an explicit wave 0 wins too"),
    ("deployment", "batch/nightly", 2, "deployment name pattern"),
    ("deployment", "batch/tagged", 1, "the first matching selector wins (tag before a later name pattern)"),
    ("deployment", "etl/plain", 4, "a tag only matches exactly; the catch-all selector takes it"),
    ("deployment", "etl/k8s-named", 4, "work_pools patterns do not select deployments"),
    ("work_pool", "k8s-eu", 3, "work pool name pattern"),
    ("work_pool", "k8s-pinned", 7, "an explicit wave wins over a matching work pool selector"),
    ("work_pool", "docker-eu", 4, "a pool matching no earlier pattern: the catch-all"),
    ("work_queue", "k8s-queued/critical", 3, "a pool's queues roll out with the pool (pattern)"),
    ("work_queue", "k8s-pinned/critical", 7, "a pool's queues roll out with the pool (explicit wave)"),
]


@pytest.mark.parametrize("target_type,target,expected,why", CASES, ids=[c[3] for c in CASES])
def test_wave_of(target_type, target, expected, why):
    assert wave_of(change(target_type, target), SPEC, ACTUAL) == expected, why


def test_unmatched_targets_go_to_wave_0():
    spec = EnvironmentFile.model_validate({
        "rollout": {"waves": [{"wave": 1, "tags": ["canary"]}, {"wave": 2, "work_pools": ["k8s-*"]}]},
        "work_pools": {"docker-eu": {"job_variables": {"image": "i"}}},
        "deployments": {"etl/plain": {"job_variables": {"image": "i"}}}})
    actual = ActualState(work_pools={"docker-eu": PoolActual("docker-eu", "p", POOL_TEMPLATE)},
                         deployments={"etl/plain": DeploymentActual("etl/plain", "d", "docker-eu", {}, tags=("other",))})
    assert wave_of(change("deployment", "etl/plain"), spec, actual) == 0
    assert wave_of(change("work_pool", "docker-eu"), spec, actual) == 0
    # a deployment the server does not have (yet): no tags, no crash
    assert wave_of(change("deployment", "etl/unknown"), spec, actual) == 0


def test_assign_waves_orders_names_and_bounds_the_waves():
    changes = [change(t, n) for t, n, _, _ in CASES] + [change("deployment", "etl/tagged", "env")]
    waves = assign_waves(changes, SPEC, ACTUAL)
    assert [(w.number, w.name, w.max_parallel) for w in waves] == [
        (0, "wave 0", 3),  # no selector: the rollout's max_parallel
        (1, "canary", 1),
        (2, "batch", 3),  # a selector without max_parallel: the rollout's
        (3, "k8s pools", 2),
        (4, "late", 3),
        (7, "wave 7", 3),
        (9, "wave 9", 3),
    ]
    by_wave = {w.number: [(c.target, c.key) for c in w.changes] for w in waves}
    assert by_wave[1] == [("etl/tagged", "image"), ("batch/tagged", "image"), ("etl/tagged", "env")]
    assert by_wave[3] == [("k8s-eu", "image"), ("k8s-queued/critical", "image")]
    assert by_wave[7] == [("k8s-pinned", "image"), ("k8s-pinned/critical", "image")]
    assert sum(len(w.changes) for w in waves) == len(changes)


# -- the promotion gate: qa must be healthy ------------------------------------------------------

NOW = dt.datetime(2030, 1, 1, 12, 0, tzinfo=dt.timezone.utc)
GATE = PromotionGate.model_validate({"from": "qa", "soak_seconds": 60})
PROD_CHANGES = [Change(target_type="deployment", target="etl/daily", key="image", action="set",
                       old="flows:4", new="flows:5", reason="desired")]


def qa_state(condition: Condition | None, rolled_back: RolledBack | None = None,
             applied_at: dt.datetime = NOW - dt.timedelta(hours=1)) -> EnvironmentState:
    inventory = Inventory(deployments={"etl/daily": {"image": ManagedKey(
        value="flows:5", applied=True, had_previous=False, applied_at=applied_at)}})
    return EnvironmentState(environment="qa", inventory=inventory, condition=condition, rolled_back=rolled_back,
                            last_applied_revision="b" * 40, last_applied_at=applied_at)


HEALTH = [
    # (why, qa condition, rolled back, refusal or None)
    ("healthy and soaked", Condition(ready=True, reason="Applied"), None, None),
    ("healthy, nothing changed since", Condition(ready=True, reason="InSync"), None, None),
    ("last reconcile refused the file", Condition(ready=False, reason="ValidationFailed"), None,
     "'qa' is not healthy (ValidationFailed)"),
    ("last apply failed", Condition(ready=False, reason="ApplyFailed"), None, "'qa' is not healthy (ApplyFailed)"),
    ("last smoke test failed", Condition(ready=False, reason="SmokeTestFailed"), None,
     "'qa' is not healthy (SmokeTestFailed)"),
    ("rolled back (as a rollback records it)", Condition(ready=False, reason="RolledBack"),
     RolledBack(from_revision="c" * 40, to_revision="b" * 40, reason="manual"), "'qa' is not healthy (RolledBack)"),
    ("rolled back, even with a condition that says ready", Condition(ready=True, reason="Applied"),
     RolledBack(from_revision="c" * 40, to_revision="b" * 40, reason="automatic"), "'qa' is not healthy"),
    ("no condition recorded", None, None, "'qa' is not healthy (unknown)"),
]


@pytest.mark.parametrize("why,condition,rolled_back,refusal", HEALTH, ids=[h[0] for h in HEALTH])
def test_promotion_gate_requires_a_healthy_source(why, condition, rolled_back, refusal):
    refused = unsoaked_images(PROD_CHANGES, GATE, qa_state(condition, rolled_back), NOW)
    if refusal is None:
        assert refused == {}, why
    else:
        assert list(refused) == ["flows:5"] and refused["flows:5"].startswith(refusal), (why, refused)


def test_promotion_gate_soak_and_presence():
    healthy = Condition(ready=True, reason="Applied")
    fresh = qa_state(healthy, applied_at=NOW - dt.timedelta(seconds=10))
    assert unsoaked_images(PROD_CHANGES, GATE, fresh, NOW) == {"flows:5": "soaked 10s in 'qa', needs 60s"}
    other = [PROD_CHANGES[0].model_copy(update={"new": "flows:6"})]
    assert unsoaked_images(other, GATE, qa_state(healthy), NOW) == {"flows:6": "not running in 'qa'"}
    assert unsoaked_images(PROD_CHANGES, GATE, None, NOW) == {"flows:5": "environment 'qa' has never been reconciled"}
    # drift corrections bring no new image: the gate does not hold them, even with qa unhealthy
    drift = [PROD_CHANGES[0].model_copy(update={"reason": "drift"})]
    assert unsoaked_images(drift, GATE, qa_state(Condition(ready=False, reason="ApplyFailed")), NOW) == {}
