"""Kill trials: the real CLI's `apply` is SIGKILLed at a seeded point of an apply that changes 14
targets (12 deployments, 2 work pools), and the next apply (not killed) must converge.

Kills are placed by observed progress, not by delays: the reconcile talks to the session's server
through KillProxy (kill_proxy.py), which holds one chosen write (the write-ahead record, the N-th
target write, the history or the state write of the record), before the server or after the server
answered it, and holds every later write before the server; the process is killed while it waits.
Phases, in turn per trial (so every phase is hit at either count): before the first target write,
between target writes, during the record. Trial k commits image `flows:k`, so trials chain.

What is asserted, per trial:
- the kill landed where it was meant: exactly the writes forwarded before the trap reached the
  server, and the server shows exactly those targets at the new image;
- after the kill, state and history claim nothing that is not so: `last_applied_revision` is the new
  revision only when every target write and the record's state write landed; a history entry for it
  exists only once every target write landed, and names only changes that landed;
- no managed key loses its "before" value: every inventory entry's `previous` is the value the key
  had before the first apply (absent keys stay recorded as absent);
- the next apply converges to Git (the server's values read back, unmanaged keys untouched), records
  the revision as applied with no unfinished write, and its history entries for the revision name
  every change exactly once;
- no change is applied twice: across the killed run and the converging one, each target receives
  the new image exactly once at the server. This holds even for a write whose answer the killed run
  never saw (the trap's `response` kind: the server applied it, the run died waiting): the next run
  reads the server and finds it in sync, so it is not written again.

A killed run holds the environment's lock (a lease-based global concurrency limit) until its lease
runs out, about a minute; each trial frees it at once by deleting the limit, as an operator would (the
next run creates it again). That a dead holder's lease does free the lock by itself is covered by
tests/integration/test_crash_and_cli.py::test_reconcile_killed_mid_apply_converges.

Counts: 5 trials (about 15 s each), PREFECT_GITOPS_FULL_TRIALS=1: 21 trials (7 per phase).
PREFECT_GITOPS_KILL_SEED=<n> replays a seed (default 14; printed in every assertion message).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from figures import record, trial_count
from helpers import GitRepo, _with_client, create_deployment, create_pool, pool_default, read_state, run, uid
from kill_proxy import KillProxy, Trap
from prefect.client.schemas.filters import FlowFilter, FlowFilterName

from prefect_gitops.adapters.locks import environment_limit

DEPLOYMENTS, POOLS = 12, 2
TARGETS = DEPLOYMENTS + POOLS
PHASES = ("before-writes", "between-writes", "record")


def draw_trap(phase: str, rng: random.Random) -> Trap:
    if phase == "before-writes":
        return rng.choice([Trap("state", 1, "request"), Trap("state", 1, "response"), Trap("target", 1, "request")])
    if phase == "between-writes":
        when = rng.choice(["request", "response"])
        return Trap("target", rng.randint(2, TARGETS) if when == "request" else rng.randint(1, TARGETS), when)
    return rng.choice([Trap("history", 1, "request"), Trap("history", 1, "response"),
                       Trap("state", 2, "request"), Trap("state", 2, "response")])


def landed_at_least(trap: Trap) -> int:
    """How many target writes have reached the server when the trap holds the run (exactly that many,
    except between writes: a write already at the server when the trap closed may land as well)."""
    if trap.kind == "target":
        return trap.ordinal - (trap.when == "request")
    return 0 if trap.kind == "state" and trap.ordinal == 1 else TARGETS


def phase_of(trap: Trap, landed: int) -> str:
    """Where the kill landed, by what the proxy saw."""
    if landed == 0:
        return "before-writes"
    return "between-writes" if trap.kind == "target" else "record"


class Fleet:
    """The environment's targets, with the values they had before prefect-gitops ever ran."""

    def __init__(self, u: str):
        self.env, self.flow = f"kill{u}", f"kill-{u}"
        self.pools = [f"k8s-kill-{u}-{p}" for p in "ab"]
        create_pool(self.pools[0], image_default="flows:orig")
        create_pool(self.pools[1])  # the template's own image default (null)
        self.pool_before = {p: pool_default(p, "image") for p in self.pools}
        self.names = [f"{self.flow}/d{i:02d}" for i in range(DEPLOYMENTS)]
        self.ids: dict[str, str] = {}
        self.before: dict[str, dict] = {}
        for i, name in enumerate(self.names):
            variables = {"namespace": "keep-me", **({"image": f"orig:{i}"} if i % 2 == 0 else {})}
            self.ids[create_deployment(self.flow, name.split("/")[1], self.pools[i % 2], variables)] = name
            self.before[name] = variables

    def desired(self, image: str) -> dict:
        return {"work_pools": {p: {"job_variables": {"image": image}} for p in self.pools},
                "deployments": {n: {"job_variables": {"image": image}} for n in self.names}}

    def read(self) -> tuple[dict[str, dict], dict[str, object]]:
        """The deployments' job variables (one filtered read) and the pools' image defaults."""
        async def go(client):
            found = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=[self.flow])))
            pools = {p: await client.read_work_pool(p) for p in self.pools}
            return ({f"{self.flow}/{d.name}": dict(d.job_variables or {}) for d in found},
                    {p: pool.base_job_template["variables"]["properties"]["image"].get("default") for p, pool in pools.items()})

        return run(_with_client(go))

    def at_image(self, image: str) -> set[str]:
        """The targets the server shows at `image`."""
        deployments, pools = self.read()
        return ({n for n, v in deployments.items() if v.get("image") == image}
                | {f"pool:{p}" for p, default in pools.items() if default == image})

    def unmanaged_kept(self) -> bool:
        deployments, _ = self.read()
        return all(deployments[n].get("namespace") == "keep-me" for n in self.names)

    def before_values_lost(self, state) -> list[str]:
        """Inventory entries whose recorded 'before' is not the value the key had before the first apply."""
        lost = []
        for name, keys in state.inventory.deployments.items():
            had = "image" in self.before[name]
            entry = keys["image"]
            if (entry.had_previous, entry.previous) != (had, self.before[name].get("image")):
                lost.append(name)
        for pool, keys in state.inventory.work_pools.items():
            entry = keys["image"]
            had = self.pool_before[pool] != "<absent>"
            if (entry.had_previous, entry.previous) != (had, self.pool_before[pool] if had else None):
                lost.append(f"pool:{pool}")
        return lost


def free_lock(env: str) -> None:
    """The killed run's lease would hold the environment for about a minute: free it now."""
    async def go(client):
        await client.delete_global_concurrency_limit_by_name(environment_limit(env))

    run(_with_client(go))


def kill_at(proxy: KillProxy, repo: GitRepo, env: str, concurrency: int, log: Path, what: str) -> None:
    """Start `apply`, wait until the proxy holds the trapped write (and no other write is at the server),
    SIGKILL the process, let the proxy drop what it held."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                                 "--concurrency", str(concurrency)],
                                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PREFECT_API_URL": proxy.url})
        try:
            deadline = time.monotonic() + 240
            while not proxy.ready_to_kill():
                assert proc.poll() is None, f"{what}: the apply ended ({proc.returncode}) before the trap:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{what}: the trap was not reached within 240 s"
                time.sleep(0.02)
        finally:
            proc.kill()
            proc.wait()
            proxy.release()


def apply_through(proxy: KillProxy, repo: GitRepo, env: str, concurrency: int) -> tuple[int, dict]:
    done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                           "--concurrency", str(concurrency), "--output", "json"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PREFECT_API_URL": proxy.url})
    assert done.stdout.strip(), f"exit {done.returncode}: {done.stderr[-3000:]}"
    return done.returncode, json.loads(done.stdout)


def test_kill_trials(tmp_path):
    seed = int(os.environ.get("PREFECT_GITOPS_KILL_SEED", "14"))
    rng = random.Random(seed)
    fleet = Fleet(uid())
    repo = GitRepo(tmp_path / "gitops")
    trials = trial_count(3, 21)  # CI: one per phase (before the writes, between them, the record)
    phases_hit: Counter[str] = Counter()
    previous_sha = None
    with KillProxy(fleet.env, fleet.ids, set(fleet.pools)) as proxy:
        for k in range(1, trials + 1):
            phase = PHASES[(k - 1) % len(PHASES)]
            trap = draw_trap(phase, rng)
            # one write at a time, or four: the server (SQLite) refuses some parallel writes with 503 and
            # the Prefect client sends them again (counted as `retried`)
            concurrency = rng.choice([1, 4])
            image = f"flows:{k}"
            sha = repo.commit_env(fleet.env, fleet.desired(image))
            what = f"seed {seed}, trial {k} ({phase}, {trap}, concurrency {concurrency})"
            began = time.monotonic()

            # the killed run
            proxy.arm(f"killed-{k}", trap)
            kill_at(proxy, repo, fleet.env, concurrency, tmp_path / f"killed-{k}.log", what)
            free_lock(fleet.env)
            landed = {w.target for w in proxy.of_run(f"killed-{k}") if w.image == image}
            record_landed = bool(proxy.of_run(f"killed-{k}", "state")[1:])  # the record's state write
            history_landed = bool(proxy.of_run(f"killed-{k}", "history"))
            state, _ = read_state(fleet.env)
            on_server = fleet.at_image(image)
            claimed = state.last_applied_revision == sha
            entries = [h for h in state.history if h.revision == sha]
            lost_before = fleet.before_values_lost(state)

            killed_at = time.monotonic()
            # the next run, not killed
            proxy.arm(f"converge-{k}", None)
            code, result = apply_through(proxy, repo, fleet.env, concurrency)
            after, _ = read_state(fleet.env)
            writes = Counter(w.target for w in proxy.writes
                             if w.run in (f"killed-{k}", f"converge-{k}") and w.outcome == "landed" and w.image == image)
            every = set(fleet.names) | {f"pool:{p}" for p in fleet.pools}
            converged_on = fleet.at_image(image)
            doubled = sum(n - 1 for n in writes.values() if n > 1)
            lost = len(every - converged_on) + len(fleet.before_values_lost(after))
            history_changes = Counter(c.target if c.target_type == "deployment" else f"pool:{c.target}"
                                      for h in after.history if h.revision == sha and h.outcome == "applied"
                                      for c in h.changes)
            converged = (code == 0 and converged_on == every and fleet.unmanaged_kept()
                         and after.last_applied_revision == sha and not after.has_unfinished_writes())
            refused = sum(w.outcome == "refused" for w in proxy.writes if w.run in (f"killed-{k}", f"converge-{k}"))
            record("kill", converged=converged, lost=lost, doubled=doubled, faults={f"sigkill {phase}": 1},
                   retried=refused)

            # the kill landed where it was meant: the trapped write is held, nothing after it reached the
            # server, and the server shows exactly the target writes the proxy saw land
            held = [w for w in proxy.of_run(f"killed-{k}", kind=None, outcome=None) if w.held]
            assert held and held[0].kind == trap.kind, f"{what}: held {held}"
            assert all(w.outcome == "dropped" for w in held[1:]), f"{what}: a write after the trap landed: {held}"
            assert held[0].outcome == ("dropped" if trap.when == "request" else "landed"), f"{what}: {held[0]}"
            minimum = landed_at_least(trap)
            exact = trap.kind != "target" or trap.ordinal == TARGETS
            assert (len(landed) == minimum if exact else minimum <= len(landed) < TARGETS), (
                f"{what}: {len(landed)} target write(s) landed, {minimum} expected")
            assert on_server == landed, f"{what}: the server shows {sorted(on_server)}, the proxy saw {sorted(landed)}"
            assert phase_of(trap, len(landed)) == phase, f"{what}: landed in {phase_of(trap, len(landed))}"
            phases_hit[phase] += 1
            # nothing claimed that is not so
            if claimed:
                assert len(landed) == TARGETS and record_landed, f"{what}: {sha[:12]} recorded applied too early"
            else:
                assert state.last_applied_revision == previous_sha, f"{what}: {state.last_applied_revision}"
            assert claimed == (trap == Trap("state", 2, "response")), f"{what}: applied recorded: {claimed}"
            assert not entries or (len(landed) == TARGETS and history_landed), (
                f"{what}: history has {[h.outcome for h in entries]} for {sha[:12]} with {len(landed)} writes landed")
            for entry in entries:
                named = {c.target if c.target_type == "deployment" else f"pool:{c.target}" for c in entry.changes}
                assert named <= landed, f"{what}: history names changes that did not land: {sorted(named - landed)}"
            if trap != Trap("state", 1, "request") and not claimed:  # the write-ahead landed, the record did not
                assert state.has_unfinished_writes(), f"{what}: the attempt was not recorded before the writes"
            assert not lost_before, f"{what}: 'before' values lost after the kill: {lost_before}"
            assert not fleet.before_values_lost(after), f"{what}: 'before' values lost: {fleet.before_values_lost(after)}"

            # the next run converged, wrote only what was missing, and recorded it
            assert code == 0 and result["revision"] == sha, f"{what}: {result}"
            assert result["applied"] == TARGETS - len(landed), f"{what}: {result['applied']} applied after {len(landed)} landed"
            assert result["status"] == ("applied" if len(landed) < TARGETS else "in-sync"), f"{what}: {result['status']}"
            assert converged, f"{what}: not converged: missing {sorted(every - converged_on)}, {after.last_applied_revision}"
            assert lost == 0 and doubled == 0 and writes == Counter({t: 1 for t in every}), (
                f"{what}: writes of {image} per target: {dict(writes)}")
            assert history_changes == Counter({t: 1 for t in every}), (
                f"{what}: the history's applied entries for {sha[:12]} name {dict(history_changes)}")
            previous_sha = sha
            print(f"{what}: {len(landed)} landed, {refused} refused, {killed_at - began:.1f} + {time.monotonic() - killed_at:.1f} s")

    if trials >= len(PHASES):
        assert set(phases_hit) == set(PHASES), f"seed {seed}: phases hit {dict(phases_hit)}"
