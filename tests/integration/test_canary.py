"""Canary smoke tests and the post-apply check, run by a real `prefect worker` process."""

from __future__ import annotations

import re
import time
from pathlib import Path
from uuid import UUID

import pytest

from helpers import (
    GitRepo,
    cli_json,
    create_canary_deployment,
    create_canary_pool,
    deployment_job_variables,
    flow_runs_of,
    pool_default,
    process_worker,
    read_artifacts,
    read_events,
    read_state,
    run,
    set_deployment_job_variables,
    uid,
)

# how long a canary that should pass may take: a deadline, not a speed target (on CI's loaded two cores
# a process worker once left a canary run Scheduled for the 120 s these tests allowed)
PASSING_CANARY_TIMEOUT = 300


@pytest.fixture(scope="module")
def canary_pool(tmp_path_factory):
    pool = f"canary-{uid()}"
    create_canary_pool(pool)
    with process_worker(pool, tmp_path_factory.mktemp("worker") / "worker.log"):
        yield pool


@pytest.fixture
def estate(tmp_path, canary_pool):
    u = uid()
    name = f"svc-{u}"
    create_canary_deployment(name, canary_pool, {"image": "flows:1"})
    return dict(env=f"c{u}", dep=f"canary-target/{name}", pool=canary_pool, repo=GitRepo(tmp_path / "gitops"),
                marker=str(tmp_path / "runs.txt"))


def apply(e, *args, codes=(0,)):
    return cli_json("apply", "--source", e["repo"].url, "--env", e["env"], *args, check_codes=codes)[1]


# -- reading back what happened on the server, for one flow run ------------------------------------

def wait_until(condition, what: str, timeout: float = 120.0, poll: float = 0.5):
    """Poll `condition` until it returns something truthy (returned); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(poll)


async def _client_call(fn):
    from prefect import get_client

    async with get_client() as client:
        return await fn(client)


def read_flow_run(flow_run_id):
    return run(_client_call(lambda client: client.read_flow_run(UUID(str(flow_run_id)))))


def state_history(flow_run_id) -> list:
    """The run's states as the server recorded them, oldest first."""
    states = run(_client_call(lambda client: client.read_flow_run_states(UUID(str(flow_run_id)))))
    return sorted(states, key=lambda s: s.timestamp)


def parent_flow_run_id(flow_run) -> str | None:
    """The flow run a subflow run was started from (through its parent task run)."""
    if flow_run.parent_task_run_id is None:
        return None
    task_run = run(_client_call(lambda client: client.read_task_run(flow_run.parent_task_run_id)))
    return str(task_run.flow_run_id)


def run_log_lines(flow_run_id) -> list[str]:
    """The log lines of this one flow run on the (shared) server, oldest first."""
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    async def go(client):
        return await client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))])),
            sort=LogSort.TIMESTAMP_ASC, limit=200)

    return "\n".join(log.message for log in run(_client_call(go))).splitlines()


def wait_for_log_line(flow_run_id, text: str, timeout: float = 120.0) -> list[str]:
    """Until the server holds a log line of that flow run containing `text`; returns the run's lines."""
    found: list[list[str]] = []

    def check():
        lines = run_log_lines(flow_run_id)
        found[:] = [lines]
        return any(text in line for line in lines)

    wait_until(check, f"a log line {text!r} of flow run {flow_run_id}", timeout)
    return found[0]


def runs_by_purpose(deployment: str) -> dict[str, list]:
    """The deployment's flow runs, by the purpose tag the reconcile gave them."""
    out: dict[str, list] = {}
    for flow_run in flow_runs_of(deployment):
        purpose = "post-apply" if "prefect-gitops-post-apply" in flow_run.tags else (
            "canary" if "prefect-gitops-canary" in flow_run.tags else "other")
        out.setdefault(purpose, []).append(flow_run)
    return out


# -- the tests --------------------------------------------------------------------------------------

def canary_tags(env: str, purpose: str = "canary") -> list[str]:
    """The tags a canary (or post-apply) run carries: prefect-gitops-canary and prefect-gitops-env:<env>
    as the README documents, plus the prefect-gitops tag and, for post-apply runs, their own."""
    return sorted({"prefect-gitops", "prefect-gitops-canary", f"prefect-gitops-env:{env}", f"prefect-gitops-{purpose}"})


def test_canary_pass_and_fail(estate):
    e = estate
    smoke = {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT, "canary": {"parameters": {"marker": e["marker"]}}}
    e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {e["dep"]: {"job_variables": {"image": "flows:2"}}}})
    result = apply(e)
    assert result["smoke_tests"][0]["result"] == "passed" and result["applied"] == 1
    assert deployment_job_variables(e["dep"]) == {"image": "flows:2"}
    # the canary ran the candidate image through a per-run job variable, and is tagged as a canary
    assert open(e["marker"]).read().splitlines() == ["flows:2"]
    runs = flow_runs_of(e["dep"])
    assert len(runs) == 1 and "prefect-gitops-canary" in runs[0].tags and runs[0].job_variables == {"image": "flows:2"}

    e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {e["dep"]: {"job_variables": {"image": "flows:3-bad"}}}})
    result = apply(e, codes=(1,))
    test = result["smoke_tests"][0]
    assert test["result"] == "failed" and result["applied"] == 0 and result["held"] == 1
    assert deployment_job_variables(e["dep"]) == {"image": "flows:2"}
    assert read_events("prefect-gitops.smoke-test.failed", e["env"])[0]["payload"]["image"] == "flows:3-bad"
    # which run failed and why: the reason comes from the run's final state, on the server before the result
    failed = [r for r in flow_runs_of(e["dep"]) if r.job_variables == {"image": "flows:3-bad"}]
    assert len(failed) == 1 and read_flow_run(failed[0].id).state.type.value == "FAILED"
    name = e["dep"].split("/")[-1]
    assert test["message"] == (f"run canary-{e['env']}-{name} ended Failed: Flow run encountered an exception: "
                               "RuntimeError: canary target failed with image 'flows:3-bad'")
    # the artifact names that run, and that run's logs (read from the server, filtered to it) hold the
    # failure: they reach the server a moment after the final state, so wait for them
    artifact = read_artifacts(f"gitops-{e['env']}")[0].data
    assert f"flow_run_id {failed[0].id}" in artifact
    lines = wait_for_log_line(failed[0].id, "canary target failed with image 'flows:3-bad'")
    # whatever tail the reconcile read by then is that run's own log, not another run's
    assert set(test["log_tail"].splitlines()) <= set(lines)


SLOW_FLOW = """
import time

from prefect import flow


@flow(name="slow-canary")
def slow_canary(seconds: float = 300) -> None:
    # runs past any canary timeout the test sets: only a cancellation ends it early
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)
"""


def create_file_deployment(flows_dir: Path, entrypoint: str, name: str, pool: str, job_variables: dict) -> str:
    """A deployment of a flow in a file of `flows_dir`, run by the pool's worker from that folder."""
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(flows_dir / entrypoint))

    async def go(client):
        flow_id = await client.create_flow_from_name(flow.name)
        return str(await client.create_deployment(
            flow_id=flow_id, name=name, work_pool_name=pool, entrypoint=entrypoint,
            parameter_openapi_schema=flow.parameters.model_dump(),
            pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(flows_dir)}}],
            job_variables=job_variables))

    return run(_client_call(go))


def test_canary_past_its_timeout_is_cancelled_and_holds_the_change(tmp_path, canary_pool):
    flows_dir = tmp_path / "flows"
    flows_dir.mkdir()
    (flows_dir / "slow_canary.py").write_text(SLOW_FLOW)
    u = uid()
    env, name, repo = f"t{u}", f"slow-{u}", GitRepo(tmp_path / "gitops")
    dep = f"slow-canary/{name}"
    create_file_deployment(flows_dir, "slow_canary.py:slow_canary", name, canary_pool, {"image": "flows:1"})
    timeout = 30
    smoke = {"kind": "canary", "timeout_seconds": timeout}
    repo.commit_env(env, {"smoke_test": smoke, "deployments": {dep: {"job_variables": {"image": "flows:2"}}}})
    result = cli_json("apply", "--source", repo.url, "--env", env, check_codes=(1,))[1]

    # the reconcile: the test timed out, the change is held back, the run ends Failed
    assert result["status"] == "failed" and result["applied"] == 0 and result["held"] == 1
    [test] = result["smoke_tests"]
    assert (test["kind"], test["image"], test["deployment"], test["result"]) == ("canary", "flows:2", dep, "timeout")
    assert re.fullmatch(rf"run canary-{env}-{name} not finished within {timeout}s \(was \w+\); cancelled",
                        test["message"]), test["message"]
    assert deployment_job_variables(dep) == {"image": "flows:1"}
    assert read_flow_run(result["flow_run_id"]).state.type.value == "FAILED"
    state, _ = read_state(env)
    assert state.condition.reason == "SmokeTestFailed" and state.last_applied_revision is None
    assert read_events("prefect-gitops.smoke-test.failed", env)[0]["payload"]["image"] == "flows:2"

    # the canary run itself: cancelled by the reconcile at the deadline, then stopped by the worker
    [canary] = flow_runs_of(dep)
    assert canary.job_variables == {"image": "flows:2"} and sorted(canary.tags) == canary_tags(env)
    seen: list = []

    def final_state():
        seen.append(read_flow_run(canary.id).state)
        return seen[-1] if seen[-1].is_final() else None

    try:
        final = wait_until(final_state, "the timed-out canary run to reach a final state")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; it is {seen[-1].type.value} ({seen[-1].message!r})") from None
    assert final.type.value == "CANCELLED"
    history = state_history(canary.id)
    if "(was Scheduled)" in test["message"]:
        # not started by the deadline (a loaded machine's worker): the server turns the reconcile's
        # Cancelling of a run without infrastructure into Cancelled at once (Prefect's
        # HandleCancellingScheduledFlows); no worker was involved
        shown = [(s.type.value, s.name) for s in history]
        assert {s.type.value for s in history[:-1]} == {"SCHEDULED"} and history[-1].type.value == "CANCELLED", shown
        return
    # the reconcile's Cancelling (the only one), then Cancelled by the worker that stopped the run
    assert [(s.type.value, s.message) for s in history if s.type.value == "CANCELLING"] == [
        ("CANCELLING", "prefect-gitops: canary timed out")]
    assert [s.type.value for s in history[-2:]] == ["CANCELLING", "CANCELLED"]


def test_canary_and_post_apply_run_once_each_with_the_documented_tags_when_a_create_answer_is_lost(
        estate, monkeypatch):
    """The reconcile talks to the server through a proxy that loses the answer to each flow run creation
    once (the server made the run; Prefect's client sends the create again): still one run of each, as on a
    stalling server (CI saw a second canary run there before the creates carried an idempotency key)."""
    from lost_answer_proxy import LostAnswerProxy, flow_run_creates

    e = estate
    smoke = {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT, "post_apply": {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT}}
    e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {e["dep"]: {"job_variables": {"image": "flows:2"}}}})
    with LostAnswerProxy(lose=flow_run_creates) as proxy:
        monkeypatch.setenv("PREFECT_API_URL", proxy.url)
        result = apply(e)
    name = e["dep"].split("/")[-1]
    assert sorted(lost.split(":")[1] for lost in proxy.lost) == [f"canary-{e['env']}-{name}",
                                                                f"post-apply-{e['env']}-{name}"]
    assert result["status"] == "applied" and result["smoke_tests"][0]["result"] == "passed"
    assert result["post_apply"] == {e["dep"]: {"result": "passed",
                                               "message": f"run post-apply-{e['env']}-{e['dep'].split('/')[-1]} completed"}}
    runs = runs_by_purpose(e["dep"])
    assert sorted(runs) == ["canary", "post-apply"] and [len(r) for r in runs.values()] == [1, 1]
    [canary], [post] = runs["canary"], runs["post-apply"]
    # read back from the server: the exact tags, and both runs are subflows of the reconcile's flow run
    assert sorted(read_flow_run(canary.id).tags) == canary_tags(e["env"])
    assert sorted(read_flow_run(post.id).tags) == canary_tags(e["env"], "post-apply")
    assert parent_flow_run_id(canary) == parent_flow_run_id(post) == result["flow_run_id"]
    assert canary.job_variables == {"image": "flows:2"} and not post.job_variables  # post-apply: as deployed
    assert [read_flow_run(r.id).state.type.value for r in (canary, post)] == ["COMPLETED", "COMPLETED"]


def test_work_pool_image_change_runs_the_named_canary_and_post_apply_deployments(tmp_path):
    """A pool's new image is proven by `canary.deployment` and checked after the apply by
    `post_apply.deployment`; a deployment changed in the same revision runs itself; a deployment of
    the pool that Git did not change runs nothing."""
    u = uid()
    pool, env, repo = f"pool-{u}", f"p{u}", GitRepo(tmp_path / "gitops")
    create_canary_pool(pool)  # image default flows:0
    prober, changed, bystander = (f"canary-target/{n}-{u}" for n in ("prober", "changed", "bystander"))
    create_canary_deployment(prober.split("/")[1], pool)          # runs with the pool's image
    create_canary_deployment(changed.split("/")[1], pool, {"image": "flows:6"})
    create_canary_deployment(bystander.split("/")[1], pool)
    smoke = {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT, "canary": {"deployment": prober},
             "post_apply": {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT, "deployment": prober}}
    repo.commit_env(env, {"smoke_test": smoke, "work_pools": {pool: {"job_variables": {"image": "flows:5"}}},
                          "deployments": {changed: {"job_variables": {"image": "flows:7"}}}})
    # info-level run logs, so each run's "running with image" line reaches the server
    with process_worker(pool, tmp_path / "worker.log", env={"PREFECT_LOGGING_LEVEL": "INFO"}):
        result = cli_json("apply", "--source", repo.url, "--env", env)[1]

        assert result["status"] == "applied" and result["applied"] == 2
        assert pool_default(pool, "image") == "flows:5" and deployment_job_variables(changed) == {"image": "flows:7"}
        tests = sorted((t["deployment"], t["image"], t["targets"], t["result"]) for t in result["smoke_tests"])
        assert tests == [(changed, "flows:7", [changed], "passed"), (prober, "flows:5", [pool], "passed")]
        assert {d: r["result"] for d, r in result["post_apply"].items()} == {changed: "passed", prober: "passed"}

        # on the server: one canary and one post-apply run of each, subflows of the reconcile; none of the bystander
        assert flow_runs_of(bystander) == []
        for dep, image in ((prober, "flows:5"), (changed, "flows:7")):
            runs = runs_by_purpose(dep)
            assert sorted(runs) == ["canary", "post-apply"] and [len(r) for r in runs.values()] == [1, 1], runs
            [canary], [post] = runs["canary"], runs["post-apply"]
            assert canary.job_variables == {"image": image} and not post.job_variables
            assert sorted(canary.tags) == canary_tags(env) and sorted(post.tags) == canary_tags(env, "post-apply")
            for flow_run in (canary, post):
                assert read_flow_run(flow_run.id).state.type.value == "COMPLETED"
                assert parent_flow_run_id(flow_run) == result["flow_run_id"]
                # the image the run really ran with: the candidate for the canary; after the apply, the
                # pool's new default (prober) or the deployment's own new image (changed)
                wait_for_log_line(flow_run.id, f"canary target running with image {image!r}")


def test_when_always_tests_changed_targets_without_a_new_image(estate):
    """README: drift corrections and changes that bring no new image are not tested by default; with
    `when: always` every changed target is tested with the image it will run (its own, else its pool's).
    A revision that changes nothing tests nothing, `always` or not."""
    e = estate
    own, poolwide = e["dep"], f"canary-target/bare-{uid()}"
    create_canary_deployment(poolwide.split("/")[1], e["pool"])  # no image: runs the pool's flows:0
    marker = e["marker"]

    def commit(team: str, when: str | None) -> None:
        smoke = {"kind": "canary", "timeout_seconds": PASSING_CANARY_TIMEOUT, "canary": {"parameters": {"marker": marker}},
                 **({"when": when} if when else {})}
        e["repo"].commit_env(e["env"], {"smoke_test": smoke, "deployments": {
            own: {"job_variables": {"image": "flows:1", "labels": {"team": team}}},
            poolwide: {"job_variables": {"labels": {"team": team}}}}})

    # default (image-changed): a labels change brings no image: applied, nothing run
    commit("a", None)
    result = apply(e)
    assert result["status"] == "applied" and result["applied"] == 2 and result["smoke_tests"] == []
    # a drift correction of the image puts back an image already applied: not tested either
    set_deployment_job_variables(own, {"image": "flows:9", "labels": {"team": "a"}})
    result = apply(e, "--full-check")
    assert [(c["key"], c["new"], c["reason"]) for c in result["changes"]] == [("image", "flows:1", "drift")]
    assert result["status"] == "applied" and result["smoke_tests"] == []
    assert flow_runs_of(own) == [] and flow_runs_of(poolwide) == []

    # when: always: each changed target runs its canary with the image it will run, a drift correction too
    set_deployment_job_variables(own, {"image": "flows:9", "labels": {"team": "a"}})
    commit("b", "always")
    result = apply(e)
    assert result["status"] == "applied" and result["applied"] == 3
    assert deployment_job_variables(own) == {"image": "flows:1", "labels": {"team": "b"}}
    tests = sorted((t["deployment"], t["image"], t["targets"], t["result"]) for t in result["smoke_tests"])
    assert tests == sorted([(own, "flows:1", [own], "passed"), (poolwide, "flows:0", [poolwide], "passed")])
    for dep, image in ((own, "flows:1"), (poolwide, "flows:0")):
        [canary] = flow_runs_of(dep)
        assert canary.job_variables == {"image": image} and sorted(canary.tags) == canary_tags(e["env"])
        assert read_flow_run(canary.id).state.type.value == "COMPLETED"
    assert sorted(open(marker).read().splitlines()) == ["flows:0", "flows:1"]

    # a new revision that changes nothing: in sync, no canary, even with when: always
    commit("b", "always")
    result = apply(e)
    assert result["status"] == "in-sync" and result["changes"] == [] and result["smoke_tests"] == []
    assert len(flow_runs_of(own)) == 1 and len(flow_runs_of(poolwide)) == 1
