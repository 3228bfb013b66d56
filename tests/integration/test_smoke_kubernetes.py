"""Smoke-test Jobs through the real prefect-kubernetes and Kubernetes client, against the tests' fake API server."""

from __future__ import annotations

import sys

import pytest

from fake_k8s import FakeKubernetes
from helpers import (
    GitRepo,
    cli_json,
    create_deployment,
    create_pool,
    deployment_job_variables,
    read_artifacts,
    server_snapshot,
    uid,
)


@pytest.fixture
def k8s(tmp_path):
    with FakeKubernetes(tmp_path / "k8s") as fake:
        yield fake


@pytest.fixture
def estate(tmp_path, k8s):
    u = uid()
    env, pool, flow = f"k{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "a", pool)
    create_deployment(flow, "b", pool)
    return dict(env=env, pool=pool, a=f"{flow}/a", b=f"{flow}/b", repo=GitRepo(tmp_path / "gitops"), k8s=k8s)


def policy(k8s, code="print('smoke ok')", **more):
    spec = {"command": [sys.executable, "-c", code], "namespace": "smoke",
            "cluster": {"kubeconfig": str(k8s.kubeconfig_path), "context": "fake"}}
    spec.update(more.pop("kubernetes", {}))
    return {"kind": "kubernetes", "kubernetes": spec, **more}


def doc(e, smoke, a="flows:2.0.0", b=None):
    deployments = {e["a"]: {"job_variables": {"image": a}}}
    if b:
        deployments[e["b"]] = {"job_variables": {"image": b}}
    return {"smoke_test": smoke, "deployments": deployments}


def apply(e, codes=(0,)):
    return cli_json("apply", "--source", e["repo"].url, "--env", e["env"], check_codes=codes)[1]


def test_job_passes_then_applies(estate):
    e, k8s = estate, estate["k8s"]
    e["repo"].commit_env(e["env"], doc(e, policy(k8s, kubernetes={
        "env": {"SMOKE": "1"}, "service_account": "smoke-runner", "image_pull_secrets": ["regcred"],
        "resources": {"limits": {"memory": "128Mi"}}})))
    result = apply(e)
    assert result["applied"] == 1 and result["smoke_tests"][0]["result"] == "passed"
    assert deployment_job_variables(e["a"]) == {"image": "flows:2.0.0"}
    assert len(k8s.created_jobs) == 1
    job = k8s.created_jobs[0]
    assert job["image"] == "flows:2.0.0" and job["namespace"] == "smoke"
    pod = job["manifest"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "smoke-runner" and pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert job["manifest"]["spec"]["backoffLimit"] == 0
    assert job["manifest"]["spec"]["activeDeadlineSeconds"] == 300
    assert k8s.deleted_jobs == [job["name"]] and k8s.unhandled == []


def test_job_exit_3_holds_the_change_back_with_the_log_tail(estate):
    e, k8s = estate, estate["k8s"]
    e["repo"].commit_env(e["env"], doc(e, policy(
        k8s, code="import sys; print('migrations missing: table flows'); sys.exit(3)")))
    before = server_snapshot([e["pool"]], [e["a"]])
    result = apply(e, codes=(1,))
    assert result["applied"] == 0 and result["smoke_tests"][0]["result"] == "failed"
    assert "migrations missing" in result["smoke_tests"][0]["log_tail"]
    assert server_snapshot([e["pool"]], [e["a"]]) == before
    md = read_artifacts(f"gitops-{e['env']}")[0].data
    assert "migrations missing: table flows" in md and "held back" in md
    assert k8s.deleted_jobs == [k8s.created_jobs[0]["name"]]  # failed Jobs are deleted too


def test_job_timeout_holds_back_and_deletes_the_job(estate):
    e, k8s = estate, estate["k8s"]
    e["repo"].commit_env(e["env"], doc(e, policy(k8s, code="import time; time.sleep(60)", timeout_seconds=2)))
    result = apply(e, codes=(1,))
    assert result["smoke_tests"][0]["result"] == "timeout"
    assert deployment_job_variables(e["a"]) == {}
    assert k8s.deleted_jobs == [k8s.created_jobs[0]["name"]]


def test_two_new_images_two_jobs(estate):
    e, k8s = estate, estate["k8s"]
    e["repo"].commit_env(e["env"], doc(e, policy(k8s), a="flows:2.0.0", b="flows:2.1.0"))
    result = apply(e)
    assert result["applied"] == 2
    assert sorted(j["image"] for j in k8s.created_jobs) == ["flows:2.0.0", "flows:2.1.0"]
    # the same image for both deployments is proven once
    e["repo"].commit_env(e["env"], doc(e, policy(k8s), a="flows:3.0.0", b="flows:3.0.0"))
    result = apply(e)
    assert [j["image"] for j in k8s.created_jobs[2:]] == ["flows:3.0.0"]
    assert result["smoke_tests"][0]["targets"] == sorted([e["a"], e["b"]])


def test_unpullable_image_fails_at_the_deadline(estate):
    e, k8s = estate, estate["k8s"]
    k8s.unpullable_images.add("flows:does-not-exist")
    e["repo"].commit_env(e["env"], doc(e, policy(k8s, timeout_seconds=2), a="flows:does-not-exist"))
    result = apply(e, codes=(1,))
    assert result["smoke_tests"][0]["result"] == "timeout"
    assert deployment_job_variables(e["a"]) == {}


def test_credentials_block_and_bad_policy(estate):
    e, k8s = estate, estate["k8s"]
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    block = f"fake-cluster-{uid()}"
    KubernetesCredentials(cluster_config=KubernetesClusterConfig(
        config=k8s.kubeconfig_dict, context_name="fake")).save(block)
    smoke = {"kind": "kubernetes", "kubernetes": {"command": [sys.executable, "-c", "print(1)"],
                                                  "cluster": {"credentials_block": block}}}
    e["repo"].commit_env(e["env"], doc(e, smoke))
    assert apply(e)["applied"] == 1 and len(k8s.created_jobs) == 1

    # refused before any Job starts: unknown field, and two ways to reach a cluster
    bad = {"kind": "kubernetes", "kubernetes": {"comand": ["x"], "namespace": "Not_Valid",
                                                "cluster": {"credentials_block": block, "in_cluster": True}}}
    e["repo"].commit_env(e["env"], doc(e, bad, a="flows:9"))
    result = apply(e, codes=(1,))
    keys = sorted(err["key"] for err in result["errors"])
    assert keys == ["smoke_test.kubernetes.cluster", "smoke_test.kubernetes.comand", "smoke_test.kubernetes.namespace"]
    assert all(err["line"] for err in result["errors"])
    assert len(k8s.created_jobs) == 1
