"""Opt-in: the same smoke Job against a real cluster. Set PREFECT_GITOPS_KUBE_CONTEXT to a kube context to run it."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest

CONTEXT = os.environ.get("PREFECT_GITOPS_KUBE_CONTEXT")
pytestmark = pytest.mark.skipif(
    not CONTEXT, reason="no real cluster here: set PREFECT_GITOPS_KUBE_CONTEXT=<kube context> "
                        "(and optionally PREFECT_GITOPS_KUBE_IMAGE) to run the smoke Job on one")


def test_smoke_job_on_a_real_cluster():
    from prefect_gitops.adapters.kubernetes import run_kubernetes_test
    from prefect_gitops.smoke import ResolvedSmoke, SmokeTest

    kubeconfig = os.environ.get("KUBECONFIG", os.path.expanduser("~/.kube/config"))
    policy = ResolvedSmoke.model_validate({
        "kind": "kubernetes", "timeout_seconds": 180,
        "kubernetes": {"command": ["sh", "-c", "echo smoke-ok"], "namespace": os.environ.get("PREFECT_GITOPS_KUBE_NAMESPACE", "default"),
                       "cluster": {"kubeconfig": kubeconfig, "context": CONTEXT}}})
    test = SmokeTest(kind="kubernetes", image=os.environ.get("PREFECT_GITOPS_KUBE_IMAGE", "busybox:1.36"),
                     policy=policy, targets=[("deployment", "opt-in/real-cluster")])
    result = asyncio.run(run_kubernetes_test(test, "opt-in", logging.getLogger("smoke")))
    assert result.passed, result
    assert "smoke-ok" in result.log_tail
