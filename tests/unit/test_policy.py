"""The GitOps policy checker (policy.py), table-driven: keys, registries, digests, scopes, and where a
violation is reported (file, line, key) — pure, no server."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from prefect_gitops.errors import ConfigError
from prefect_gitops.loader import parse_environment
from prefect_gitops.plan import ActualState, DeploymentActual, PoolActual
from prefect_gitops.image_ref import normalize as normalize_image, normalize_prefix
from prefect_gitops.policy import Policy, PolicyRules, check_policy

DIGEST = "@sha256:" + "0123456789abcdef" * 4

ACTUAL = ActualState(
    work_pools={"k8s-prod": PoolActual("k8s-prod", "p1", {}), "k8s-batch": PoolActual("k8s-batch", "p2", {})},
    deployments={"etl/daily": DeploymentActual("etl/daily", "d1", "k8s-prod", {}),
                 "etl/batch": DeploymentActual("etl/batch", "d2", "k8s-batch", {})},
)

DENY_SA = {"all_targets": {"denied_keys": ["service_account_name"]}}
HARBOR = {"all_targets": {"allowed_images": ["harbor.corp/team/"]}}
PROD_DIGEST = {"all_targets": {"require_digest_in": ["prod*"]}}
POOL_ONLY = {"work_pools": {"k8s-prod": {"allowed_keys": ["image"]}}}

# name: (policy, environment, file text, expected [(key, message fragment)]; [] = allowed)
CASES: dict[str, tuple[dict, str, str, list[tuple[str, str]]]] = {
    "denied key on a pool": (DENY_SA, "qa", "work_pools:\n  k8s-prod:\n    job_variables:\n      service_account_name: admin\n",
                             [("work_pools.k8s-prod.job_variables.service_account_name", "is denied")]),
    "denied key on a deployment": (DENY_SA, "qa", "deployments:\n  etl/daily:\n    job_variables: {service_account_name: x}\n",
                                   [("deployments.etl/daily.job_variables.service_account_name", "is denied")]),
    "other keys pass a denylist": (DENY_SA, "qa", "work_pools:\n  k8s-prod:\n    job_variables: {namespace: a, image: x}\n", []),
    "key outside an allowlist": ({"all_targets": {"allowed_keys": ["image"]}}, "qa",
                                 "deployments:\n  etl/daily:\n    job_variables: {image: x, namespace: n}\n",
                                 [("deployments.etl/daily.job_variables.namespace", "not among the keys")]),
    "registry allowed": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 'harbor.corp/team/app:1'}\n", []),
    "registry host case and a port-free host": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 'Harbor.Corp/team/app:1'}\n", []),
    "registry not allowed": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 'evil.io/team/app:1'}\n",
                             [("deployments.etl/daily.job_variables.image", "not from a registry the GitOps policy allows")]),
    "docker hub default is not harbor": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 'app:1'}\n",
                                         [("deployments.etl/daily.job_variables.image", "docker.io/library/app:1")]),
    "lookalike repository": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 'harbor.corp/team-evil/app:1'}\n",
                             [("deployments.etl/daily.job_variables.image", "not from a registry")]),
    "lookalike repository, prefix without slash": ({"all_targets": {"allowed_images": ["harbor.corp/team"]}}, "qa",
                                                   "deployments:\n  etl/daily:\n    job_variables: {image: 'harbor.corp/team-evil/app:1'}\n",
                                                   [("deployments.etl/daily.job_variables.image", "not from a registry")]),
    "lookalike host": ({"all_targets": {"allowed_images": ["harbor.corp"]}}, "qa",
                       "deployments:\n  etl/daily:\n    job_variables: {image: 'harbor.corp.evil.com/team/app:1'}\n",
                       [("deployments.etl/daily.job_variables.image", "not from a registry")]),
    "a non-string image": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: 42}\n",
                           [("deployments.etl/daily.job_variables.image", "not an image reference")]),
    "a null image falls back to the worker's": (HARBOR, "qa", "deployments:\n  etl/daily:\n    job_variables: {image: null}\n",
                                                [("deployments.etl/daily.job_variables.image", "not an image reference")]),
    "prod without digest": (PROD_DIGEST, "prod", "work_pools:\n  k8s-prod:\n    job_variables: {image: 'harbor.corp/team/app:1'}\n",
                            [("work_pools.k8s-prod.job_variables.image", "not pinned by digest")]),
    "prod with digest": (PROD_DIGEST, "prod-eu", f"work_pools:\n  k8s-prod:\n    job_variables: {{image: 'harbor.corp/team/app:1{DIGEST}'}}\n", []),
    "qa needs no digest": (PROD_DIGEST, "qa", "work_pools:\n  k8s-prod:\n    job_variables: {image: 'harbor.corp/team/app:1'}\n", []),
    "pool rules reach the pool's deployments": (POOL_ONLY, "qa", "deployments:\n  etl/daily:\n    job_variables: {namespace: n}\n",
                                                [("deployments.etl/daily.job_variables.namespace", "work pool 'k8s-prod'")]),
    "pool rules leave other pools alone": (POOL_ONLY, "qa", "deployments:\n  etl/batch:\n    job_variables: {namespace: n}\n"
                                           "work_pools:\n  k8s-batch:\n    job_variables: {namespace: n}\n", []),
    "pool rules by pattern": ({"work_pools": {"k8s-*": {"denied_keys": ["namespace"]}}}, "qa",
                              "work_pools:\n  k8s-batch:\n    job_variables: {namespace: n}\n",
                              [("work_pools.k8s-batch.job_variables.namespace", "work pools 'k8s-*'")]),
    "both scopes report": ({**DENY_SA, "work_pools": {"k8s-prod": {"denied_keys": ["service_account_name"]}}}, "qa",
                           "work_pools:\n  k8s-prod:\n    job_variables: {service_account_name: a}\n",
                           [("work_pools.k8s-prod.job_variables.service_account_name", "for all targets"),
                            ("work_pools.k8s-prod.job_variables.service_account_name", "for work pool 'k8s-prod'")]),
    "an empty allowlist allows no image": ({"all_targets": {"allowed_images": []}}, "qa",
                                           "work_pools:\n  k8s-prod:\n    job_variables: {image: 'harbor.corp/team/a:1'}\n",
                                           [("work_pools.k8s-prod.job_variables.image", "(none)")]),
    "no rules: anything goes": ({}, "prod", "work_pools:\n  k8s-prod:\n    job_variables: {image: 'x', service_account_name: a}\n", []),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_policy_cases(case):
    policy_fields, environment, text, expected = CASES[case]
    loaded = parse_environment(text, file=f"environments/{environment}.yaml", name=environment)
    problems = check_policy(Policy(name="p", **policy_fields), environment, loaded.spec, ACTUAL)
    found = [loaded.problem(p.path, p.message) for p in problems]
    assert [p.key for p in found] == [key for key, _ in expected], found
    for problem, (_, fragment) in zip(found, expected):
        assert fragment in problem.message and "policy block 'p'" in problem.message, problem
        assert problem.file == f"environments/{environment}.yaml"
        assert problem.line == text.count("\n", 0, text.index(problem.key.split(".")[-1] + ":")) + 1, problem


def test_references_outside_the_grammar_never_reach_the_policy():
    # path traversal and short digests are refused by the loader (image_ref), before any policy runs
    for image in ("harbor.corp/team/../x/app:1", "a/b@sha256:abc"):
        with pytest.raises(ConfigError, match="job_variables.image"):
            parse_environment(f"work_pools:\n  k8s-prod:\n    job_variables: {{image: '{image}'}}\n",
                              file="environments/prod.yaml", name="prod")
    assert normalize_image("harbor.corp/team/../x/app:1") is None and normalize_image("a/b@sha256:abc") is None


def test_no_policy_checks_nothing():
    loaded = parse_environment("work_pools:\n  k8s-prod:\n    job_variables: {service_account_name: a}\n",
                               file="f.yaml", name="prod")
    assert check_policy(None, "prod", loaded.spec, ACTUAL) == []


@pytest.mark.parametrize("reference, normalized", [
    ("nginx", "docker.io/library/nginx"),
    ("nginx:1.25", "docker.io/library/nginx:1.25"),
    ("team/app:1", "docker.io/team/app:1"),
    ("index.docker.io/team/app", "docker.io/team/app"),
    ("Harbor.Corp:5000/team/app:1", "harbor.corp:5000/team/app:1"),
    ("localhost/app", "localhost/app"),
    (f"harbor.corp/team/app:1{DIGEST}", f"harbor.corp/team/app:1{DIGEST}"),
    ("harbor.corp/Team/app", None),  # repository paths are lowercase
    ("harbor.corp/team//app", None),
    ("harbor.corp/team/app:", None),
    ("harbor.corp/team/app@sha256:xyz", None),
    ("app:1 ; rm -rf /", None),
    ("", None),
])
def test_normalize_image(reference, normalized):
    assert normalize_image(reference) == normalized


@pytest.mark.parametrize("prefix, normalized", [
    ("harbor.corp/team/", "harbor.corp/team/"),
    ("HARBOR.corp/team", "harbor.corp/team"),
    ("registry-1.docker.io/library/", "docker.io/library/"),
    ("library/", "docker.io/library/"),
])
def test_normalize_prefix(prefix, normalized):
    assert normalize_prefix(prefix) == normalized


def test_rules_take_an_allowlist_or_a_denylist_not_both():
    with pytest.raises(ValidationError, match="not both"):
        PolicyRules(allowed_keys=["image"], denied_keys=["namespace"])
    with pytest.raises(ValidationError, match="must not be empty"):
        PolicyRules(allowed_images=[" "])
