"""The fake Kubernetes API server, driven by the real prefect-kubernetes and kubernetes_asyncio over HTTP."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.client.models import V1DeleteOptions
from prefect_kubernetes import jobs as pk_jobs
from prefect_kubernetes import pods as pk_pods
from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials
from prefect_kubernetes.jobs import KubernetesJob

from fake_k8s import FakeKubernetes, RbacRequest, rbac_request

# Waits are on conditions (a Job's final state, a pod's state); HANG only stops a test that would
# otherwise wait for ever, it is not a speed target (the fake is not timed here).
HANG = 120.0


@pytest.fixture
def k8s(tmp_path):
    with FakeKubernetes(tmp_path) as fake:
        yield fake


def credentials(k8s: FakeKubernetes) -> KubernetesCredentials:
    return KubernetesCredentials(
        cluster_config=KubernetesClusterConfig(config=k8s.kubeconfig_dict, context_name="fake"))


def manifest(name: str | None, command: list[str], *, image: str = "python:3.11-slim",
             env: dict[str, str] | None = None, deadline: int | None = None,
             generate_name: str | None = None) -> dict:
    metadata = {"name": name} if name else {"generateName": generate_name}
    container = {"name": "main", "image": image, "command": command}
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in env.items()]
    spec: dict = {"backoffLimit": 0,
                  "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}
    if deadline is not None:
        spec["activeDeadlineSeconds"] = deadline
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}


def k8s_job(k8s: FakeKubernetes, v1_job: dict, **kwargs) -> KubernetesJob:
    return KubernetesJob(v1_job=v1_job, credentials=credentials(k8s), interval_seconds=1, **kwargs)


def test_passing_job_completes_with_its_log_and_is_deleted(k8s):
    async def scenario():
        job = k8s_job(k8s, manifest("hello-job", ["python3", "-c", "print('hello')"], env={"GREETING": "x"}))
        run = await job.atrigger()
        # the fake set status.active before answering the create call
        assert k8s.jobs["hello-job"]["status"]["active"] == 1
        await asyncio.wait_for(run.await_for_completion(), HANG)
        return run, await run.afetch_result()

    run, logs = asyncio.run(scenario())
    [(pod_name, log)] = logs.items()
    assert pod_name.startswith("hello-job-") and len(pod_name) == len("hello-job-") + 5
    assert "hello" in log
    assert k8s.deleted_jobs == ["hello-job"] and "hello-job" not in k8s.jobs
    assert k8s.pods == {}  # Foreground deletion removed the pod
    [created] = k8s.created_jobs
    assert created["name"] == "hello-job" and created["image"] == "python:3.11-slim"
    assert k8s.max_running == 1
    assert ("DELETE", "/apis/batch/v1/namespaces/default/jobs/hello-job") in k8s.requests
    delete = next(r for r in k8s.request_log if r["method"] == "DELETE")
    assert delete["body"]["propagationPolicy"] == "Foreground"
    assert k8s.unhandled == []


def test_failing_job_raises_and_keeps_the_pod_log(k8s):
    script = "import sys; print('about to fail', flush=True); sys.exit(3)"

    async def scenario():
        job = k8s_job(k8s, manifest("failing-job", ["python3", "-c", script]))
        run = await job.atrigger()
        with pytest.raises(RuntimeError, match="BackoffLimitExceeded"):
            await asyncio.wait_for(run.await_for_completion(), HANG)
        return run

    run = asyncio.run(scenario())
    assert any("about to fail" in log for log in run.pod_logs.values())
    job = k8s.jobs["failing-job"]  # not deleted: prefect only deletes completed jobs
    assert job["status"]["failed"] == 1 and "active" not in job["status"]
    assert job["status"]["conditions"][0]["type"] == "Failed"
    [pod] = k8s.pods_of("failing-job")
    assert pod["status"]["phase"] == "Failed"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert k8s.unhandled == []


def test_active_deadline_kills_the_process(tmp_path):
    # the process starts as soon as the Job exists and would run for an hour: only the deadline ends it
    with FakeKubernetes(tmp_path, kubelet_delay=0) as k8s:
        async def scenario():
            job = k8s_job(k8s, manifest("slow-job", ["sh", "-c", "echo started; exec sleep 3600"], deadline=2))
            run = await job.atrigger()
            with pytest.raises(RuntimeError, match="DeadlineExceeded"):
                await asyncio.wait_for(run.await_for_completion(), HANG)
            return run

        asyncio.run(scenario())
        job = k8s.jobs["slow-job"]
        assert job["status"]["conditions"] == [
            {**job["status"]["conditions"][0], "type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]
        [pod] = k8s.pods_of("slow-job")
        assert pod["status"]["phase"] == "Failed" and pod["status"]["reason"] == "DeadlineExceeded"
        # killed while it slept (SIGKILL: exit 137), not ended by itself
        terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (terminated["reason"], terminated["exitCode"]) == ("DeadlineExceeded", 137)
        assert k8s.pod_log(pod["metadata"]["name"]).splitlines() == ["started"]
        assert k8s.running_count() == 0
        assert k8s.unhandled == []


def test_creating_the_same_name_twice_is_a_409(k8s):
    creds = credentials(k8s)
    body = manifest("twice", ["true"])

    async def scenario():
        first = await pk_jobs.create_namespaced_job.fn(kubernetes_credentials=creds, new_job=body)
        assert first.metadata.name == "twice" and first.metadata.uid
        assert first.spec.selector.match_labels == {"controller-uid": first.metadata.uid}
        assert first.spec.template.metadata.labels["controller-uid"] == first.metadata.uid
        assert first.metadata.labels["batch.kubernetes.io/job-name"] == "twice"
        with pytest.raises(ApiException) as raised:
            await pk_jobs.create_namespaced_job.fn(kubernetes_credentials=creds, new_job=body)
        return raised.value

    error = asyncio.run(scenario())
    assert error.status == 409
    status = json.loads(error.body)
    assert (status["kind"], status["reason"], status["code"]) == ("Status", "AlreadyExists", 409)
    assert len(k8s.created_jobs) == 1
    assert k8s.unhandled == []


def test_generate_name_through_raw_kubernetes_asyncio(k8s):
    async def scenario():
        configuration = k8s_client.Configuration()
        await k8s_config.load_kube_config(config_file=str(k8s.kubeconfig_path), context="fake",
                                          client_configuration=configuration)
        async with k8s_client.ApiClient(configuration) as api:
            batch, core = k8s_client.BatchV1Api(api), k8s_client.CoreV1Api(api)
            body = k8s_client.V1Job(
                metadata=k8s_client.V1ObjectMeta(generate_name="gen-"),
                spec=k8s_client.V1JobSpec(template=k8s_client.V1PodTemplateSpec(spec=k8s_client.V1PodSpec(
                    restart_policy="Never",
                    containers=[k8s_client.V1Container(name="c", image="busybox", command=["true"])]))))
            created = await batch.create_namespaced_job("default", body)
            name = created.metadata.name
            read = await batch.read_namespaced_job_status(name, "default")
            listed = await batch.list_namespaced_job("default")
            pods = await core.list_namespaced_pod("default", label_selector=f"job-name={name}")
            with pytest.raises(ApiException) as missing:
                await batch.read_namespaced_job("nope", "default")
            return created, read, listed, pods, missing.value

    created, read, listed, pods, missing = asyncio.run(scenario())
    name = created.metadata.name
    assert name.startswith("gen-") and len(name) == len("gen-") + 5 and name[4:].isalpha()
    assert read.metadata.uid == created.metadata.uid and read.status.start_time is not None
    assert [j.metadata.name for j in listed.items] == [name]
    assert [p.metadata.labels["job-name"] for p in pods.items] == [name]
    assert missing.status == 404 and json.loads(missing.body)["reason"] == "NotFound"
    k8s.wait_for_job_finished(name, timeout=HANG)
    assert k8s.unhandled == []


async def _until_waiting_reason(creds: KubernetesCredentials, job_name: str, reason: str):
    """Read the Job's pod through prefect-kubernetes until its container waits with `reason`."""
    deadline = asyncio.get_running_loop().time() + HANG
    seen = []
    while True:
        pods = await pk_pods.list_namespaced_pod.fn(kubernetes_credentials=creds, label_selector=f"job-name={job_name}")
        [pod] = pods.items
        waiting = pod.status.container_statuses[0].state.waiting
        seen.append(waiting.reason if waiting else None)
        if seen[-1] == reason:
            return pod
        assert asyncio.get_running_loop().time() < deadline, f"no {reason} for {job_name}: {seen}"
        await asyncio.sleep(0.1)


def test_unpullable_image_stays_pending_then_hits_the_deadline(k8s, tmp_path):
    k8s.unpullable_images.add("registry.invalid/missing")
    creds = credentials(k8s)

    # ErrImagePull, then ImagePullBackOff after image_pull_backoff_after; Pending all along
    async def backing_off():
        await pk_jobs.create_namespaced_job.fn(kubernetes_credentials=creds, new_job=manifest(
            "backoff-job", ["true"], image="registry.invalid/missing:1.0"))
        first = await _until_waiting_reason(creds, "backoff-job", "ErrImagePull")
        later = await _until_waiting_reason(creds, "backoff-job", "ImagePullBackOff")
        return first, later

    # the pull's first state is ErrImagePull whatever the machine's speed: a fake that never backs off
    # keeps it there. Its deadline ends the Job; the pod stays Pending, as on a real cluster
    with FakeKubernetes(tmp_path / "no-backoff", kubelet_delay=0, image_pull_backoff_after=3600) as no_backoff:
        no_backoff.unpullable_images.add("registry.invalid/missing")

        async def hitting_the_deadline():
            job = k8s_job(no_backoff, manifest("pull-job", ["true"], image="registry.invalid/missing:1.0", deadline=2))
            run = await job.atrigger()
            pod = await _until_waiting_reason(credentials(no_backoff), "pull-job", "ErrImagePull")
            with pytest.raises(RuntimeError, match="DeadlineExceeded"):
                await asyncio.wait_for(run.await_for_completion(), HANG)
            return pod, run

        first, later = asyncio.run(backing_off())
        pod, run = asyncio.run(hitting_the_deadline())
        assert (first.status.phase, later.status.phase, pod.status.phase) == ("Pending", "Pending", "Pending")
        assert run.pod_logs == {}  # prefect never reads the log of a Pending pod
        [pod] = no_backoff.pods_of("pull-job")
        assert pod["status"]["phase"] == "Pending"
        assert pod["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImagePull"
        assert no_backoff.jobs["pull-job"]["status"]["conditions"][0]["reason"] == "DeadlineExceeded"
        assert no_backoff.unhandled == []
    [pod] = k8s.pods_of("backoff-job")
    assert pod["status"]["phase"] == "Pending" and "conditions" not in k8s.jobs["backoff-job"]["status"]
    assert k8s.unhandled == []


def test_streaming_logs_with_follow(k8s):
    script = "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)\n"
    lines: list[str] = []

    async def scenario():
        job = k8s_job(k8s, manifest("stream-job", ["python3", "-c", script]))
        run = await job.atrigger()
        await asyncio.wait_for(run.await_for_completion(print_func=lines.append), HANG)
        return await run.afetch_result()

    logs = asyncio.run(scenario())
    assert [line.strip() for line in lines] == ["line 0", "line 1", "line 2"]
    assert list(logs.values())[0].splitlines() == ["line 0", "line 1", "line 2"]
    follow = [r for r in k8s.request_log if r["path"].endswith("/log") and r["query"].get("follow")]
    assert follow and follow[0]["query"]["container"] == "main"
    assert k8s.unhandled == []


def test_delete_running_job_kills_it_and_max_running(k8s):
    creds = credentials(k8s)

    async def scenario():
        for i in range(3):
            await pk_jobs.create_namespaced_job.fn(
                kubernetes_credentials=creds, new_job=manifest(f"sleeper-{i}", ["sleep", "3600"]))
        k8s.wait_for(lambda: len(k8s.pods) == 3 and all(p["status"]["phase"] == "Running" for p in k8s.pods.values()),
                     HANG)
        deleted = await pk_jobs.delete_namespaced_job.fn(
            kubernetes_credentials=creds, job_name="sleeper-0",
            delete_options=V1DeleteOptions(propagation_policy="Background"))
        orphaned = await pk_jobs.delete_namespaced_job.fn(
            kubernetes_credentials=creds, job_name="sleeper-1",
            delete_options=V1DeleteOptions(propagation_policy="Orphan"))
        with pytest.raises(ApiException) as missing:
            await pk_jobs.delete_namespaced_job.fn(kubernetes_credentials=creds, job_name="sleeper-0",
                                                   delete_options=V1DeleteOptions(propagation_policy="Background"))
        listed = await pk_jobs.list_namespaced_job.fn(kubernetes_credentials=creds)
        return deleted, orphaned, missing.value, listed

    deleted, orphaned, missing, listed = asyncio.run(scenario())
    assert missing.status == 404
    assert [j.metadata.name for j in listed.items] == ["sleeper-2"]
    assert k8s.deleted_jobs == ["sleeper-0", "sleeper-1"]
    assert k8s.max_running == 3 and k8s.running_count() == 1
    assert k8s.pods_of("sleeper-0") == []
    [orphan] = [p for p in k8s.pods.values() if p["metadata"]["labels"]["job-name"] == "sleeper-1"]
    k8s.wait_for(lambda: k8s.pods[orphan["metadata"]["name"]]["status"]["phase"] == "Failed", HANG)
    assert k8s.unhandled == []


def test_env_values_reach_the_process(k8s):
    creds = credentials(k8s)
    script = "import os; print(os.environ['GREETING'], os.environ['HOSTNAME'])"

    async def scenario():
        await pk_jobs.create_namespaced_job.fn(kubernetes_credentials=creds,
                                               new_job=manifest("env-job", ["python3", "-c", script],
                                                                env={"GREETING": "bonjour"}))
        k8s.wait_for_job_finished("env-job", timeout=HANG)
        [pod] = k8s.pods_of("env-job")
        return await pk_pods.read_namespaced_pod_log.fn(kubernetes_credentials=creds,
                                                        pod_name=pod["metadata"]["name"], container="main")

    log = asyncio.run(scenario())
    assert log.split() == ["bonjour", k8s.pods_of("env-job")[0]["metadata"]["name"]]
    assert k8s.jobs["env-job"]["status"]["succeeded"] == 1
    assert k8s.unhandled == []


def test_invalid_manifest_is_422_and_unknown_calls_are_recorded(k8s):
    creds = credentials(k8s)
    bad = manifest("no-restart-policy", ["true"])
    del bad["spec"]["template"]["spec"]["restartPolicy"]

    async def scenario():
        with pytest.raises(ApiException) as invalid:
            await pk_jobs.create_namespaced_job.fn(kubernetes_credentials=creds, new_job=bad)
        with pytest.raises(ApiException) as unknown:
            async with creds.get_client("core") as core:
                await core.list_namespace()
        return invalid.value, unknown.value

    invalid, unknown = asyncio.run(scenario())
    assert invalid.status == 422 and json.loads(invalid.body)["reason"] == "Invalid"
    assert unknown.status == 404
    assert k8s.unhandled == [("GET", "/api/v1/namespaces")]
    k8s.unhandled.clear()
    assert k8s.unhandled == []


def test_plain_sync_http_client(k8s):
    with urllib.request.urlopen(f"{k8s.url}/apis/batch/v1/namespaces/default/jobs") as answer:
        assert answer.status == 200
        listing = json.load(answer)
    assert (listing["apiVersion"], listing["kind"], listing["items"]) == ("batch/v1", "JobList", [])
    assert "resourceVersion" in listing["metadata"]
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"{k8s.url}/apis/batch/v1/namespaces/default/jobs/none")
    assert missing.value.code == 404
    assert json.load(missing.value)["reason"] == "NotFound"
    assert k8s.unhandled == []


@pytest.mark.parametrize("method, path, query, expected", [
    ("POST", "/apis/batch/v1/namespaces/smoke/jobs", {}, ("create", "batch", "jobs", "", "smoke")),
    ("GET", "/apis/batch/v1/namespaces/smoke/jobs", {}, ("list", "batch", "jobs", "", "smoke")),
    ("GET", "/apis/batch/v1/namespaces/smoke/jobs", {"watch": "true"}, ("watch", "batch", "jobs", "", "smoke")),
    ("GET", "/apis/batch/v1/namespaces/smoke/jobs/j1", {}, ("get", "batch", "jobs", "", "smoke")),
    ("GET", "/apis/batch/v1/namespaces/smoke/jobs/j1/status", {}, ("get", "batch", "jobs", "status", "smoke")),
    ("DELETE", "/apis/batch/v1/namespaces/smoke/jobs/j1", {}, ("delete", "batch", "jobs", "", "smoke")),
    ("DELETE", "/apis/batch/v1/namespaces/smoke/jobs", {}, ("deletecollection", "batch", "jobs", "", "smoke")),
    ("PATCH", "/apis/batch/v1/namespaces/smoke/jobs/j1", {}, ("patch", "batch", "jobs", "", "smoke")),
    ("GET", "/api/v1/namespaces/smoke/pods", {"labelSelector": "a=b"}, ("list", "", "pods", "", "smoke")),
    ("GET", "/api/v1/namespaces/smoke/pods/p1/log", {"follow": "true"}, ("get", "", "pods", "log", "smoke")),
    ("GET", "/api/v1/pods", {}, ("list", "", "pods", "", "")),  # all namespaces: a Role cannot grant it
    ("GET", "/apis/batch/v1/jobs", {"watch": "1"}, ("watch", "batch", "jobs", "", "")),
    ("GET", "/version", {}, None),
])
def test_requests_as_rbac_sees_them(method, path, query, expected):
    assert rbac_request(method, path, query) == (RbacRequest(*expected) if expected else None)


def test_the_fake_records_what_rbac_would_authorize(k8s):
    request = urllib.request.Request(f"{k8s.url}/api/v1/namespaces/smoke/pods?watch=false", method="GET")
    with urllib.request.urlopen(request) as answer:
        assert answer.status == 200
    assert k8s.rbac_requests == {RbacRequest("list", "", "pods", "", "smoke")}
    assert RbacRequest("get", "", "pods", "log", "smoke").rule_resource == "pods/log"
