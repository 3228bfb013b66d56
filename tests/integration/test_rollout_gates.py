"""Rollout gates against the real server: one writer per environment, the shared smoke-test cap, waves,
promotion, sync windows, suspend/resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from fake_k8s import FakeKubernetes
from helpers import (
    GitRepo,
    cli,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_deployment,
    read_state,
    server_snapshot,
    set_deployment_job_variables,
    uid,
)


def wait_code(condition: str, seconds: float) -> str:
    """Lines of a smoke test's script that wait until `condition` (a Python expression; `os` and `time`
    imported) holds, for at most `seconds`."""
    return f"deadline = time.time() + {seconds}\nwhile not ({condition}) and time.time() < deadline:\n    time.sleep(0.1)\n"


def marker_command(marker, sleep=0.0, fail_on="bad", release=None):
    """A smoke test that logs its start and end to `marker`; it sleeps, or waits (up to 2 min) until
    `release` exists."""
    wait = wait_code(f"os.path.exists({str(release)!r})", 120) if release else f"time.sleep({sleep})\n"
    code = (f"import os, sys, time\nimg = os.environ['SMOKE_IMAGE']\nf = open({str(marker)!r}, 'a')\n"
            f"f.write('start %s %f\\n' % (img, time.time()))\nf.flush()\n{wait}"
            f"f.write('end %s %f\\n' % (img, time.time()))\nsys.exit(3 if {fail_on!r} in img else 0)\n")
    return [sys.executable, "-c", code]


def wait_for_line(path, prefix, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and any(line.startswith(prefix) for line in path.read_text().splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError(f"no line {prefix!r} in {path} after {timeout}s")


@pytest.fixture
def estate(tmp_path):
    u = uid()
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1")
    for name in ("a", "b", "c"):
        create_deployment(flow, name, pool)
    return dict(u=u, pool=pool, a=f"{flow}/a", b=f"{flow}/b", c=f"{flow}/c", repo=GitRepo(tmp_path / "gitops"),
                marker=tmp_path / "marker.txt", tmp=tmp_path)


def apply_proc(repo, env, *more, extra_env=None):
    return subprocess.Popen([sys.executable, "-m", "prefect_gitops", "apply", "--source", repo.url, "--env", env,
                             "--output", "json", *more], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(extra_env or {})})


def finish(proc):
    out, err = proc.communicate(timeout=300)
    report = json.loads(out) if out.strip().startswith("{") else {}
    report["stderr"] = err[-4000:]  # shown by a failing assertion
    return proc.returncode, report


def test_one_writer_per_environment_and_environments_in_parallel(estate):
    e = estate
    qa, prod = f"qa{e['u']}", f"prod{e['u']}"
    release = e["tmp"] / "release"  # the smoke tests hold their rollouts until the test creates it
    held = {"kind": "process", "process": {"command": marker_command(e["marker"], release=release)}}
    e["repo"].commit_env(qa, {"smoke_test": held, "rollout": {"lock_timeout_seconds": 2},
                              "deployments": {e["a"]: {"job_variables": {"image": "flows:qa"}}}})
    e["repo"].commit_env(prod, {"smoke_test": held, "deployments": {e["b"]: {"job_variables": {"image": "flows:prod"}}}})

    first = apply_proc(e["repo"], qa)
    wait_for_line(e["marker"], "start flows:qa")  # qa's first rollout holds the lock
    code_busy, busy = finish(apply_proc(e["repo"], qa))
    assert code_busy == 3 and busy["status"] == "busy" and busy["applied"] == 0, busy
    assert "another rollout of" in busy["message"] and "is in progress" in busy["message"]
    # prod rolls out while qa's rollout still holds its lock
    other = apply_proc(e["repo"], prod)
    wait_for_line(e["marker"], "start flows:prod")
    assert not any(line.startswith("end") for line in e["marker"].read_text().splitlines())
    release.touch()
    for proc in (first, other):
        code, report = finish(proc)
        assert code == 0 and report["applied"] == 1, report
    state, _ = read_state(qa)
    assert len(state.history) == 1
    assert deployment_job_variables(e["a"])["image"] == "flows:qa"
    assert deployment_job_variables(e["b"])["image"] == "flows:prod"


def test_smoke_test_cap_is_shared(estate, tmp_path):
    e = estate
    env = f"cap{e['u']}"
    with FakeKubernetes(tmp_path / "k8s") as k8s:
        started = tmp_path / "started"
        started.mkdir()
        # each Job waits (up to a minute) until two have started: the cap of 2 is reached, never passed
        wait_for_two = (f"import os, time, uuid\nopen(os.path.join({str(started)!r}, uuid.uuid4().hex), 'w').close()\n"
                        + wait_code(f"len(os.listdir({str(started)!r})) >= 2", 60))
        smoke = {"kind": "kubernetes", "kubernetes": {
            "command": [sys.executable, "-c", wait_for_two],
            "cluster": {"kubeconfig": str(k8s.kubeconfig_path), "context": "fake"}}}
        for i in range(5):
            create_deployment(e["a"].split("/")[0], f"cap{i}", e["pool"])
        e["repo"].commit_env(env, {"smoke_test": smoke, "deployments": {
            f"{e['a'].split('/')[0]}/cap{i}": {"job_variables": {"image": f"flows:cap-{i}"}} for i in range(5)}})
        code, report = finish(apply_proc(e["repo"], env, extra_env={"PREFECT_GITOPS_SMOKE_TEST_LIMIT": "2"}))
        assert code == 0 and report["applied"] == 5
        assert len(k8s.created_jobs) == 5
        assert k8s.max_running == 2


def test_waves_run_in_order_and_a_failed_wave_stops_the_rollout(estate):
    e = estate
    env = f"w{e['u']}"
    smoke = {"kind": "process", "process": {"command": marker_command(e["marker"], sleep=0.5)}}

    def doc(a, b, c):
        return {"smoke_test": smoke,
                "rollout": {"waves": [{"wave": 2, "name": "the rest", "deployments": [e["b"], e["c"]], "max_parallel": 1}]},
                "deployments": {e["a"]: {"job_variables": {"image": a}, "wave": 1},
                                e["b"]: {"job_variables": {"image": b}}, e["c"]: {"job_variables": {"image": c}}}}

    e["repo"].commit_env(env, doc("flows:a2", "flows:b2", "flows:c2"))
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env)
    assert [(w["wave"], w["name"], w["state"], w["changes"]) for w in report["waves"]] == [
        (1, "wave 1", "applied", 1), (2, "the rest", "applied", 2)]
    lines = e["marker"].read_text().splitlines()
    end_a = next(float(x.split()[2]) for x in lines if x.startswith("end flows:a2"))
    start_b = next(float(x.split()[2]) for x in lines if x.startswith("start flows:b2"))
    assert end_a < start_b
    # wave 1 was written before wave 2's tests started
    assert read_deployment(e["a"]).updated.timestamp() < start_b

    before = server_snapshot([e["pool"]], [e["b"], e["c"]])
    e["repo"].commit_env(env, doc("flows:a3-bad", "flows:b3", "flows:c3"))
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env, check_codes=(1,))
    assert [(w["wave"], w["state"]) for w in report["waves"]] == [(1, "failed"), (2, "not started")]
    assert server_snapshot([e["pool"]], [e["b"], e["c"]]) == before
    assert deployment_job_variables(e["a"]) == {"image": "flows:a2"}
    assert not any("flows:b3" in x for x in e["marker"].read_text().splitlines())


def test_promotion_gate_requires_the_image_to_soak_in_the_previous_environment(estate):
    e = estate
    qa, prod = f"qa{e['u']}", f"prod{e['u']}"
    e["repo"].commit_env(qa, {"deployments": {e["a"]: {"job_variables": {"image": "flows:5"}}}})
    prod_doc = lambda image, soak: {"rollout": {"promotion": {"from": qa, "soak_seconds": soak}},  # noqa: E731
                                    "deployments": {e["b"]: {"job_variables": {"image": image}}}}
    e["repo"].commit_env(prod, prod_doc("flows:5", 3600))

    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", prod, check_codes=(4,))
    assert report["status"] == "waiting" and "never been reconciled" in report["message"]
    cli_json_here("apply", "--source", e["repo"].url, "--env", qa)
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", prod, check_codes=(4,))
    assert "needs 3600s" in report["message"] and deployment_job_variables(e["b"]) == {}
    state, _ = read_state(prod)
    assert state.condition.reason == "PromotionPending" and state.last_applied_revision is None

    e["repo"].commit_env(prod, prod_doc("flows:6", 0))  # an image qa never ran
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", prod, check_codes=(4,))
    assert f"flows:6: not running in '{qa}'" in report["message"]

    e["repo"].commit_env(prod, prod_doc("flows:5", 1))
    time.sleep(1.5)
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", prod)
    assert report["status"] == "applied" and deployment_job_variables(e["b"]) == {"image": "flows:5"}


def test_deny_window_blocks_apply_and_the_override_applies(estate):
    e = estate
    env = f"win{e['u']}"
    always = [{"kind": "deny", "schedule": "* * * * *", "duration": "5m", "description": "freeze"}]
    e["repo"].commit_env(env, {"sync_windows": always, "deployments": {e["a"]: {"job_variables": {"image": "flows:7"}}}})
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env, check_codes=(4,))
    assert report["status"] == "window-closed" and "inside deny window" in report["message"]
    assert report["changes"][0]["new"] == "flows:7" and deployment_job_variables(e["a"]) == {}
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env, "--override-windows")
    assert report["status"] == "applied" and deployment_job_variables(e["a"]) == {"image": "flows:7"}

    # an allow window that is never open now blocks too
    e["repo"].commit_env(env, {"sync_windows": [{"kind": "allow", "schedule": "0 0 1 1 *", "duration": "1m"}],
                               "deployments": {e["a"]: {"job_variables": {"image": "flows:8"}}}})
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env, check_codes=(4,))
    assert "outside every allow window" in report["message"]


def test_suspend_stops_apply_and_drift_correction_resume_restores(estate):
    e = estate
    env = f"sus{e['u']}"
    e["repo"].commit_env(env, {"drift": {"check_interval_seconds": 0},
                               "deployments": {e["a"]: {"job_variables": {"image": "flows:1"}}}})
    cli_json_here("apply", "--source", e["repo"].url, "--env", env)
    assert "suspended" in cli("suspend", "--env", env, "--reason", "incident 42").stdout

    set_deployment_job_variables(e["a"], {"image": "flows:hotfix"})  # drift
    e["repo"].commit_env(env, {"drift": {"check_interval_seconds": 0},
                               "deployments": {e["a"]: {"job_variables": {"image": "flows:1"}},
                                               e["b"]: {"job_variables": {"image": "flows:2"}}}})
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env, check_codes=(4,))
    assert report["status"] == "suspended" and "incident 42" in report["message"]
    assert deployment_job_variables(e["a"]) == {"image": "flows:hotfix"} and deployment_job_variables(e["b"]) == {}
    assert "suspended:                yes" in cli("status", "--env", env).stdout

    cli("resume", "--env", env)
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", env)
    assert report["status"] == "applied"
    assert deployment_job_variables(e["a"]) == {"image": "flows:1"} and deployment_job_variables(e["b"]) == {"image": "flows:2"}


def test_promote_commits_exactly_the_image_lines(estate):
    e = estate
    qa, prod = f"qa{e['u']}", f"prod{e['u']}"
    e["repo"].git("config", "receive.denyCurrentBranch", "updateInstead")  # the test repo is pushed to
    e["repo"].commit_env(qa, {"deployments": {e["a"]: {"job_variables": {"image": "registry.example.com/flows:2.0.0"}}}})
    e["repo"].commit_env(prod, f"""\
# prod: reviewed by the platform team
deployments:
  {e['b']}:
    job_variables:
      image: registry.example.com/flows:1.0.0   # pinned
      env: {{LOG_LEVEL: info}}
""")
    cli_json_here("apply", "--source", e["repo"].url, "--env", qa)
    cli_json_here("apply", "--source", e["repo"].url, "--env", prod)
    assert deployment_job_variables(e["b"])["image"] == "registry.example.com/flows:1.0.0"

    code, report = cli_json_here("promote", "--source", e["repo"].url, "--from", qa, "--to", prod)
    assert report["status"] == "promoted" and report["changes"][0]["new"] == "registry.example.com/flows:2.0.0"
    head = e["repo"].git("rev-parse", "HEAD")
    assert report["revision"] == head
    diff = e["repo"].git("diff", "-U0", "HEAD~1", "HEAD")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert changed == ["-      image: registry.example.com/flows:1.0.0   # pinned",
                       "+      image: registry.example.com/flows:2.0.0   # pinned"]
    assert e["repo"].git("log", "-1", "--format=%an %s") == f"prefect-gitops prefect-gitops: promote {qa} -> {prod}"

    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", prod)
    assert report["revision"] == head and deployment_job_variables(e["b"])["image"] == "registry.example.com/flows:2.0.0"
    code, report = cli_json_here("promote", "--source", e["repo"].url, "--from", qa, "--to", prod)
    assert report["status"] == "in-sync" and e["repo"].git("rev-parse", "HEAD") == head
