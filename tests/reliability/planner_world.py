"""A generated world for the planner's properties (test_planner_properties.py): an environment file, the
server's targets and an inventory, a simulated server, and the reconcile's plan -> write-ahead -> write
-> record pass over them.

The server is simulated in memory with Prefect's write semantics, so the product's own write bodies
(`TargetKind.write`) are what changes it: a deployment's job_variables are replaced as a whole dict, a
pool's base job template as a whole template (its defaults are what prefect-gitops manages), a work
queue is created with the fields given (the server picks the priority when none is given) or has the
fields given updated. What it leaves out: the server shifting a pool's other queues' priorities.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from prefect_gitops.kinds import kind
from prefect_gitops.model import EnvironmentFile
from prefect_gitops.plan import ActualState, DeploymentActual, Plan, PoolActual, QueueActual, plan
from prefect_gitops.state import Inventory, ManagedKey, begin_apply, finish_apply

POOLS = ["p0", "p1", "p2"]
DEPLOYMENTS = ["f/d0", "f/d1", "f/d2", "g/d0"]
QUEUES = ["q0", "q1"]
KEYS = ["image", "env", "cpu", "namespace"]  # job variables a template may declare
UNMANAGED_KEYS = ["command", "labels"]  # only ever on the server: never in a file or an inventory
QUEUE_FIELDS = ["priority", "concurrency_limit", "paused"]
ABSENT: Any = object()

# A small value domain on purpose: values of Git, the server and the inventory collide often, so the
# comparisons (1 vs 1.0 vs True, nested ones too) are exercised, not just "everything differs".
SCALARS = st.none() | st.booleans() | st.sampled_from([0, 1, 1.0, 1.5, "a", "b", ""])
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=2)
                      | st.dictionaries(st.sampled_from(["x", "y"]), inner, max_size=2), max_leaves=4)
QUEUE_VALUES = {"priority": st.integers(1, 4), "concurrency_limit": st.none() | st.integers(0, 3),
                "paused": st.booleans()}


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality, written here independently of the product's: 1 == 1.0, True is not 1, at any depth."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and bool(a == b)


@dataclass
class Server:
    """The targets as the server holds them, changed only through the kinds' writes protocol."""

    pools: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> base job template
    deployments: dict[str, tuple[str | None, dict[str, Any]]] = field(default_factory=dict)  # pool, job vars
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)  # "pool/queue" -> priority, limit, paused
    writes: int = 0

    async def update_work_pool(self, name: str, base_job_template: dict[str, Any]) -> None:
        self.writes += 1
        self.pools[name] = copy.deepcopy(base_job_template)

    async def update_deployment(self, name: str, deployment_id: str, job_variables: dict[str, Any]) -> None:
        self.writes += 1
        assert deployment_id == f"id-{name}"
        self.deployments[name] = (self.deployments[name][0], copy.deepcopy(job_variables))

    async def create_or_update_work_queue(self, pool: str, name: str, queue_id: str | None,
                                          fields: dict[str, Any]) -> None:
        self.writes += 1
        values = {"paused" if k == "is_paused" else k: v for k, v in fields.items()}
        target = f"{pool}/{name}"
        if queue_id is None:
            assert target not in self.queues, f"{target} created twice"
            taken = [q["priority"] for n, q in self.queues.items() if n.startswith(f"{pool}/")]
            self.queues[target] = {"priority": max(taken, default=0) + 1, "concurrency_limit": None,
                                   "paused": False, **values}
        else:
            assert queue_id == f"id-{target}"
            self.queues[target].update(values)

    def actual(self) -> ActualState:
        return ActualState(
            work_pools={n: PoolActual(name=n, id=f"id-{n}", base_job_template=copy.deepcopy(t))
                        for n, t in self.pools.items()},
            deployments={n: DeploymentActual(name=n, id=f"id-{n}", work_pool_name=pool,
                                             job_variables=copy.deepcopy(jv))
                         for n, (pool, jv) in self.deployments.items()},
            work_queues={n: QueueActual(name=n, id=f"id-{n}", values=dict(v)) for n, v in self.queues.items()})

    def targets(self, target_type: str) -> list[str]:
        """The names of the targets of a kind the server holds."""
        return list({"work_pool": self.pools, "deployment": self.deployments}.get(target_type, self.queues))

    def values(self, target_type: str, target: str) -> dict[str, Any] | None:
        """A target's values at the level prefect-gitops manages (None: the target does not exist)."""
        if target_type == "work_pool":
            template = self.pools.get(target)
            if template is None:
                return None
            properties = (template.get("variables") or {}).get("properties") or {}
            return {k: p["default"] for k, p in properties.items() if isinstance(p, dict) and "default" in p}
        if target_type == "deployment":
            return None if target not in self.deployments else dict(self.deployments[target][1])
        return None if target not in self.queues else dict(self.queues[target])


@dataclass
class World:
    desired: EnvironmentFile
    later: EnvironmentFile  # the next revision: some keys and targets taken out of Git
    server: Server
    inventory: Inventory
    crash_after: int | None  # the first pass is killed after this many target writes (None: no crash)


def world_of(desired: dict[str, Any], server: Server, inventory: dict[str, Any] | None = None,
             later: dict[str, Any] | None = None, crash_after: int | None = None) -> World:
    """A world written out by hand (the regression examples)."""
    return World(desired=EnvironmentFile.model_validate(desired),
                 later=EnvironmentFile.model_validate(desired if later is None else later), server=server,
                 inventory=Inventory.model_validate(inventory or {}), crash_after=crash_after)


def pool_template(*keys: str) -> dict[str, Any]:
    return {"variables": {"type": "object", "properties": {k: {"title": k} for k in keys}}}


def _run(coroutine: Any) -> None:
    """The simulated server never waits: run a write to its end without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration:
        return
    raise AssertionError("a simulated write waited")


def reconcile(desired: EnvironmentFile, server: Server, inventory: Inventory, revision: str,
              crash_after: int | None = None) -> tuple[Plan, Inventory]:
    """One pass as the reconcile makes it (reconcile.py, writes.py, record.py): plan, record the attempt,
    write each target's changes as one body, record what was applied. `crash_after`: killed after that
    many target writes, leaving the write-ahead record only."""
    actual = server.actual()
    the_plan = plan(desired, actual, inventory, desired.drift.mode)
    assert not the_plan.problems, the_plan.problems
    changes = the_plan.to_apply
    if changes:
        inventory = begin_apply(inventory, changes, revision)
    by_target: dict[tuple[str, str], list[Any]] = {}
    for change in changes:
        by_target.setdefault((change.target_type, change.target), []).append(change)
    applied = []
    for written, ((target_type, target), target_changes) in enumerate(by_target.items()):
        if crash_after is not None and written >= crash_after:
            return the_plan, inventory  # killed: what was written stays written, nothing more is recorded
        _run(kind(target_type).write(server, actual, target, target_changes))
        applied.extend(target_changes)
    return the_plan, finish_apply(inventory, the_plan, applied, revision)


# -- generating a world ------------------------------------------------------------------------------------

@st.composite
def worlds(draw: st.DrawFn) -> World:
    server = Server()
    declared: dict[str, list[str]] = {}
    for pool in draw(st.lists(st.sampled_from(POOLS), unique=True)):
        declared[pool] = draw(st.lists(st.sampled_from(KEYS + UNMANAGED_KEYS), unique=True))
        properties = {k: {"title": k, **({"default": draw(VALUES)} if draw(st.booleans()) else {})}
                      for k in declared[pool]}
        server.pools[pool] = {"job_configuration": {"image": "{{ image }}"},
                              "variables": {"type": "object", "properties": properties}}
        for queue in draw(st.lists(st.sampled_from(QUEUES), unique=True)):
            server.queues[f"{pool}/{queue}"] = {f: draw(QUEUE_VALUES[f]) for f in QUEUE_FIELDS}
    for name in draw(st.lists(st.sampled_from(DEPLOYMENTS), unique=True)):
        pool = draw(st.none() | st.sampled_from(POOLS))
        keys = draw(st.lists(st.sampled_from(KEYS + UNMANAGED_KEYS), unique=True))
        server.deployments[name] = (pool, {k: draw(VALUES) for k in keys})

    raw = _desired(draw, server, declared)
    return World(desired=EnvironmentFile.model_validate(raw), later=EnvironmentFile.model_validate(_later(draw, raw)),
                 server=server, inventory=_inventory(draw),
                 crash_after=draw(st.none() | st.integers(0, 6)))


def _desired(draw: st.DrawFn, server: Server, declared: dict[str, list[str]]) -> dict[str, Any]:
    """A file the server accepts: existing targets, declared keys (the templates' schemas take any value)."""
    raw: dict[str, Any] = {"work_pools": {}, "deployments": {}}
    managed_keys = st.sampled_from(KEYS)
    for pool in draw(st.lists(st.sampled_from(sorted(server.pools)), unique=True)) if server.pools else []:
        keys = [k for k in draw(st.lists(managed_keys, unique=True)) if k in declared[pool]]
        queues = {q: {f: draw(QUEUE_VALUES[f]) for f in draw(st.lists(st.sampled_from(QUEUE_FIELDS), unique=True))}
                  for q in draw(st.lists(st.sampled_from(QUEUES), unique=True))}
        current = server.values("work_pool", pool) or {}
        raw["work_pools"][pool] = {"job_variables": {k: draw(_near(current, k)) for k in keys}, "work_queues": queues}
    for name in draw(st.lists(st.sampled_from(sorted(server.deployments)), unique=True)) if server.deployments else []:
        pool = server.deployments[name][0]
        keys = [k for k in draw(st.lists(managed_keys, unique=True)) if k in declared.get(pool or "", [])]
        current = server.values("deployment", name) or {}
        raw["deployments"][name] = {"job_variables": {k: draw(_near(current, k)) for k in keys}}
    if raw["work_pools"] and draw(st.booleans()):
        raw["rollout"] = {"control_queue": {"name": "q1", "priority": 1, "concurrency_limit": 2}}
    return raw


def _near(current: dict[str, Any], key: str) -> st.SearchStrategy[Any]:
    """Any value, or one close to the server's: its own, or with its numbers and booleans swapped."""
    if key not in current:
        return VALUES
    return VALUES | st.sampled_from([current[key], _swapped(current[key])])


def _swapped(value: Any) -> Any:
    """True <-> 1, False <-> 0, 1 -> 1.0, at any depth: the values JSON equality tells apart or not."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return bool(value) if value in (0, 1) else float(value)
    if isinstance(value, dict):
        return {k: _swapped(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_swapped(v) for v in value]
    return value


def _later(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    """The next revision: every target and key may leave Git."""
    later = copy.deepcopy(raw)
    for section in ("work_pools", "deployments"):
        for name in list(later[section]):
            if draw(st.booleans()):
                del later[section][name]
                continue
            variables = later[section][name]["job_variables"]
            for key in list(variables):
                if draw(st.booleans()):
                    del variables[key]
            for queue, fields in list(later[section][name].get("work_queues", {}).items()):
                for f in list(fields):
                    if draw(st.booleans()):
                        del fields[f]
    if "rollout" in later and draw(st.booleans()):
        del later["rollout"]
    return later


def _inventory(draw: st.DrawFn) -> Inventory:
    """What earlier runs left: any managed keys, applied or left in flight by a crash, on targets that
    may since be gone, with any "before" value."""
    inventory = Inventory()
    targets = [("work_pool", POOLS, KEYS), ("deployment", DEPLOYMENTS, KEYS),
               ("work_queue", [f"{p}/{q}" for p in POOLS for q in QUEUES], QUEUE_FIELDS)]
    for target_type, names, keys in targets:
        for target in draw(st.lists(st.sampled_from(names), unique=True, max_size=3)):
            for key in draw(st.lists(st.sampled_from(keys), unique=True, min_size=1)):
                values = QUEUE_VALUES[key] if target_type == "work_queue" else VALUES
                had_previous = draw(st.booleans())
                inventory.put(target_type, target, key, ManagedKey(  # type: ignore[arg-type]
                    value=draw(values), applied=draw(st.booleans()), had_previous=had_previous,
                    previous=draw(values) if had_previous else None, revision="r0"))
    return inventory
