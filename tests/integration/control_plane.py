"""prefect-gitops deployed the way users deploy it: `prefect --no-prompt deploy --all` from prefect.yaml,
a saved GitOps Source block, and a real process worker on the control pool.

The build and push steps need a Docker engine, which these machines lack: the tests deploy from a copy
of prefect.yaml without them (the image job variable set to a fixed tag, the pull step pointing at this
checkout instead of the image's /opt/prefect/flows). Everything else is the real file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from helpers import GitRepo, process_worker, uid

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_IMAGE = "registry.example.com/prefect-gitops:test"


def deployable_prefect_file(target: Path, schedule_interval: int | None = None) -> dict:
    from prefect_gitops.prefect_file import BUILT_IMAGE, write_prebuilt

    raw = yaml.safe_load((REPO_ROOT / "prefect.yaml").read_text())
    assert raw["build"] and raw["push"]  # the steps we cannot run here
    assert all(d["work_pool"]["job_variables"]["image"] == BUILT_IMAGE for d in raw["deployments"])
    return write_prebuilt(REPO_ROOT / "prefect.yaml", TEST_IMAGE, target, workdir=str(REPO_ROOT),
                          schedule_interval=schedule_interval)


def forget_environments(*environments: str) -> None:
    """Delete the recorded state and history of `environments` (as an operator retiring them would)."""
    from helpers import _with_client, run
    from prefect_gitops.adapters.state_store import delete_record

    async def go(client):
        for environment in environments:
            await delete_record(client, environment)

    run(_with_client(go))


class ControlPlane:
    def __init__(self, tmp: Path, schedule_interval: int | None = None, schedules_active: bool = True):
        self.tmp = tmp
        self.schedule_interval = schedule_interval
        # a test that counts the reconciles' runs deploys the schedules paused (declared, not firing):
        # on a slow machine a 5-minute tick would otherwise land inside it
        self.schedules_active = schedules_active
        self.pool = f"control-{uid()}"
        self.env = "qa"
        self.repo = GitRepo(tmp / "gitops")
        self.worker: subprocess.Popen | None = None
        self._stack = contextlib.ExitStack()
        self.deploy_output = ""

    def env_vars(self) -> dict:
        # CI runs the CLI's console script by name, as the image does; the venv need not be activated
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        return {**os.environ, "PATH": path,
                "PREFECT_GITOPS_WORK_POOL": self.pool}

    def start(self) -> "ControlPlane":
        from helpers import create_canary_deployment, create_canary_pool

        # every control plane deploys the same reconcile-qa/-prod onto a new estate and a new repository:
        # the record another test module's plane left for qa and prod would make this plane's first
        # revision a rewritten history and a mass release (both refused, rightly), so it starts afresh
        forget_environments("qa", "prod")
        create_canary_pool(self.pool)
        # the GitOps repo: qa keeps the control queue in the control pool and one workload deployment;
        # prod one workload of its own (reconcile-prod is deployed and scheduled too)
        self.workload = f"canary-target/workload-{uid()}"
        self.prod_workload = f"canary-target/workload-prod-{uid()}"
        for workload in (self.workload, self.prod_workload):
            create_canary_deployment(workload.split("/")[1], self.pool)
        self.repo.write("environments/prod.yaml", {
            "deployments": {self.prod_workload: {"job_variables": {"image": "flows:prod-1"}}}})
        self.sha = self.repo.commit_env(self.env, self.qa_file("flows:qa-1"))
        from prefect_gitops.blocks import GitOpsSource

        GitOpsSource(url=self.repo.url, ref="main").save("gitops-source", overwrite=True)

        prefect_file = self.tmp / "prefect.yaml"
        deployable = deployable_prefect_file(prefect_file, self.schedule_interval)
        if not self.schedules_active:
            for deployment in deployable["deployments"]:
                deployment["schedules"] = [{**s, "active": False} for s in deployment.get("schedules") or []]
            prefect_file.write_text(yaml.safe_dump(deployable, sort_keys=False))
        done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all",
                               "--prefect-file", str(prefect_file)], cwd=REPO_ROOT, env=self.env_vars(),
                              capture_output=True, text=True, timeout=300)
        self.deploy_output = done.stdout + done.stderr
        assert done.returncode == 0, self.deploy_output[-4000:]
        self.worker = self._stack.enter_context(
            process_worker(self.pool, self.tmp / "worker.log", cwd=REPO_ROOT, env=self.env_vars()))
        return self

    def qa_file(self, image: str) -> dict:
        return {"rollout": {"control_queue": {"work_pools": [self.pool]}},
                "deployments": {self.workload: {"job_variables": {"image": image}}}}

    def trigger(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        """`prefect-gitops trigger ARGS`, the console script by name, as CI's rollout job runs it."""
        return subprocess.run(["prefect-gitops", "trigger", *args], cwd=REPO_ROOT, env=self.env_vars(),
                              capture_output=True, text=True, timeout=timeout)

    def worker_log(self, chars: int = 3000) -> str:
        """The end of the worker's log, for assertion messages."""
        path = self.tmp / "worker.log"
        return "worker log tail:\n" + (path.read_text()[-chars:] if path.exists() else "<none>")

    def stop(self) -> None:
        self._stack.close()
        # its schedules would go on adding runs that the next module's plane (same deployment names)
        # sees change state; pausing them makes the server drop the pending ones
        from helpers import _with_client, run

        async def pause(client):
            for name in ("gitops-reconcile/reconcile-qa", "gitops-reconcile/reconcile-prod"):
                deployment = await client.read_deployment_by_name(name)
                for schedule in await client.read_deployment_schedules(deployment.id):
                    await client.update_deployment_schedule(deployment.id, schedule.id, active=False)

        run(_with_client(pause))
