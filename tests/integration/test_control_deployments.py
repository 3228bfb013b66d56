"""The control deployments of prefect.yaml other than the reconciles, run on a real worker: `rollback`
and `promote` started with `run_deployment` as a user (or an Automation) starts them; and
`prefect-gitops trigger` on an environment whose lock another rollout holds (exit 3, state Busy).

One control plane (prefect.yaml deployed with `prefect deploy --all`, a real `prefect worker` on the
control pool, the `gitops-source` block) serves the whole file; each test commits the qa revisions it
needs and applies them through `trigger`, so it does not depend on the others having run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from uuid import UUID

import pytest
from prefect.client.schemas.objects import StateType

from control_plane import REPO_ROOT, ControlPlane
from helpers import _with_client, deployment_job_variables, read_deployment, read_events, read_state, run

RUN_TIMEOUT = 240  # seconds a control run may take on a loaded 2-core machine before the test gives up


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    plane = ControlPlane(tmp_path_factory.mktemp("control-deployments")).start()
    # promote pushes to the GitOps repo; it is a checkout here, so let the push update its branch
    plane.repo.git("config", "receive.denyCurrentBranch", "updateInstead")
    yield plane
    plane.stop()


def started_run_id(stdout: str) -> UUID:
    found = re.search(r"^started gitops-reconcile/reconcile-qa: flow run \S+ \(([0-9a-f-]{36})\)$", stdout, re.M)
    assert found, f"trigger printed no started run:\n{stdout}"
    return UUID(found.group(1))


def read_flow_run(flow_run_id: UUID):
    async def go(client):
        return await client.read_flow_run(flow_run_id)

    return run(_with_client(go))


def state_names(flow_run_id: UUID) -> list[str]:
    async def go(client):
        return sorted(await client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)

    return [s.name for s in run(_with_client(go))]


def apply_qa(plane: ControlPlane, image: str) -> str:
    """Commit qa's file with `image` for the workload and apply it through `trigger --wait`."""
    sha = plane.repo.commit_env("qa", plane.qa_file(image))
    done = plane.trigger("--env", "qa", "--wait", "--timeout", str(RUN_TIMEOUT))
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}\n{plane.worker_log()}"
    assert read_state("qa")[0].last_applied_revision == sha
    assert deployment_job_variables(plane.workload) == {"image": image}
    return sha


def run_control_deployment(plane: ControlPlane, name: str, parameters: dict):
    """Start a deployment of prefect.yaml with run_deployment and wait until its run ends on the worker;
    the run as the server has it then."""
    from prefect.deployments import arun_deployment

    async def go(client):
        return await arun_deployment(name, client=client, parameters=parameters, timeout=RUN_TIMEOUT,
                                     poll_interval=1, as_subflow=False)

    started = run(_with_client(go))
    flow_run = read_flow_run(started.id)
    assert flow_run.state.is_final(), f"{name}: run still {flow_run.state.name} after {RUN_TIMEOUT} s\n{plane.worker_log()}"
    assert flow_run.state.type == StateType.COMPLETED and flow_run.state.name == "Completed", (
        f"{name} ended {flow_run.state.name}: {flow_run.state.message}\n{plane.worker_log()}")
    # it ran as prefect.yaml deploys it: that deployment, the control pool's control queue, the worker
    assert flow_run.deployment_id == read_deployment(name).id
    assert (flow_run.work_pool_name, flow_run.work_queue_name) == (plane.pool, "prefect-gitops")
    assert "Running" in state_names(flow_run.id)
    return flow_run


def wait_until(condition, what: str, timeout: float = 60.0, poll: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(poll)
    return value


# -- trigger while another rollout holds qa's lock: exit 3, the run ends Cancelled named Busy ----------

# a process smoke test that announces it runs (file argv[1]), then waits until argv[2] exists (at most
# 5 minutes): the reconcile that runs it holds the environment's lock all that time
HOLD = ("import os, sys, time\nopen(sys.argv[1], 'w').close()\ndeadline = time.time() + 300\n"
        "while not os.path.exists(sys.argv[2]) and time.time() < deadline:\n    time.sleep(0.1)\n")


def test_trigger_exits_3_and_the_run_ends_busy_while_another_rollout_holds_the_lock(plane, tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    qa = plane.qa_file("flows:qa-held")
    qa["rollout"]["lock_timeout_seconds"] = 2  # how long a second rollout waits for the lock
    qa["smoke_test"] = {"kind": "process",
                        "process": {"command": [sys.executable, "-c", HOLD, str(started), str(release)]}}
    sha = plane.repo.commit_env("qa", qa)

    # another rollout of qa: `prefect-gitops apply` by hand, holding qa's lock while its smoke test runs
    holder = subprocess.Popen(["prefect-gitops", "apply", "--source", plane.repo.url, "--env", "qa",
                               "--output", "json"], cwd=REPO_ROOT, env=plane.env_vars(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: started.exists() or holder.poll() is not None, "the holding rollout's smoke test", 120)
        assert holder.poll() is None, f"the holding rollout ended early: {holder.communicate()}"
        recorded = read_state("qa")[0].model_dump_json()
        variables = deployment_job_variables(plane.workload)

        busy = plane.trigger("--env", "qa", "--wait", "--timeout", str(RUN_TIMEOUT))
        # the triggered run wrote nothing: neither the workload nor the recorded state changed while the
        # other rollout, still waiting in its smoke test, held the lock
        assert holder.poll() is None
        assert deployment_job_variables(plane.workload) == variables
        assert variables != {"image": "flows:qa-held"}
        assert read_state("qa")[0].model_dump_json() == recorded
    finally:
        release.touch()
        out, err = holder.communicate(timeout=300)

    message = "another rollout of qa is in progress (waited 2s); nothing was written"
    assert busy.returncode == 3, f"exit {busy.returncode}\n{busy.stdout}\n{busy.stderr}\n{plane.worker_log()}"
    assert busy.stdout.splitlines()[-1].endswith(f" Busy: {message}"), busy.stdout
    # the server's record of the run that found qa busy: it ran on the worker and ended Cancelled, named Busy
    flow_run_id = started_run_id(busy.stdout)
    flow_run = read_flow_run(flow_run_id)
    assert flow_run.deployment_id == read_deployment("gitops-reconcile/reconcile-qa").id
    assert (flow_run.state.type, flow_run.state.name, flow_run.state.message) == (StateType.CANCELLED, "Busy", message)
    assert state_names(flow_run_id)[-2:] == ["Running", "Busy"]

    # the rollout that held the lock went on and applied the revision
    report = json.loads(out)
    assert holder.returncode == 0 and report["status"] == "applied", err[-3000:]
    state, _ = read_state("qa")
    assert state.last_applied_revision == sha and deployment_job_variables(plane.workload) == {"image": "flows:qa-held"}
    assert state.history[0].flow_run_id == report["flow_run_id"] != str(flow_run_id)
    assert str(flow_run_id) not in {entry.flow_run_id for entry in state.history}


# -- the rollback deployment ---------------------------------------------------------------------------

def test_the_rollback_deployment_restores_the_previous_revision(plane):
    before = apply_qa(plane, "flows:qa-before")
    after = apply_qa(plane, "flows:qa-after")

    flow_run = run_control_deployment(plane, "gitops-rollback/rollback", {"environment": "qa", "steps": 1})

    # the values as applied at the previous revision are back on the server
    assert deployment_job_variables(plane.workload) == {"image": "flows:qa-before"}
    # recorded as the README says: applied revision, rolled back from Git's, a history entry of this run
    state, _ = read_state("qa")
    assert state.last_applied_revision == before
    rolled = state.rolled_back
    assert (rolled.from_revision, rolled.to_revision, rolled.reason, rolled.flow_run_id) == (
        after, before, "manual", str(flow_run.id))
    entry = state.history[0]
    assert (entry.revision, entry.outcome, entry.flow_run_id) == (before, "rollback", str(flow_run.id))
    assert [(c.target_type, c.target, c.key, c.action, c.old, c.new) for c in entry.changes] == [
        ("deployment", plane.workload, "image", "set", "flows:qa-after", "flows:qa-before")]
    assert [(h.revision, h.outcome) for h in state.history[1:3]] == [(after, "applied"), (before, "applied")]
    status = subprocess.run(["prefect-gitops", "status", "--env", "qa"], env=plane.env_vars(),
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status
    assert f"rolled back:              yes (manual) from {after[:12]} to {before[:12]} at " in status.stdout, status.stdout
    # events are persisted a moment after they are sent: read_events polls until this run's is in
    events = read_events("prefect-gitops.rollback", "qa", flow_run_id=str(flow_run.id))
    assert [e["payload"]["revision"] for e in events] == [before]


# -- the promote deployment ----------------------------------------------------------------------------

def test_the_promote_deployment_commits_qa_images_into_prod_file(plane):
    qa_revision = apply_qa(plane, "flows:qa-promoted")
    prod_file = "environments/prod.yaml"
    head = plane.repo.git("rev-parse", "HEAD")
    prod_before = plane.repo.git("show", f"HEAD:{prod_file}")
    assert "image: flows:prod-1" in prod_before

    # the deployment's own parameters, as prefect.yaml sets them: qa -> prod, the gitops-source block
    flow_run = run_control_deployment(plane, "gitops-promote/promote", {})
    assert flow_run.parameters == {"from_environment": "qa", "to_environment": "prod", "source_block": "gitops-source"}

    # one new commit on the block's branch of the block's repository, changing only prod's image line
    commit = plane.repo.git("rev-parse", "HEAD")
    assert commit != head and plane.repo.git("rev-parse", "HEAD^") == head
    assert plane.repo.git("diff", "--name-only", head, commit) == prod_file
    assert plane.repo.git("show", f"HEAD:{prod_file}") == prod_before.replace("image: flows:prod-1",
                                                                           "image: flows:qa-promoted")
    assert plane.repo.git("log", "-1", "--format=%an%n%B") == (
        f"prefect-gitops\nprefect-gitops: promote qa -> prod\n\nImages as applied in qa at {qa_revision}.")


# -- the set-image deployment (push mode: what an application pipeline starts) --------------------------

def readme_update_gitops_job() -> list[str]:
    """The script of the README's `.gitlab-ci.yml` job for an application repository."""
    import yaml

    readme = (REPO_ROOT / "README.md").read_text()
    snippet = re.search(r"```yaml\n(# \.gitlab-ci\.yml of an application repository.*?)```", readme, re.S)
    assert snippet, "the README has no .gitlab-ci.yml snippet for an application repository"
    return yaml.safe_load(snippet.group(1))["update-gitops"]["script"]


def test_the_readme_pipeline_job_commits_an_application_pipelines_image(plane):
    """The README's `update-gitops` job, run as GitLab would (its script in bash, GitLab's variables set,
    the `pip install` left out: Prefect is installed here): one commit of the workload's image line in qa,
    made for the pipeline's user, naming the pipeline and the set-image flow run that wrote it."""
    qa_file = "environments/qa.yaml"
    head = plane.repo.git("rev-parse", "HEAD")
    before = plane.repo.git("show", f"HEAD:{qa_file}")
    old = deployment_image_in(before, plane.workload)
    script = [line for line in readme_update_gitops_job() if not line.startswith("pip install")]
    # the README's example deployment is this plane's workload
    script = [line.replace("deployment=etl/daily", f"deployment={plane.workload}") for line in script]
    sha = "0123456789abcdef0123456789abcdef01234567"
    gitlab = {"CI_REGISTRY_IMAGE": "reg.example.com/team/etl", "CI_COMMIT_SHA": sha, "CI_PROJECT_PATH": "team/etl",
              "CI_PIPELINE_URL": "https://gitlab.example.com/team/etl/-/pipelines/42",
              "GITLAB_USER_NAME": "Jane Doe", "GITLAB_USER_EMAIL": "jane@example.com"}
    done = subprocess.run(["bash", "-c", "\n".join(["set -e", *script])], cwd=plane.tmp, capture_output=True,
                          text=True, env={**plane.env_vars(), **gitlab}, timeout=RUN_TIMEOUT + 60)
    assert done.returncode == 0, done.stdout + done.stderr + plane.worker_log()
    found = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    flow_run = read_flow_run(UUID(found.group(1)))
    assert flow_run.state.type == StateType.COMPLETED, (flow_run.state.message, plane.worker_log())
    assert flow_run.deployment_id == read_deployment("gitops-set-image/set-image").id
    assert (flow_run.work_pool_name, flow_run.work_queue_name) == (plane.pool, "prefect-gitops")
    assert flow_run.parameters["source_block"] == "gitops-source"  # the deployment's own, from prefect.yaml

    # one commit on the block's branch, changing only the workload's image line in qa's file
    image = f"reg.example.com/team/etl:{sha}"
    commit = plane.repo.git("rev-parse", "HEAD")
    assert commit != head and plane.repo.git("rev-parse", "HEAD^") == head
    assert plane.repo.git("diff", "--name-only", head, commit) == qa_file
    assert plane.repo.git("show", f"HEAD:{qa_file}") == before.replace(f"image: {old}", f"image: {image}")
    assert plane.repo.git("log", "-1", "--format=%an <%ae>|%cn%n%B") == (
        f"Jane Doe <jane@example.com>|prefect-gitops\nprefect-gitops: set image of deployment {plane.workload} in qa\n\n"
        f"deployment {plane.workload}: {old} -> {image}\n\n"
        "team/etl pipeline https://gitlab.example.com/team/etl/-/pipelines/42\n\n"
        f"Prefect-Flow-Run: {flow_run.id} ({flow_run.name})")


def deployment_image_in(text: str, deployment: str) -> str:
    import yaml

    return yaml.safe_load(text)["deployments"][deployment]["job_variables"]["image"]
