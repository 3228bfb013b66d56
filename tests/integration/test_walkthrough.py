"""The README's walkthrough ("From a fresh checkout to a control plane ..."), run as written.

The test takes the bash block after `<!-- walkthrough -->` in README.md and runs it in one bash, in this
checkout, with two changes only: the first line (make the venv and install) is replaced by putting this
test's venv first on PATH, which that line would have made, and port 4200 becomes a free port. The
environment is the machine's without this test session's Prefect settings, so the walkthrough's own
server, home and database are used. Then it checks what the walkthrough promises: the control plane
reconciled qa and prod, the control queue is at priority 1, the reconciles are scheduled (the server
creates their scheduled runs), and the promote deployment knows its repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from control_plane import REPO_ROOT
from prefect_gitops.local_server import free_port


def walkthrough_lines() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    block = re.search(r"<!-- walkthrough -->\n```bash\n(.*?)```", readme, re.S)
    assert block, "README.md has no walkthrough block"
    return block.group(1).splitlines()


def the_script(port: int) -> str:
    lines = walkthrough_lines()
    assert lines[0].startswith("python3 -m venv .venv && .venv/bin/pip install") and "activate" in lines[0]
    venv_bin = Path(sys.executable).parent
    body = [f'export PATH="{venv_bin}:$PATH"  # instead of: {lines[0]}', *lines[1:]]
    script = "\n".join(["set -euo pipefail", *body, 'echo "WALKTHROUGH_HOME=$PREFECT_HOME"'])
    assert script.count("4200") >= 2
    return script.replace("4200", str(port))


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("walkthrough")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(HOME=str(tmp), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    proc = subprocess.Popen(["bash", "-c", the_script(port)], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=600)
        home = Path(re.search(r"^WALKTHROUGH_HOME=(.*)$", output, re.M).group(1)) if proc.returncode == 0 else None
        logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in (home or tmp).glob("*.log"))
        assert proc.returncode == 0, f"the walkthrough failed (exit {proc.returncode}):\n{output[-6000:]}{logs}"
        yield {"api": f"http://127.0.0.1:{port}/api", "home": home, "output": output, "env": env}
    finally:
        # the server and the worker it started in the background are in the walkthrough's process group
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            time.sleep(3)
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def api(walkthrough, method: str, path: str, body: dict | None = None):
    response = httpx.request(method, f"{walkthrough['api']}{path}", json=body, timeout=30)
    response.raise_for_status()
    return response.json()


def git_head(repo: Path) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), "rev-parse", "main"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_walkthrough_reconciles_qa_and_prod(walkthrough):
    out = walkthrough["output"]
    assert out.count("started gitops-reconcile/reconcile-") == 2 and out.count("Completed") >= 2
    head = git_head(walkthrough["home"] / "gitops.git")
    for env, app_env in (("qa", "qa"), ("prod", "prod")):
        state = api(walkthrough, "POST", "/block_documents/filter",
                    {"block_documents": {"name": {"any_": [f"gitops-{env}"]}},
                     "block_types": {"slug": {"any_": ["gitops-environment-state"]}}, "include_secrets": False})
        assert len(state) == 1 and state[0]["data"]["last_applied_revision"] == head, state
        pool = "flows" if env == "qa" else "flows-prod"
        template = api(walkthrough, "GET", f"/work_pools/{pool}")["base_job_template"]
        assert template["variables"]["properties"]["env"]["default"]["APP_ENV"] == app_env


def test_the_control_queue_is_at_priority_1(walkthrough):
    queues = {q["name"]: q for q in api(walkthrough, "POST", "/work_pools/flows/queues/filter", {})}
    assert queues["prefect-gitops"]["priority"] == 1 and queues["default"]["priority"] > 1
    reconcile_qa = api(walkthrough, "GET", "/deployments/name/gitops-reconcile/reconcile-qa")
    assert reconcile_qa["work_queue_name"] == "prefect-gitops"


def test_the_reconciles_are_scheduled(walkthrough):
    for name in ("reconcile-qa", "reconcile-prod"):
        deployment = api(walkthrough, "GET", f"/deployments/name/gitops-reconcile/{name}")
        assert [(s["active"], s["schedule"]["interval"]) for s in deployment["schedules"]] == [(True, 300.0)]
        deadline = time.monotonic() + 60
        while not [run for run in api(walkthrough, "POST", "/flow_runs/filter",
                                      {"deployments": {"id": {"any_": [deployment["id"]]}}})
                   if run["auto_scheduled"]]:
            assert time.monotonic() < deadline, f"the server scheduled no run of {name}"
            time.sleep(1)


def test_the_promote_deployment_knows_its_repository(walkthrough):
    promote = api(walkthrough, "GET", "/deployments/name/gitops-promote/promote")
    assert promote["parameters"] == {"from_environment": "qa", "to_environment": "prod",
                                     "source_block": "gitops-source"}
    # it runs on the worker, clones the block's repository and finds nothing to promote (no images here)
    env = {**walkthrough["env"], "PREFECT_API_URL": walkthrough["api"], "PREFECT_HOME": str(walkthrough["home"]),
           "PATH": f"{Path(sys.executable).parent}:{walkthrough['env']['PATH']}"}
    done = subprocess.run(["prefect-gitops", "trigger", "--env", "prod", "--deployment", "gitops-promote/promote",
                           "--wait", "--timeout", "300"], env=env, capture_output=True, text=True, timeout=360)
    assert done.returncode == 0 and "Completed" in done.stdout, done.stdout + done.stderr
