"""deploy/: the kustomize layout, the Role the smoke gate needs, the Helm values and the base job template.

Checked without a cluster, kustomize or helm (none is packaged here):
  * `build()` below is a small kustomize: it follows `resources` (files and bases), applies `patches`
    (strategic merge of a whole object: maps merge, lists are replaced, as for the ConfigMap data the
    overlays patch) and `labels`. It refuses any kustomization field it does not implement, a
    resource path that does not exist, a patch that matches no object of its base (or more than one)
    and two objects with the same identity, so a layout it accepts is one kustomize builds the same way;
  * every object of every build validates, strictly (unknown fields refused), against the Kubernetes
    OpenAPI schemas that kubernetes-validate bundles, for the versions the README names;
  * the Role grants exactly what the smoke gate's requests to the fake API server need;
  * the Helm values validate against the prefect-worker chart's values.schema.json (vendored in
    tests/vendor/prefect-worker/ with its source and version).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from fake_k8s import FakeKubernetes, RbacRequest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUSTOMIZE = DEPLOY / "kubernetes"
BUILDS = ["base", "overlays/qa", "overlays/prod"]
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
TEMPLATE = DEPLOY / "base-job-template.json"
CHART = ROOT / "tests" / "vendor" / "prefect-worker"
# The README's supported range: the oldest Kubernetes release it names and the newest bundled schema
KUBERNETES_VERSIONS = ["1.34.0", "1.37.0"]

KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "patches", "labels"}  # what build() implements


# ---------------------------------------------------------------- a small kustomize


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _identity(obj: dict) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return obj["apiVersion"], obj["kind"], meta.get("namespace", ""), meta["name"]


def _merge(base: Any, patch: Any) -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(patch)


def build(directory: Path, used: set[Path] | None = None) -> list[dict]:
    """The objects `kustomize build directory` gives, for the features listed in the module's doc.
    `used` collects every file the build read (to find files no kustomization refers to)."""
    used = set() if used is None else used
    kustomization_file = directory / "kustomization.yaml"
    assert kustomization_file.is_file(), f"{directory} has no kustomization.yaml"
    used.add(kustomization_file.resolve())
    kustomization = yaml.safe_load(kustomization_file.read_text())
    unknown = set(kustomization) - KUSTOMIZATION_FIELDS
    assert not unknown, f"{kustomization_file}: fields this checker does not implement: {sorted(unknown)}"
    objects: list[dict] = []
    for entry in kustomization.get("resources", []):
        path = (directory / entry).resolve()
        assert path.exists(), f"{kustomization_file}: resource {entry} does not exist"
        if path.is_dir():
            objects += build(path, used)
        else:
            used.add(path)
            objects += _load_all(path)
    for patch in kustomization.get("patches", []):
        assert set(patch) == {"path"}, f"{kustomization_file}: only whole-object patches are checked: {patch}"
        path = (directory / patch["path"]).resolve()
        assert path.is_file(), f"{kustomization_file}: patch {patch['path']} does not exist"
        used.add(path)
        body = yaml.safe_load(path.read_text())
        targets = [i for i, obj in enumerate(objects) if _identity(obj) == _identity(body)]
        assert len(targets) == 1, (f"{kustomization_file}: patch {patch['path']} ({_identity(body)}) "
                                   f"matches {len(targets)} objects of its resources, not one")
        objects[targets[0]] = _merge(objects[targets[0]], body)
    for label in kustomization.get("labels", []):
        assert set(label) <= {"pairs", "includeSelectors"} and label.get("includeSelectors") is False, label
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    identities = [_identity(obj) for obj in objects]
    duplicates = {i for i in identities if identities.count(i) > 1}
    assert not duplicates, f"{kustomization_file}: objects defined twice: {duplicates}"
    return objects


def find(objects: list[dict], kind: str, name: str, namespace: str | None = None) -> dict:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name
             and (namespace is None or o["metadata"].get("namespace") == namespace)]
    assert len(found) == 1, f"no single {kind} {namespace}/{name} in the build"
    return found[0]


@pytest.fixture(scope="module")
def builds() -> dict[str, list[dict]]:
    return {name: build(KUSTOMIZE / name) for name in BUILDS}


def test_every_file_under_deploy_kubernetes_is_part_of_a_build():
    used: set[Path] = set()
    for name in BUILDS:
        build(KUSTOMIZE / name, used)
    files = {p.resolve() for p in KUSTOMIZE.rglob("*") if p.is_file()}
    assert files - used == set(), "files no kustomization refers to (never applied)"


def test_the_checker_refuses_a_patch_of_nothing_and_a_missing_resource(tmp_path):
    overlay = tmp_path / "overlays" / "staging"
    overlay.mkdir(parents=True)
    (tmp_path / "base").symlink_to(KUSTOMIZE / "base")
    (overlay / "settings.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prefect-gitops-setings", "namespace": "prefect-gitops"},
        "data": {"PREFECT_LOGGING_LEVEL": "DEBUG"}}))
    kustomization = {"resources": ["../../base"], "patches": [{"path": "settings.yaml"}]}
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(AssertionError, match="matches 0 objects"):
        build(overlay)
    kustomization["resources"].append("quota.yaml")
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    with pytest.raises(AssertionError, match="quota.yaml does not exist"):
        build(overlay)


def test_the_overlays_patch_and_label_their_base(builds):
    def settings(name):
        return find(builds[name], "ConfigMap", "prefect-gitops-settings", "prefect-gitops")["data"]

    for env in ("qa", "prod"):
        assert {o["metadata"]["labels"]["prefect-gitops/environment"] for o in builds[f"overlays/{env}"]} == {env}
        assert len(builds[f"overlays/{env}"]) >= len(builds["base"])
    # a patch merges into the base's ConfigMap: what it sets wins, the rest stays
    assert settings("overlays/qa") == {**settings("base"), "PREFECT_LOGGING_LEVEL": "DEBUG",
                                       "PREFECT_UI_URL": "https://prefect-qa.example.com"}
    assert settings("overlays/prod")["PREFECT_CLIENT_MAX_RETRIES"] == settings("base")["PREFECT_CLIENT_MAX_RETRIES"]
    find(builds["overlays/prod"], "ResourceQuota", "prefect-gitops-smoke", "prefect-gitops-smoke")


# ---------------------------------------------------------------- Kubernetes schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", BUILDS)
def test_every_object_validates_against_the_kubernetes_schemas(builds, name, version):
    for obj in builds[name]:
        kubernetes_validate.validate(obj, version, strict=True)


def test_strict_validation_refuses_an_unknown_field():
    role = yaml.safe_load((KUSTOMIZE / "base" / "role.yaml").read_text())
    role["rules"][0]["verb"] = role["rules"][0].pop("verbs")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(role, KUBERNETES_VERSIONS[0], strict=True)


# ---------------------------------------------------------------- references between the parts


def _template() -> dict:
    return json.loads(TEMPLATE.read_text())


def _template_default(name: str) -> Any:
    return _template()["variables"]["properties"][name]["default"]


def test_no_secret_is_committed_and_each_referenced_one_has_its_create_command(builds):
    instructions = (KUSTOMIZE / "base" / "kustomization.yaml").read_text()
    for name, objects in builds.items():
        assert not [o for o in objects if o["kind"] == "Secret"], f"{name} commits a Secret"
        for account in (o for o in objects if o["kind"] == "ServiceAccount"):
            namespace = account["metadata"]["namespace"]
            for secret in account.get("imagePullSecrets", []):
                assert re.search(rf"kubectl -n {namespace} create secret docker-registry {secret['name']} ", instructions), \
                    f"the base's comments do not say how to create {namespace}/{secret['name']}"


def test_the_role_binding_and_the_control_flows_pods_refer_to_objects_of_the_build(builds):
    objects = builds["base"]
    binding = find(objects, "RoleBinding", "prefect-gitops-smoke-gate")
    role = find(objects, "Role", binding["roleRef"]["name"], binding["metadata"]["namespace"])
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    [subject] = binding["subjects"]
    # the control flows' pods run as the bound account, in its namespace, with the build's settings
    assert (subject["namespace"], subject["name"]) == (_template_default("namespace"), _template_default("service_account_name"))
    find(objects, "ServiceAccount", subject["name"], subject["namespace"])
    find(objects, "Namespace", subject["namespace"])
    find(objects, "Namespace", role["metadata"]["namespace"])
    pod = _template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    [source] = pod["containers"][0]["envFrom"]
    find(objects, "ConfigMap", source["configMapRef"]["name"], _template_default("namespace"))


def test_the_smoke_test_section_runs_its_jobs_where_the_manifests_allow(builds):
    """deploy/smoke-test.yaml, as the loader reads it, gives Jobs the smoke gate may create (the Role's
    namespace), run as an account of the build, that prod's quota admits and the API server accepts."""
    from prefect_gitops.adapters.kubernetes import job_manifest
    from prefect_gitops.loader import parse_environment
    from prefect_gitops.smoke import ResolvedSmoke, SmokeTest

    section = parse_environment((DEPLOY / "smoke-test.yaml").read_text(), "environments/prod.yaml", "prod").spec.smoke_test
    policy = ResolvedSmoke.model_validate(section.model_dump(exclude_unset=True, exclude={"gate", "post_apply"}))
    job = job_manifest(SmokeTest(kind="kubernetes", image="registry.example.com/flows:2.0.0", policy=policy), "prod")
    objects = builds["overlays/prod"]
    role = find(objects, "Role", "prefect-gitops-smoke-gate")
    assert job["metadata"]["namespace"] == role["metadata"]["namespace"]
    pod = job["spec"]["template"]["spec"]
    runner = find(objects, "ServiceAccount", pod["serviceAccountName"], role["metadata"]["namespace"])
    assert runner["automountServiceAccountToken"] is False  # the image under test gets no API token
    assert pod["imagePullSecrets"] == runner["imagePullSecrets"]
    quota = find(objects, "ResourceQuota", "prefect-gitops-smoke")["spec"]["hard"]
    resources = pod["containers"][0]["resources"]
    for key in (k for k in quota if k.startswith(("requests.", "limits."))):
        kind, _, resource = key.partition(".")
        assert resource in resources[kind], f"prod's quota refuses a smoke pod without {key}"
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)


# ---------------------------------------------------------------- the Role: exactly what the smoke gate uses


def _granted(role: dict) -> set[tuple[str, str, str]]:
    granted = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"no resourceNames or nonResourceURLs: {rule}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"a wildcard grants more than the gate uses: {rule}"
                    granted.add((group, resource, verb))
    return granted


def _needed(requests: set[RbacRequest]) -> set[tuple[str, str, str]]:
    return {(r.api_group, r.rule_resource, r.verb) for r in requests}


def _run_the_smoke_gate(k8s: FakeKubernetes, namespace: str) -> None:
    """The gate's Kubernetes test as a reconcile runs it, on its three ways to end (at once, to save
    time): passed, failed (then it reads the Job to tell a failure from a deadline), timeout."""
    from prefect_gitops.adapters.kubernetes import run_kubernetes_test
    from prefect_gitops.smoke import ResolvedSmoke, SmokeTest

    expected = {"print('ok')": "passed", "import sys; sys.exit(3)": "failed", "import time; time.sleep(60)": "timeout"}

    async def one(code: str, outcome: str) -> str:
        policy = ResolvedSmoke.model_validate({
            "kind": "kubernetes", "timeout_seconds": 1 if outcome == "timeout" else 60,
            "kubernetes": {"command": [sys.executable, "-c", code], "namespace": namespace,
                           "service_account": "prefect-gitops-smoke-runner",
                           "image_pull_secrets": ["prefect-gitops-registry"],
                           "cluster": {"kubeconfig": str(k8s.kubeconfig_path), "context": "fake"}}})
        test = SmokeTest(kind="kubernetes", image=f"registry.example.com/flows:{outcome}", policy=policy,
                         targets=[("deployment", "etl/daily")])
        return (await run_kubernetes_test(test, "qa", logging.getLogger("smoke"), poll_seconds=1)).reason

    async def all_three() -> list[str]:
        return list(await asyncio.gather(*(one(code, outcome) for code, outcome in expected.items())))

    assert asyncio.run(all_three()) == list(expected.values())


def test_the_role_grants_exactly_what_the_smoke_gate_uses(builds, tmp_path):
    role = find(builds["base"], "Role", "prefect-gitops-smoke-gate")
    namespace = role["metadata"]["namespace"]
    with FakeKubernetes(tmp_path / "k8s") as k8s:
        _run_the_smoke_gate(k8s, namespace)
        requests = k8s.rbac_requests
        assert k8s.unhandled == [] and len(k8s.deleted_jobs) == 3
    # a Role reaches one namespace: every request must be in it (no cluster-wide list or watch)
    assert {r.namespace for r in requests} == {namespace}
    assert _granted(role) == _needed(requests)


# ---------------------------------------------------------------- the base job template


def test_the_base_job_template_is_prefect_kubernetes_default_with_our_changes():
    """Derived, not written by hand: a newer prefect-kubernetes default shows up here to re-derive from."""
    from prefect_kubernetes.worker import KubernetesWorker

    expected = KubernetesWorker.get_default_base_job_template()
    defaults = {"namespace": "prefect-gitops", "service_account_name": "prefect-gitops-control",
                "image_pull_policy": "Always", "cpu_request": "100m", "memory_request": "256Mi",
                "cpu_limit": "1", "memory_limit": "1Gi", "finished_job_ttl": 3600}
    for name, value in defaults.items():
        expected["variables"]["properties"][name]["default"] = value
    pod = expected["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    # the settings ConfigMap, and what the prefect-gitops namespace's Pod Security "restricted" requires
    pod["containers"][0]["envFrom"] = [{"configMapRef": {"name": "prefect-gitops-settings"}}]
    pod["containers"][0]["securityContext"] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                              "seccompProfile": {"type": "RuntimeDefault"}}
    assert _template() == expected


def test_the_pods_user_is_the_images_user():
    user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    security = _template()["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["securityContext"]
    assert (str(security["runAsUser"]), str(security["runAsGroup"])) == user.groups()


# ---------------------------------------------------------------- the Helm values


def _values() -> dict:
    return yaml.safe_load(HELM_VALUES.read_text())


def _chart_schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def _undeclared(values: Any, schema: dict, path: str = "") -> list[str]:
    """Keys the schema does not declare (where it allows any, a typo would pass validation)."""
    if not isinstance(values, dict) or "properties" not in schema:
        return []
    missing = []
    for key, value in values.items():
        if key not in schema["properties"]:
            missing.append(f"{path}{key}")
        else:
            missing += _undeclared(value, schema["properties"][key], f"{path}{key}.")
    return missing


def test_the_helm_values_validate_against_the_charts_schema():
    schema = _chart_schema()
    jsonschema.Draft7Validator(schema).validate(_values())  # helm validates values with draft 7
    assert _undeclared(_values(), schema) == []
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate({"worker": {"config": {"workPools": ["x"]}}})


def test_the_helm_values_name_the_vendored_chart_version():
    version = re.search(r"^chart version (\S+) ", (CHART / "SOURCE").read_text(), re.M).group(1)
    assert f"--version {version} " in HELM_VALUES.read_text()
    assert f"/prefect-helm/blob/{version}/charts/prefect-worker/values.schema.json" in (CHART / "SOURCE").read_text()


def test_the_worker_serves_the_control_queue_with_the_base_job_template():
    config = _values()["worker"]["config"]
    prefect_yaml = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert config["type"] == "kubernetes"
    assert config["workQueues"] == [prefect_yaml["definitions"]["control_pool"]["work_queue_name"]]
    assert json.loads(config["baseJobTemplate"]["configuration"]) == _template()
