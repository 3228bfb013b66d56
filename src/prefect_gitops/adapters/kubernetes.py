"""`kubernetes` smoke tests: one batch/v1 Job per image, through prefect-kubernetes.

prefect-kubernetes 0.8.0 notes that shape this module: KubernetesJob needs
metadata.name (no generateName), its own timeout only counts while the Job is
active, and it deletes the Job only after success. So the Job carries
activeDeadlineSeconds, we bound the wait ourselves, and we always delete.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from typing import TYPE_CHECKING, Any

from prefect_gitops.adapters.process import RunLogger, tail
from prefect_gitops.smoke import SmokeResult, SmokeTest

if TYPE_CHECKING:  # for annotations only: the functions below import prefect-kubernetes where they use it
    from prefect_kubernetes.credentials import KubernetesCredentials

MANAGED_BY = {"app.kubernetes.io/managed-by": "prefect-gitops", "app.kubernetes.io/component": "smoke-test"}


def job_manifest(test: SmokeTest, environment: str) -> dict[str, Any]:
    spec = test.policy.kubernetes
    digest = hashlib.sha256(test.image.encode()).hexdigest()[:8]
    name = f"gitops-smoke-{environment[:30]}-{digest}-{secrets.token_hex(2)}"
    labels = {**MANAGED_BY, "prefect-gitops/environment": environment}
    container: dict[str, Any] = {"name": "smoke", "image": test.image}
    if spec.command is not None:
        container["command"] = list(spec.command)
    if spec.args:
        container["args"] = list(spec.args)
    if spec.env:
        container["env"] = [{"name": k, "value": v} for k, v in sorted(spec.env.items())]
    if spec.resources:
        container["resources"] = spec.resources
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if spec.service_account:
        pod_spec["serviceAccountName"] = spec.service_account
    if spec.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in spec.image_pull_secrets]
    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "activeDeadlineSeconds": test.policy.timeout_seconds,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if spec.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": spec.namespace, "labels": labels}, "spec": job_spec}


async def credentials_for(test: SmokeTest) -> KubernetesCredentials:
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    cluster = test.policy.kubernetes.cluster
    if cluster.credentials_block:
        return await KubernetesCredentials.aload(cluster.credentials_block)
    if cluster.kubeconfig:
        config = KubernetesClusterConfig.from_file(cluster.kubeconfig, context_name=cluster.context)
        return KubernetesCredentials(cluster_config=config)
    return KubernetesCredentials()  # in-cluster, else the default kubeconfig


async def run_kubernetes_test(test: SmokeTest, environment: str, logger: RunLogger,
                              poll_seconds: int = 2) -> SmokeResult:
    from kubernetes_asyncio.client.models import V1DeleteOptions
    from prefect_kubernetes.jobs import KubernetesJob, delete_namespaced_job

    manifest = job_manifest(test, environment)
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        credentials = await credentials_for(test)
    except Exception as exc:  # a missing block or kubeconfig is a failed test, not a crash
        return SmokeResult(test.id, False, "error", f"cannot configure the Kubernetes client: {exc}", detail={"job": name})
    job = KubernetesJob(v1_job=manifest, credentials=credentials, namespace=namespace,
                        interval_seconds=poll_seconds, delete_after_completion=False)
    logger.info("smoke test: starting Job %s/%s for %s", namespace, name, test.image)
    run = None
    deadline = test.policy.timeout_seconds + 30  # the Job's activeDeadlineSeconds ends it first
    try:
        run = await job.atrigger()
        await asyncio.wait_for(run.await_for_completion(), timeout=deadline)
        result = SmokeResult(test.id, True, "passed", f"Job {name} completed", detail={"job": name})
    except asyncio.TimeoutError:
        result = SmokeResult(test.id, False, "timeout", f"Job {name} did not finish within {deadline}s",
                             detail={"job": name})
    except RuntimeError as exc:  # prefect-kubernetes: the Job failed
        reason = "timeout" if await _deadline_exceeded(credentials, name, namespace) else "failed"
        result = SmokeResult(test.id, False, reason, str(exc), detail={"job": name})
    except Exception as exc:  # API errors: creating or reading the Job failed
        result = SmokeResult(test.id, False, "error", f"{type(exc).__name__}: {str(exc)[:500]}", detail={"job": name})
    finally:
        if run is not None:
            try:
                await delete_namespaced_job.fn(
                    kubernetes_credentials=credentials, job_name=name, namespace=namespace,
                    delete_options=V1DeleteOptions(propagation_policy="Foreground"))
                logger.info("smoke test: deleted Job %s/%s", namespace, name)
            except Exception as exc:
                logger.warning("smoke test: could not delete Job %s/%s: %s", namespace, name, exc)
    logs = "\n".join(f"[{pod}]\n{text}" for pod, text in (run.pod_logs or {}).items()) if run else ""
    result.log_tail = tail(logs)
    for line in result.log_tail.splitlines():
        logger.info("smoke test %s | %s", name, line)
    return result


async def _deadline_exceeded(credentials: Any, name: str, namespace: str) -> bool:
    """Whether the Job failed because its activeDeadlineSeconds passed (read from its conditions,
    not from the client's message)."""
    from prefect_kubernetes.jobs import read_namespaced_job

    try:
        job = await read_namespaced_job.fn(kubernetes_credentials=credentials, job_name=name, namespace=namespace)
    except Exception:  # the Job is gone or the API is away: say failed, the message tells the rest
        return False
    conditions = (job.status.conditions if job.status else None) or []
    return any(c.reason == "DeadlineExceeded" for c in conditions)
