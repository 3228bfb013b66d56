"""Waves and promotion against the real server (README "Rollout gates": Waves, Environments and promotion):
wave selectors by tags and work pool patterns, explicit waves, the max_parallel bound of each wave as the
server sees the writes, an image proven in an earlier wave not tested again, the promotion gate with an
unhealthy source environment, and `promote` leaving targets without a single candidate alone."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import threading
import time

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from write_recorder import WriteRecorder
from helpers import (
    GitRepo,
    _with_client,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_state,
    run,
    server_snapshot,
    uid,
)


def recording_smoke_test(marker) -> dict:
    """A `process` smoke test that appends `start IMAGE TIME` and `end IMAGE TIME` to `marker` and passes."""
    code = (f"import os, time\nimg = os.environ['SMOKE_IMAGE']\n"
            f"with open({str(marker)!r}, 'a') as f:\n    f.write('start %s %f\\n' % (img, time.time()))\n"
            f"time.sleep(0.2)\n"
            f"with open({str(marker)!r}, 'a') as f:\n    f.write('end %s %f\\n' % (img, time.time()))\n")
    return {"kind": "process", "process": {"command": [sys.executable, "-c", code]}}


def smoke_runs(marker) -> list[tuple[str, float, float]]:
    """(image, start, end) of every smoke test run, in the order they started."""
    starts: dict[str, list[float]] = {}
    ends: dict[str, list[float]] = {}
    for line in marker.read_text().splitlines() if marker.exists() else []:
        what, image, at = line.split()
        (starts if what == "start" else ends).setdefault(image, []).append(float(at))
    runs = [(image, s, e) for image in starts for s, e in zip(sorted(starts[image]), sorted(ends.get(image, [])))]
    assert sum(map(len, starts.values())) == len(runs), f"a smoke test did not end: {marker.read_text()}"
    return sorted(runs, key=lambda r: r[1])


def set_tags(full_name: str, tags: list[str]) -> None:
    from prefect.client.schemas.actions import DeploymentUpdate

    async def go(client):
        d = await client.read_deployment_by_name(full_name)
        await client.update_deployment(d.id, DeploymentUpdate(tags=tags))

    run(_with_client(go))


def queue_priority(pool: str, queue: str) -> int:
    async def go(client):
        return (await client.read_work_queue_by_name(queue, work_pool_name=pool)).priority

    return run(_with_client(go))


def waves_of(report: dict) -> list[tuple]:
    return [(w["wave"], w["name"], w["state"], w["changes"]) for w in report["waves"]]


# -- wave selectors --------------------------------------------------------------------------------

def test_waves_select_by_tags_and_work_pool_patterns_and_an_explicit_wave_wins(tmp_path):
    u = uid()
    flow = f"wsel-{u}"
    pool, pinned_pool, other_pool = f"k8s-{u}", f"k8s-{u}-pinned", f"docker-{u}"
    for name in (pool, pinned_pool, other_pool):
        create_pool(name, image_default="tools:0")
    canary, pinned, plain = f"{flow}/canary", f"{flow}/pinned", f"{flow}/plain"
    for name in ("canary", "pinned", "plain"):
        create_deployment(flow, name, pool)
    set_tags(canary, ["team-a", "canary"])
    set_tags(pinned, ["canary"])  # tagged like the canary, but its own wave: wins
    repo, marker, env = GitRepo(tmp_path / "gitops"), tmp_path / "marker.txt", f"wsel{u}"
    repo.commit_env(env, {
        "smoke_test": recording_smoke_test(marker),
        "rollout": {"waves": [
            {"wave": 1, "name": "canary", "tags": ["canary"]},
            {"wave": 2, "name": "pools", "work_pools": ["k8s-*"]},
        ]},
        "work_pools": {
            pool: {"job_variables": {"image": "tools:pool"}, "work_queues": {"critical": {"priority": 7}}},
            pinned_pool: {"job_variables": {"image": "tools:pinned-pool"}, "wave": 4},
            other_pool: {"job_variables": {"image": "tools:other-pool"}},
        },
        "deployments": {
            canary: {"job_variables": {"image": "flows:canary"}},
            pinned: {"job_variables": {"image": "flows:pinned"}, "wave": 3},
            plain: {"job_variables": {"image": "flows:plain"}},
        }})

    code, report = cli_json_here("apply", "--source", repo.url, "--env", env)
    assert report["status"] == "applied" and report["applied"] == 7, report
    assert waves_of(report) == [
        (0, "wave 0", "applied", 2),  # the untagged deployment and the pool no pattern matches
        (1, "canary", "applied", 1),  # selected by its tag
        (2, "pools", "applied", 2),  # selected by the pool name pattern, with the pool's queue
        (3, "wave 3", "applied", 1),  # tagged canary, but its own wave: 3
        (4, "wave 4", "applied", 1),  # matches k8s-*, but its own wave: 4
    ]
    # each wave's smoke tests ran after the previous wave's had ended (and its writes were done):
    # the images of each wave, observed in the order the tests really ran
    expected = [{"flows:plain", "tools:other-pool"}, {"flows:canary"}, {"tools:pool"}, {"flows:pinned"},
                {"tools:pinned-pool"}]
    runs = smoke_runs(marker)
    assert sorted(r[0] for r in runs) == sorted(i for wave in expected for i in wave), runs
    position = 0
    previous_end = 0.0
    for wave in expected:
        in_wave = runs[position:position + len(wave)]
        position += len(wave)
        assert {r[0] for r in in_wave} == wave, runs
        assert min(r[1] for r in in_wave) > previous_end, runs
        previous_end = max(r[2] for r in in_wave)
    assert deployment_job_variables(canary) == {"image": "flows:canary"}
    assert deployment_job_variables(pinned) == {"image": "flows:pinned"}
    assert pool_default(pool, "image") == "tools:pool" and pool_default(pinned_pool, "image") == "tools:pinned-pool"
    assert queue_priority(pool, "critical") == 7


# -- max_parallel, as the server sees the writes ---------------------------------------------------

def test_max_parallel_bounds_the_writes_of_each_wave(tmp_path):
    u = uid()
    flow = f"mp-{u}"
    pool = f"k8s-mp-{u}"
    create_pool(pool, image_default="flows:0")
    serial = [f"{flow}/serial-{i}" for i in range(3)]
    batch = [f"{flow}/batch-{i}" for i in range(4)]
    ids = {create_deployment(flow, name.split("/")[1], pool): name for name in serial + batch}
    repo, env = GitRepo(tmp_path / "gitops"), f"mp{u}"
    repo.commit_env(env, {
        "rollout": {"max_parallel": 2, "waves": [
            {"wave": 1, "name": "serial", "deployments": [f"{flow}/serial-*"], "max_parallel": 1},
            {"wave": 2, "name": "batch", "deployments": [f"{flow}/batch-*"]},  # the rollout's bound: 2
        ]},
        "deployments": {name: {"job_variables": {"image": f"flows:{name.split('/')[1]}"}} for name in serial + batch}})

    # every write waits (up to 1 s) for two more to join it: a bound of 1 or 2 is never seen exceeded by
    # chance, and two writes of a bound-2 wave are always seen together
    with WriteRecorder(ids, hold_until=3, hold_seconds=1.0) as proxy:
        done = subprocess.run([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                               "--output", "json"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PREFECT_API_URL": proxy.url})
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert {name for name, *_ in proxy.writes} == set(serial + batch), proxy.writes  # it did see every write

    serial_writes = sorted((w for w in proxy.writes if w[0] in serial), key=lambda w: w[1])
    for earlier, later in zip(serial_writes, serial_writes[1:]):
        assert later[1] >= earlier[2], f"writes overlap in a max_parallel: 1 wave: {serial_writes}"
    assert proxy.most_at_once(set(serial)) == 1
    # the bound of 2: some writes overlapped, never more than 2
    assert proxy.most_at_once(set(batch)) == 2, proxy.writes
    # and wave 2 started writing only after wave 1 was written
    assert max(w[2] for w in serial_writes) <= min(w[1] for w in proxy.writes if w[0] in batch)
    for name in serial + batch:
        assert deployment_job_variables(name) == {"image": f"flows:{name.split('/')[1]}"}
    report = json.loads(done.stdout)
    assert [(w["wave"], w["name"], w["state"], w["changes"], w["max_parallel"]) for w in report["waves"]] == [
        (1, "serial", "applied", 3, 1), (2, "batch", "applied", 4, 2)]


# -- an image proven in an earlier wave ------------------------------------------------------------

def test_an_image_proven_in_an_earlier_wave_is_not_tested_again(tmp_path):
    u = uid()
    flow = f"prv-{u}"
    pool = f"k8s-prv-{u}"
    create_pool(pool, image_default="flows:0")
    first, again, new = f"{flow}/first", f"{flow}/again", f"{flow}/new"
    for name in ("first", "again", "new"):
        create_deployment(flow, name, pool)
    repo, marker, env = GitRepo(tmp_path / "gitops"), tmp_path / "marker.txt", f"prv{u}"
    repo.commit_env(env, {
        "smoke_test": recording_smoke_test(marker),
        "rollout": {"waves": [{"wave": 2, "name": "fleet", "deployments": [again, new]}]},
        "deployments": {first: {"job_variables": {"image": "flows:proven"}, "wave": 1},
                        again: {"job_variables": {"image": "flows:proven"}},
                        new: {"job_variables": {"image": "flows:fresh"}}}})

    code, report = cli_json_here("apply", "--source", repo.url, "--env", env)
    assert waves_of(report) == [(1, "wave 1", "applied", 1), (2, "fleet", "applied", 2)]
    runs = smoke_runs(marker)
    # flows:proven was tested once, in wave 1; wave 2 tested only the image it brought first
    assert [r[0] for r in runs] == ["flows:proven", "flows:fresh"], runs
    assert runs[0][2] < runs[1][1]
    assert [(t["image"], t["result"]) for t in report["smoke_tests"]] == [("flows:proven", "passed"),
                                                                         ("flows:fresh", "passed")]
    for name, image in ((first, "flows:proven"), (again, "flows:proven"), (new, "flows:fresh")):
        assert deployment_job_variables(name) == {"image": image}


# -- the promotion gate: the source environment must be healthy -------------------------------------

@pytest.fixture
def qa_prod(tmp_path):
    u = uid()
    pool, flow = f"k8s-pro-{u}", f"pro-{u}"
    create_pool(pool, image_default="flows:1")
    for name in ("qa", "prod"):
        create_deployment(flow, name, pool)
    qa, prod = f"qa{u}", f"prod{u}"
    repo = GitRepo(tmp_path / "gitops")

    def qa_doc(image, **more_deployments):
        return {"deployments": {f"{flow}/qa": {"job_variables": {"image": image}}, **more_deployments}}

    def commit_prod(image):  # soak 0: only qa's health and the image's presence in qa count
        repo.commit_env(prod, {"rollout": {"promotion": {"from": qa, "soak_seconds": 0}},
                               "deployments": {f"{flow}/prod": {"job_variables": {"image": image}}}})

    return dict(repo=repo, qa=qa, prod=prod, qa_doc=qa_doc, commit_prod=commit_prod, flow=flow,
                qa_deployment=f"{flow}/qa", prod_deployment=f"{flow}/prod", pool=pool)


def apply(e, env, codes=(0,)):
    return cli_json_here("apply", "--source", e["repo"].url, "--env", env, check_codes=codes)[1]


def assert_promotion_pending(e, why: str) -> None:
    before = server_snapshot([e["pool"]], [e["prod_deployment"]])
    report = apply(e, e["prod"], codes=(4,))
    assert report["status"] == "waiting" and report["applied"] == 0, report
    assert f"flows:5: '{e['qa']}' is not healthy ({why})" in report["message"], report["message"]
    state, _ = read_state(e["prod"])
    assert state.condition.reason == "PromotionPending" and not state.condition.ready
    assert state.last_applied_revision is None
    assert server_snapshot([e["pool"]], [e["prod_deployment"]]) == before


def test_promotion_waits_while_the_source_environments_last_reconcile_failed(qa_prod):
    e = qa_prod
    e["repo"].commit_env(e["qa"], e["qa_doc"]("flows:5"))
    assert apply(e, e["qa"])["status"] == "applied"
    e["commit_prod"]("flows:5")
    # qa's next revision is refused (a deployment the server does not have): qa's last reconcile failed,
    # while flows:5 still runs there
    e["repo"].commit_env(e["qa"], e["qa_doc"]("flows:5", **{f"{e['flow']}/missing": {"job_variables": {"image": "x"}}}))
    assert apply(e, e["qa"], codes=(1,))["status"] == "failed"
    assert read_state(e["qa"])[0].inventory.deployments[e["qa_deployment"]]["image"].applied

    assert_promotion_pending(e, "ValidationFailed")

    # qa healthy again: the same prod revision goes through
    e["repo"].commit_env(e["qa"], e["qa_doc"]("flows:5"))
    assert apply(e, e["qa"])["status"] == "in-sync"
    assert apply(e, e["prod"])["status"] == "applied"
    assert deployment_job_variables(e["prod_deployment"]) == {"image": "flows:5"}


def test_promotion_waits_while_the_source_environment_is_rolled_back(qa_prod):
    e = qa_prod
    e["repo"].commit_env(e["qa"], e["qa_doc"]("flows:5"))
    apply(e, e["qa"])
    e["repo"].commit_env(e["qa"], e["qa_doc"]("flows:6"))
    apply(e, e["qa"])
    code, report = cli_json_here("rollback", "--env", e["qa"], "--steps", "1")
    assert report["status"] == "rolled-back"
    assert deployment_job_variables(e["qa_deployment"]) == {"image": "flows:5"}  # flows:5 runs in qa again
    # reconciles of qa hold (rolled back, exit 0) and leave it rolled back
    assert apply(e, e["qa"])["status"] == "rolled-back"
    e["commit_prod"]("flows:5")

    assert_promotion_pending(e, "RolledBack")


# -- promote: targets with no or several candidates ------------------------------------------------

def test_promote_takes_same_name_then_single_repository_image_and_leaves_the_rest_alone(tmp_path):
    u = uid()
    flow, pool = f"pm-{u}", f"k8s-pm-{u}"
    create_pool(pool, image_default="reg.example.com/tools:1")
    for name in ("daily", "hourly"):
        create_deployment(flow, name, pool)
    qa, prod = f"qa{u}", f"prod{u}"
    repo = GitRepo(tmp_path / "gitops")
    repo.git("config", "receive.denyCurrentBranch", "updateInstead")  # promote pushes to it
    repo.commit_env(qa, {"work_pools": {pool: {"job_variables": {"image": "reg.example.com/tools:5"}}},
                         "deployments": {f"{flow}/daily": {"job_variables": {"image": "reg.example.com/flows:2.0"}},
                                         f"{flow}/hourly": {"job_variables": {"image": "reg.example.com/flows:3.0"}}}})
    prod_file = f"""\
# prod
work_pools:
  k8s-prod-{u}:
    job_variables:
      image: reg.example.com/tools:4      # one tools image runs in qa
deployments:
  {flow}/daily:
    job_variables:
      image: reg.example.com/flows:1.0    # same name in qa
  {flow}/weekly:
    job_variables:
      image: reg.example.com/flows:1.0    # qa runs flows:2.0 and flows:3.0
  ml/train:
    job_variables:
      image: reg.example.com/ml:9         # qa runs no ml image
"""
    repo.commit_env(prod, prod_file)
    assert apply({"repo": repo}, qa)["applied"] == 3

    code, report = cli_json_here("promote", "--source", repo.url, "--from", qa, "--to", prod)
    assert report["status"] == "promoted", report
    assert [(c["target_type"], c["target"], c["old"], c["new"]) for c in report["changes"]] == [
        ("deployment", f"{flow}/daily", "reg.example.com/flows:1.0", "reg.example.com/flows:2.0"),
        ("work_pool", f"k8s-prod-{u}", "reg.example.com/tools:4", "reg.example.com/tools:5"),
    ]
    assert report["skipped"] == [
        {"target": "ml/train", "reason": f"{qa} runs no image of reg.example.com/ml"},
        {"target": f"{flow}/weekly", "reason": f"{qa} runs several images of reg.example.com/flows: "
                                               "reg.example.com/flows:2.0, reg.example.com/flows:3.0"},
    ]
    # the commit changes exactly the two promoted image lines; the skipped targets are left as they were
    assert repo.git("rev-parse", "HEAD") == report["revision"]
    diff = repo.git("diff", "-U0", "HEAD~1", "HEAD")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert sorted(changed) == sorted([
        "-      image: reg.example.com/tools:4      # one tools image runs in qa",
        "+      image: reg.example.com/tools:5      # one tools image runs in qa",
        "-      image: reg.example.com/flows:1.0    # same name in qa",
        "+      image: reg.example.com/flows:2.0    # same name in qa",
    ]), changed
    assert (tmp_path / "gitops" / "environments" / f"{prod}.yaml").read_text() == prod_file.replace(
        "tools:4", "tools:5").replace("flows:1.0    # same name", "flows:2.0    # same name")
