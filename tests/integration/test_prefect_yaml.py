"""prefect.yaml deploys the control flows; blocks register; CI's rollout job triggers a real run."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from control_plane import REPO_ROOT, TEST_IMAGE, ControlPlane
from helpers import _with_client, deployment_job_variables, flow_runs_of, read_state, run


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("control")).start()
    yield plane
    plane.stop()


def read(name):
    async def go(client):
        return await client.read_deployment_by_name(name)

    return run(_with_client(go))


def test_deploy_all_creates_the_control_deployments(control_plane):
    for name in ("reconcile-qa", "reconcile-prod"):
        d = read(f"gitops-reconcile/{name}")
        assert d.work_pool_name == control_plane.pool and d.work_queue_name == "prefect-gitops"
        assert d.parameters == {"environment": name.split("-")[1], "source_block": "gitops-source"}
        assert d.job_variables == {"image": TEST_IMAGE}
        assert [s.schedule.interval.total_seconds() for s in d.schedules] == [300]
        assert d.global_concurrency_limit.limit == 1
        assert d.concurrency_options.collision_strategy.value == "ENQUEUE"
        assert d.entrypoint == "flows/reconcile.py:reconcile"
    rollback = read("gitops-rollback/rollback")
    assert rollback.schedules == [] and rollback.entrypoint == "flows/rollback.py:rollback"
    promote = read("gitops-promote/promote")
    assert promote.parameters == {"from_environment": "qa", "to_environment": "prod", "source_block": "gitops-source"}
    set_image = read("gitops-set-image/set-image")  # started by application pipelines with run_deployment
    assert set_image.parameters == {"source_block": "gitops-source"} and set_image.schedules == []
    assert set_image.entrypoint == "flows/set_image.py:set_image"
    assert set_image.work_queue_name == "prefect-gitops" and set_image.job_variables == {"image": TEST_IMAGE}
    scan = read("gitops-image-scan/image-scan-qa")
    assert scan.parameters == {"environment": "qa", "source_block": "gitops-source"}
    assert [s.schedule.interval.total_seconds() for s in scan.schedules] == [600]
    assert scan.entrypoint == "flows/image_scan.py:image_scan" and scan.work_queue_name == "prefect-gitops"


@pytest.mark.parametrize("name", ["gitops-reconcile/reconcile-qa", "gitops-rollback/rollback", "gitops-promote/promote",
                                  "gitops-set-image/set-image", "gitops-image-scan/image-scan-qa"])
def test_parameter_forms_have_titles_descriptions_enums_and_defaults(control_plane, name):
    schema = read(name).parameter_openapi_schema
    for key, prop in schema["properties"].items():
        assert prop.get("title") and prop["title"] != key, (key, prop)
        assert prop.get("description", "").strip(), (key, prop)
    if name.endswith("reconcile-qa"):
        props = schema["properties"]
        assert props["drift_mode"]["enum"] == ["from-file", "correct", "warn"] and props["drift_mode"]["default"] == "from-file"
        assert props["dry_run"]["default"] is False and props["concurrency"]["maximum"] == 32
        assert props["environment"]["pattern"] and schema["required"] == ["environment"]


def test_block_types_register_and_keep_secrets_secret(control_plane):
    done = subprocess.run([sys.executable, "-m", "prefect", "block", "register", "--file", "blocks/gitops.py"],
                          cwd=REPO_ROOT, capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    async def go(client):
        slugs = {"gitops-source", "gitops-rollout-defaults", "gitops-smoke-test-defaults", "gitops-policy"}
        found = {slug: await client.read_block_type_by_slug(slug) for slug in slugs}
        from prefect_gitops.blocks import GitOpsSource

        await GitOpsSource(url="https://gitlab.example.com/platform/gitops.git", token="s3cr3t-t0ken").asave(
            "with-token", overwrite=True)
        doc = await client.read_block_document_by_name("with-token", "gitops-source", include_secrets=False)
        return found, doc

    found, doc = run(_with_client(go))
    assert all(found.values())
    assert "s3cr3t-t0ken" not in str(doc.data) and doc.data["token"] != "s3cr3t-t0ken"


def test_the_ci_rollout_job_triggers_a_reconcile(control_plane):
    ci = yaml.safe_load((REPO_ROOT / ".gitlab-ci.yml").read_text())
    rollout = next(job for job in ci.values() if isinstance(job, dict) and job.get("stage") == "rollout")
    script = "\n".join(["set -e", *rollout["script"]])
    assert "prefect-gitops trigger --env qa --wait" in script
    done = subprocess.run(["bash", "-c", script], cwd=REPO_ROOT, env=control_plane.env_vars(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr + (control_plane.tmp / "worker.log").read_text()[-3000:]
    assert "started gitops-reconcile/reconcile-qa" in done.stdout and "/runs/flow-run/" in done.stdout
    assert "Completed" in done.stdout
    shown = [line.split(" ", 1)[1].split(":")[0] for line in done.stdout.splitlines() if line[:2].isdigit()]
    assert "Running" in shown and shown.index("Running") < shown.index("Completed"), shown  # no state skipped
    state, _ = read_state("qa")
    assert state.last_applied_revision == control_plane.sha
    assert deployment_job_variables(control_plane.workload) == {"image": "flows:qa-1"}


def test_trigger_exit_codes(control_plane):
    from lost_answer_proxy import LostAnswerProxy, flow_run_creates

    def trigger(*args, api_url=None):
        env = {**control_plane.env_vars(), **({"PREFECT_API_URL": api_url} if api_url else {})}
        return subprocess.run([sys.executable, "-m", "prefect_gitops", "trigger", "--env", "qa", *args],
                              capture_output=True, text=True, env=env, timeout=300)

    def triggered() -> set:
        return {r.id for r in flow_runs_of("gitops-reconcile/reconcile-qa") if not r.auto_scheduled}

    assert trigger("--wait", "--revision", "0" * 40).returncode == 1  # a revision that does not exist: Failed
    # the answer to the create lost once (the server made the run, the client sends it again): one run
    # (no --wait: the client's retry after the lost answer can take longer than the run, which a
    # --timeout 0 would then find ended, as CI once did)
    before = triggered()
    with LostAnswerProxy(lose=flow_run_creates) as proxy:
        started = trigger(api_url=proxy.url)
    assert started.returncode == 0 and "started gitops-reconcile/reconcile-qa" in started.stdout, started.stderr
    assert len(proxy.lost) == 1 and len(triggered() - before) == 1, started.stdout
    # --wait past its --timeout: 124, the run goes on (polled at once, a new run is not ended yet)
    timed_out = trigger("--wait", "--timeout", "0")
    assert timed_out.returncode == 124 and "still" in timed_out.stderr, timed_out.stdout + timed_out.stderr
    for missing in (trigger("--deployment", "gitops-reconcile/no-such"), trigger("--env", "nosuchenv", "--wait")):
        assert missing.returncode == 1 and "no such deployment" in missing.stderr, missing.stderr
        assert "gitops-reconcile/reconcile-qa" in missing.stderr and "gitops-reconcile/reconcile-prod" in missing.stderr

    # the runs this test triggered still run on the worker: let them end before this control plane
    # stops. Only those: the 5-minute schedule keeps adding runs, which a slow machine may never drain.
    deadline = time.monotonic() + 600  # a deadline, not a speed target: a loaded machine is slow
    while unfinished := [(r.name, r.state.name) for r in flow_runs_of("gitops-reconcile/reconcile-qa")
                         if not r.auto_scheduled and not r.state.is_final()]:
        assert time.monotonic() < deadline, f"runs still unfinished: {unfinished}"
        time.sleep(1)
