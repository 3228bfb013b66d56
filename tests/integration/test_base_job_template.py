"""deploy/base-job-template.json on a real server: the README's `prefect work-pool create` accepts it,
and the Job the Kubernetes worker renders for a control flow's run carries the service account, the
pull policy, the resources and the settings, and is a valid batch/v1 Job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import kubernetes_validate

from helpers import _with_client, run, uid

TEMPLATE = Path(__file__).resolve().parents[2] / "deploy" / "base-job-template.json"
IMAGE = "registry.example.com/prefect-gitops:0123abc"


def test_the_control_pools_template_is_accepted_and_renders_the_control_flows_job():
    pool = f"gitops-control-{uid()}"  # Prefect refuses pool names starting with "prefect"
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "work-pool", "create", pool,
                           "--type", "kubernetes", "--base-job-template", str(TEMPLATE)],
                          capture_output=True, text=True, env=os.environ.copy(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr

    async def render(client):
        from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

        work_pool = await client.read_work_pool(pool)
        flow_id = await client.create_flow_from_name("gitops-reconcile")
        # as prefect.yaml deploys a control flow: the control queue, the control image as job variable
        deployment_id = await client.create_deployment(flow_id=flow_id, name=f"reconcile-{pool}", work_pool_name=pool,
                                                       work_queue_name="prefect-gitops", job_variables={"image": IMAGE})
        flow_run = await client.create_flow_run_from_deployment(deployment_id)
        config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
            flow_run, client=client, work_pool=work_pool, worker_name="prefect-gitops-worker")
        return work_pool.base_job_template, config.job_manifest

    stored, job = run(_with_client(render))
    assert stored == json.loads(TEMPLATE.read_text())
    assert job["metadata"]["namespace"] == "prefect-gitops"
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "prefect-gitops-control"
    [container] = pod["containers"]
    assert container["image"] == IMAGE and container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "prefect-gitops-settings"}}]
    # the worker's own settings reach the pod: where the flow run reports
    assert {"name": "PREFECT_API_URL", "value": os.environ["PREFECT_API_URL"]} in container["env"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["ttlSecondsAfterFinished"] == 3600
    # prefect-kubernetes's own check requires parallelism and completions in the pod spec, where the API
    # server drops them with a warning (its fieldValidation default); everything else is strictly valid
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(job, "1.34.0", strict=True)
