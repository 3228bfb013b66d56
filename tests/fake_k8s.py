"""A fake Kubernetes API server (batch/v1 Jobs + core/v1 Pods) with a simulated kubelet.

It speaks real HTTP on 127.0.0.1, so any client (kubernetes_asyncio, the sync
`kubernetes` client, urllib, curl) talks to it through a normal kubeconfig::

    with FakeKubernetes(tmp_path) as k8s:
        creds = KubernetesCredentials(cluster_config=KubernetesClusterConfig(
            config=k8s.kubeconfig_dict, context_name="fake"))
        ...
        assert k8s.unhandled == []

What is served (everything else answers a 404 Status and is recorded in `unhandled`):

  POST   /apis/batch/v1/namespaces/{ns}/jobs                 create (201; 409 AlreadyExists; 422 Invalid)
  GET    /apis/batch/v1/namespaces/{ns}/jobs                 list (labelSelector)
  GET    /apis/batch/v1/jobs                                 list, all namespaces
  GET    /apis/batch/v1/namespaces/{ns}/jobs/{name}[/status] read (404 NotFound)
  DELETE /apis/batch/v1/namespaces/{ns}/jobs/{name}          delete (200 with the Job; 404)
  GET    /api/v1/namespaces/{ns}/pods                        list (labelSelector)
  GET    /api/v1/pods                                        list, all namespaces
  GET    /api/v1/namespaces/{ns}/pods/{name}                 read
  GET    /api/v1/namespaces/{ns}/pods/{name}/log             text/plain; follow, tailLines, container

Simulated kubelet, per Job (one attempt: backoffLimit is treated as 0, parallelism/completions as 1):

  * at creation (before the 201): pod `<job>-<5 chars>` in phase Pending, Job status.active=1 + startTime;
  * after `kubelet_delay` (0.2 s): the FIRST container's `command + args` runs as a local subprocess
    (image ignored; env = this process's environment + the container's `env` entries that have a
    `value`, plus HOSTNAME=<pod name>; cwd = `workingDir` if it exists, else a fresh directory
    `<base>/pods/<pod>`), pod Running, stdout+stderr captured into the pod log as produced;
  * exit 0 -> pod Succeeded, Job succeeded=1 + completionTime + condition Complete;
    exit != 0 (or the command cannot be started, exit 128) -> pod Failed, Job failed=1 +
    condition Failed/BackoffLimitExceeded;
  * spec.activeDeadlineSeconds (counted from creation): the process is killed (SIGKILL to its
    process group), pod Failed (reason DeadlineExceeded, exit 137), Job condition Failed/DeadlineExceeded.
    Unlike a real cluster the pod is kept (not deleted) so its log stays readable;
  * images in `unpullable_images` never start: the container waits with reason ErrImagePull, then
    ImagePullBackOff after `image_pull_backoff_after` seconds; the pod stays Pending for ever (also
    after a DeadlineExceeded). Matching: the exact image string, or the image without its tag
    (`repo/app` matches `repo/app:1.0`; digests `@sha256:...` are stripped too);
  * spec.ttlSecondsAfterFinished: the finished Job and its pods are removed after that many seconds
    (recorded in `expired_jobs`, not in `deleted_jobs`).

Deleting a Job kills its process and removes its pods unless the propagation policy is Orphan
(orphaned pods stay, marked Failed with exit code 137). The policy comes from the V1DeleteOptions
body (propagationPolicy, or orphanDependents), or the `propagationPolicy` query parameter; with none
given, batch/v1 Jobs default to Orphan, as on a real API server.

Validation like a real API server (422 Invalid): a name or generateName is required, the name must
be a DNS-1123 label of at most 63 characters, there must be at least one container each with a name
and an image, and spec.template.spec.restartPolicy must be Never or OnFailure.

Generated name suffixes are 5 random lowercase ASCII letters (real Kubernetes uses the alphabet
"bcdfghjklmnpqrstvwxz2456789"). `dryRun` on create is honoured (nothing is stored or started).
"""

from __future__ import annotations

import copy
import json
import os
import random
import re
import signal
import string
import subprocess
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

__all__ = ["FakeKubernetes", "RbacRequest", "rbac_request"]

_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RbacRequest(NamedTuple):
    """What RBAC authorizes a request as: a Role rule grants it when its apiGroups, resources
    (`resource` or `resource/subresource`) and verbs all match, in the Role's namespace."""

    verb: str
    api_group: str  # "" for the core group
    resource: str
    subresource: str  # "" when none
    namespace: str  # "" for a cluster-wide request (e.g. list pods in all namespaces)

    @property
    def rule_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


_RESOURCE_PATH = re.compile(
    r"^/(?:api/(?P<core_version>[^/]+)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$")


def rbac_request(method: str, path: str, query: dict[str, str]) -> RbacRequest | None:
    """The authorizer's view of one resource request, following the API server's RequestInfo rules:
    GET of an item is get, of a collection list, either with watch=true is watch; POST create, PUT
    update, PATCH patch, DELETE of an item delete, of a collection deletecollection. None for
    non-resource paths (/version, /openapi/v2...), which RBAC does not scope to a namespace."""
    match = _RESOURCE_PATH.match(path)
    if match is None:
        return None
    named = match["name"] is not None
    if method in ("GET", "HEAD"):
        verb = "watch" if _truthy(query.get("watch")) else ("get" if named else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())
    return RbacRequest(verb, match["group"] or "", match["resource"], match["sub"] or "", match["ns"] or "")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _suffix() -> str:
    return "".join(random.choices(string.ascii_lowercase, k=5))


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1", "yes")


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class _ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code = code
        self.body = _status(code, reason, message, details)


def _not_found(kind: str, group: str, name: str) -> _ApiError:
    resource = f"{kind}.{group}" if group else kind
    return _ApiError(404, "NotFound", f'{resource} "{name}" not found',
                     {"name": name, "group": group, "kind": kind} if group else {"name": name, "kind": kind})


def _parse_label_selector(selector: str) -> list[tuple[str, str, str | None]]:
    """Equality-based selectors: a=b, a==b, a!=b, a (exists), !a (does not exist)."""
    terms = []
    for raw in filter(None, (part.strip() for part in selector.split(","))):
        if "(" in raw or " in " in raw or " notin " in raw:
            raise ValueError(f"set-based label selectors are not supported by the fake: {raw!r}")
        if "!=" in raw:
            key, value = raw.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "==" in raw:
            key, value = raw.split("==", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif "=" in raw:
            key, value = raw.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif raw.startswith("!"):
            terms.append(("!", raw[1:].strip(), None))
        else:
            terms.append(("exists", raw, None))
    return terms


def _matches(labels: dict | None, terms: list[tuple[str, str, str | None]]) -> bool:
    labels = labels or {}
    for op, key, value in terms:
        if op == "=" and labels.get(key) != value:
            return False
        if op == "!=" and labels.get(key) == value:
            return False
        if op == "exists" and key not in labels:
            return False
        if op == "!" and key in labels:
            return False
    return True


def _image_key(image: str) -> str:
    image = image.split("@", 1)[0]
    slash, colon = image.rfind("/"), image.rfind(":")
    return image[:colon] if colon > slash else image


class _Run:
    """The kubelet's bookkeeping for one Job (one pod, one attempt)."""

    def __init__(self, namespace: str, job_name: str, uid: str, pod_name: str, deadline: float | None):
        self.namespace = namespace
        self.job_name = job_name
        self.uid = uid
        self.pod_name = pod_name
        self.deadline = deadline  # time.monotonic() value, or None
        self.cancel = threading.Event()  # set when the Job is deleted or the server stops
        self.proc: subprocess.Popen | None = None
        self.thread: threading.Thread | None = None


class FakeKubernetes:
    """A fake Kubernetes API server with a simulated kubelet; see the module docstring.

    Args:
        base_dir: where to write `kubeconfig` and the pods' working directories
            (a temporary directory, removed on exit, when None).
        kubelet_delay: seconds between the Job's creation and its process start.
        image_pull_backoff_after: seconds an unpullable image stays in ErrImagePull before
            ImagePullBackOff.
        token: bearer token written to the kubeconfig (not checked).

    Observability (all safe to read from the test thread while the server runs):
        url, port, kubeconfig_path, kubeconfig_dict
        jobs            dict name -> current Job JSON (snapshot; all namespaces)
        pods            dict name -> current Pod JSON (snapshot; all namespaces)
        created_jobs    list of {"name", "namespace", "uid", "image", "created" (time.time()),
                        "manifest" (the Job as stored at creation)} in creation order
        deleted_jobs    list of Job names deleted through the API, in order
        expired_jobs    list of Job names removed by ttlSecondsAfterFinished
        max_running     highest number of Jobs active at the same time (creation -> finished/deleted)
        requests        list of (method, path) for every request (path without query)
        request_log     list of {"method", "path", "query" (dict), "headers" (lower-case names), "body" (JSON)}
        rbac_requests   set of RbacRequest (verb, API group, resource, subresource, namespace) of every
                        request, as a real API server's authorizer would see it (see rbac_request())
        unhandled       list of (method, path-with-query) answered 404 because the fake lacks them
        unpullable_images  set of images (or images without tag) that never start
    Helpers: job(), pod_log(), pods_of(), wait_for(), wait_for_job_finished(), running_count().
    """

    def __init__(self, base_dir: str | os.PathLike | None = None, *, kubelet_delay: float = 0.2,
                 image_pull_backoff_after: float = 0.5, token: str = "fake-token"):
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir) if base_dir is not None else Path(tempfile.mkdtemp(prefix="fake-k8s-"))
        self.kubelet_delay = kubelet_delay
        self.image_pull_backoff_after = image_pull_backoff_after
        self.token = token

        self.unpullable_images: set[str] = set()
        self.created_jobs: list[dict] = []
        self.deleted_jobs: list[str] = []
        self.expired_jobs: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.request_log: list[dict] = []
        self.unhandled: list[tuple[str, str]] = []
        self.max_running = 0

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[tuple[str, str], dict] = {}
        self._pods: dict[tuple[str, str], dict] = {}
        self._logs: dict[tuple[str, str], bytearray] = {}
        self._runs: dict[str, _Run] = {}  # by Job uid
        self._active: set[str] = set()  # Job uids counted as running
        self._resource_version = 1000
        self._stopping = threading.Event()
        self._connections: set = set()
        self._server: ThreadingHTTPServer | None = None
        self._server_thread: threading.Thread | None = None
        self.port: int | None = None
        self.url: str | None = None
        self.kubeconfig_path: Path | None = None
        self.kubeconfig_dict: dict | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "FakeKubernetes":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "FakeKubernetes":
        handler = type("_BoundHandler", (_Handler,), {"fake": self})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.block_on_close = False
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig_dict = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake", "namespace": "default"}}],
            "current-context": "fake",
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "preferences": {},
        }
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig_path = self.base_dir / "kubeconfig"
        self.kubeconfig_path.write_text(yaml.safe_dump(self.kubeconfig_dict, sort_keys=False))
        self._server_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                               name="fake-k8s-server", daemon=True)
        self._server_thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            runs = list(self._runs.values())
            for run in runs:
                run.cancel.set()
            self._changed.notify_all()
        for run in runs:
            self._kill(run)
        for run in runs:
            if run.thread is not None and run.thread is not threading.current_thread():
                run.thread.join(timeout=5)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            for conn in list(self._connections):
                try:
                    conn.shutdown(2)
                except OSError:
                    pass
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
        if self._own_dir:
            import shutil
            shutil.rmtree(self.base_dir, ignore_errors=True)

    # ------------------------------------------------------------------ observability

    @property
    def jobs(self) -> dict[str, dict]:
        with self._lock:
            return {name: copy.deepcopy(job) for (_, name), job in self._jobs.items()}

    @property
    def pods(self) -> dict[str, dict]:
        with self._lock:
            return {name: copy.deepcopy(pod) for (_, name), pod in self._pods.items()}

    def job(self, name: str, namespace: str = "default") -> dict | None:
        with self._lock:
            job = self._jobs.get((namespace, name))
            return copy.deepcopy(job) if job else None

    def pods_of(self, job_name: str, namespace: str = "default") -> list[dict]:
        with self._lock:
            return [copy.deepcopy(p) for (ns, _), p in self._pods.items()
                    if ns == namespace and p["metadata"]["labels"].get("job-name") == job_name]

    def pod_log(self, pod_name: str, namespace: str = "default") -> str:
        """The pod's log so far (still available after the pod was deleted)."""
        with self._lock:
            return bytes(self._logs.get((namespace, pod_name), b"")).decode("utf-8", "replace")

    @property
    def rbac_requests(self) -> set[RbacRequest]:
        with self._lock:
            seen = (rbac_request(r["method"], r["path"], r["query"]) for r in self.request_log)
            return {r for r in seen if r is not None}

    def running_count(self) -> int:
        with self._lock:
            return len(self._active)

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
        """Wait until predicate() (called under the fake's lock) is truthy; return its value."""
        end = time.monotonic() + timeout
        with self._changed:
            while True:
                value = predicate()
                if value:
                    return value
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("FakeKubernetes.wait_for timed out")
                self._changed.wait(min(left, 0.1))

    def wait_for_job_finished(self, name: str, namespace: str = "default", timeout: float = 10.0) -> dict:
        def finished():
            job = self._jobs.get((namespace, name))
            if job and any(c["status"] == "True" and c["type"] in ("Complete", "Failed")
                           for c in job["status"].get("conditions", [])):
                return copy.deepcopy(job)
            return None
        return self.wait_for(finished, timeout)

    # ------------------------------------------------------------------ internals: state

    def _next_rv(self) -> str:
        self._resource_version += 1
        return str(self._resource_version)

    def _touch(self, obj: dict) -> None:
        obj["metadata"]["resourceVersion"] = self._next_rv()

    def _unique_name(self, prefix: str, existing: Callable[[str], bool]) -> str:
        prefix = prefix[:58]
        while True:
            name = prefix + _suffix()
            if not existing(name):
                return name

    def _set_active(self, uid: str, active: bool) -> None:
        if active:
            self._active.add(uid)
            self.max_running = max(self.max_running, len(self._active))
        else:
            self._active.discard(uid)

    def _kill(self, run: _Run) -> None:
        proc = run.proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass

    # ------------------------------------------------------------------ API: jobs

    def _create_job(self, namespace: str, body: Any, query: dict[str, str]) -> dict:
        if not isinstance(body, dict):
            raise _ApiError(400, "BadRequest", "the request body must be a JSON object")
        job = copy.deepcopy(body)
        if job.get("kind", "Job") != "Job":
            raise _ApiError(400, "BadRequest", f"the object kind {job.get('kind')!r} is not Job")
        job["apiVersion"] = "batch/v1"
        job["kind"] = "Job"
        meta = job.setdefault("metadata", {}) or {}
        job["metadata"] = meta
        spec = job.setdefault("spec", {}) or {}
        job["spec"] = spec
        template = spec.setdefault("template", {}) or {}
        spec["template"] = template
        tmeta = template.setdefault("metadata", {}) or {}
        template["metadata"] = tmeta
        pod_spec = template.setdefault("spec", {}) or {}
        template["spec"] = pod_spec
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise _ApiError(400, "BadRequest", "the namespace of the provided object does not match "
                                               "the namespace sent on the request")

        with self._lock:
            name = meta.get("name")
            if not name:
                if not meta.get("generateName"):
                    raise _ApiError(422, "Invalid", 'Job.batch "" is invalid: metadata.name: Required value: '
                                                    'name or generateName is required',
                                    {"group": "batch", "kind": "Job"})
                name = self._unique_name(meta["generateName"], lambda n: (namespace, n) in self._jobs)
            self._validate_job(name, pod_spec)
            if (namespace, name) in self._jobs:
                raise _ApiError(409, "AlreadyExists", f'jobs.batch "{name}" already exists',
                                {"name": name, "group": "batch", "kind": "jobs"})

            uid = str(uuid.uuid4())
            now = _now()
            meta.update(name=name, namespace=namespace, uid=uid, creationTimestamp=now, generation=1)
            system_labels = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": name,
                             "controller-uid": uid, "job-name": name}
            meta["labels"] = {**(meta.get("labels") or {}), **system_labels}
            tmeta["labels"] = {**(tmeta.get("labels") or {}), **system_labels}
            spec["selector"] = {"matchLabels": {"controller-uid": uid}}
            spec.setdefault("backoffLimit", 6)
            spec.setdefault("completions", 1)
            spec.setdefault("parallelism", 1)
            spec.setdefault("completionMode", "NonIndexed")
            spec.setdefault("suspend", False)
            pod_spec.setdefault("terminationGracePeriodSeconds", 30)
            pod_spec.setdefault("dnsPolicy", "ClusterFirst")
            pod_spec.setdefault("schedulerName", "default-scheduler")
            pod_spec.setdefault("securityContext", {})
            for container in pod_spec["containers"]:
                tag = container["image"].rsplit("/", 1)[-1]
                container.setdefault("imagePullPolicy",
                                     "IfNotPresent" if ":" in tag and not tag.endswith(":latest") else "Always")
                container.setdefault("terminationMessagePath", "/dev/termination-log")
                container.setdefault("terminationMessagePolicy", "File")
                container.setdefault("resources", {})
            job["status"] = {}

            if "dryRun" in query:
                self._touch(job)
                return copy.deepcopy(job)

            # the job controller + scheduler, synchronously: one Pending pod, status.active=1
            pod_name = self._unique_name(name + "-", lambda n: (namespace, n) in self._pods)
            job["status"] = {"startTime": now, "active": 1, "ready": 0, "uncountedTerminatedPods": {}}
            self._touch(job)
            self._jobs[(namespace, name)] = job
            self._pods[(namespace, pod_name)] = self._new_pod(namespace, pod_name, job)
            self._logs[(namespace, pod_name)] = bytearray()
            self._set_active(uid, True)
            self.created_jobs.append({"name": name, "namespace": namespace, "uid": uid,
                                      "image": pod_spec["containers"][0]["image"], "created": time.time(),
                                      "manifest": copy.deepcopy(job)})
            deadline = spec.get("activeDeadlineSeconds")
            run = _Run(namespace, name, uid, pod_name,
                       time.monotonic() + float(deadline) if deadline is not None else None)
            self._runs[uid] = run
            run.thread = threading.Thread(target=self._kubelet, args=(run,), name=f"fake-kubelet-{pod_name}",
                                          daemon=True)
            run.thread.start()
            self._changed.notify_all()
            return copy.deepcopy(job)

    def _validate_job(self, name: str, pod_spec: dict) -> None:
        problems = []
        if len(name) > 63 or not _NAME_RE.match(name):
            problems.append(f'metadata.name: Invalid value: "{name}": must be a lowercase RFC 1123 label '
                            f"of at most 63 characters")
        containers = pod_spec.get("containers") or []
        if not containers:
            problems.append("spec.template.spec.containers: Required value")
        for i, container in enumerate(containers):
            if not container.get("name"):
                problems.append(f"spec.template.spec.containers[{i}].name: Required value")
            if not container.get("image"):
                problems.append(f"spec.template.spec.containers[{i}].image: Required value")
        if pod_spec.get("restartPolicy") not in ("Never", "OnFailure"):
            problems.append(f'spec.template.spec.restartPolicy: Unsupported value: '
                            f'"{pod_spec.get("restartPolicy", "Always")}": supported values: "OnFailure", "Never"')
        if problems:
            raise _ApiError(422, "Invalid", f'Job.batch "{name}" is invalid: ' + ", ".join(problems),
                            {"name": name, "group": "batch", "kind": "Job",
                             "causes": [{"reason": "FieldValueInvalid", "message": p} for p in problems]})

    def _new_pod(self, namespace: str, pod_name: str, job: dict) -> dict:
        template = job["spec"]["template"]
        tmeta = template.get("metadata") or {}
        pod_spec = copy.deepcopy(template["spec"])
        pod_spec["nodeName"] = "fake-node"
        labels = dict(tmeta.get("labels") or {})
        now = _now()
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "generateName": job["metadata"]["name"] + "-",
                "namespace": namespace,
                "uid": str(uuid.uuid4()),
                "resourceVersion": self._next_rv(),
                "creationTimestamp": now,
                "labels": labels,
                "annotations": dict(tmeta.get("annotations") or {}),
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"],
                                     "uid": job["metadata"]["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "spec": pod_spec,
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now}],
                "hostIP": "10.0.0.1",
                "qosClass": "BestEffort",
                "startTime": now,
                "containerStatuses": [
                    {"name": c["name"], "image": c["image"], "imageID": "", "ready": False, "restartCount": 0,
                     "started": False, "state": {"waiting": {"reason": "ContainerCreating"}}}
                    for c in pod_spec["containers"]
                ],
            },
        }

    def _get_job(self, namespace: str, name: str) -> dict:
        with self._lock:
            job = self._jobs.get((namespace, name))
            if job is None:
                raise _not_found("jobs", "batch", name)
            return copy.deepcopy(job)

    def _list(self, store: dict, namespace: str | None, query: dict[str, str], kind: str, api_version: str) -> dict:
        if "watch" in query and _truthy(query["watch"]):
            raise _Unhandled()
        if "fieldSelector" in query and query["fieldSelector"]:
            raise _Unhandled()
        try:
            terms = _parse_label_selector(query.get("labelSelector", ""))
        except ValueError:
            raise _Unhandled()
        with self._lock:
            items = [copy.deepcopy(obj) for (ns, _), obj in sorted(store.items())
                     if (namespace is None or ns == namespace) and _matches(obj["metadata"].get("labels"), terms)]
            return {"apiVersion": api_version, "kind": kind,
                    "metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def _delete_job(self, namespace: str, name: str, body: Any, query: dict[str, str]) -> dict:
        body = body if isinstance(body, dict) else {}
        policy = body.get("propagationPolicy") or query.get("propagationPolicy")
        if policy is None and body.get("orphanDependents") is not None:
            policy = "Orphan" if body["orphanDependents"] else "Background"
        if policy is None and query.get("orphanDependents") is not None:
            policy = "Orphan" if _truthy(query["orphanDependents"]) else "Background"
        policy = policy or "Orphan"  # batch/v1 Jobs default to orphaning their pods
        if policy not in ("Orphan", "Background", "Foreground"):
            raise _ApiError(422, "Invalid", f'propagationPolicy: Unsupported value: "{policy}"')
        with self._lock:
            job = self._jobs.get((namespace, name))
            if job is None:
                raise _not_found("jobs", "batch", name)
            answer = copy.deepcopy(job)
            answer["metadata"]["deletionTimestamp"] = _now()
            answer["metadata"]["deletionGracePeriodSeconds"] = 0
            if policy == "Foreground":
                answer["metadata"]["finalizers"] = ["foregroundDeletion"]
            elif policy == "Orphan":
                answer["metadata"]["finalizers"] = ["orphan"]
            self._remove_job(namespace, name, orphan=(policy == "Orphan"))
            self.deleted_jobs.append(name)
            return answer

    def _remove_job(self, namespace: str, name: str, orphan: bool) -> None:
        """Under the lock: forget the Job, stop its process, delete (or orphan) its pods."""
        job = self._jobs.pop((namespace, name))
        uid = job["metadata"]["uid"]
        self._set_active(uid, False)
        run = self._runs.pop(uid, None)
        if run is not None:
            run.cancel.set()
            self._kill(run)
        for key, pod in list(self._pods.items()):
            if key[0] == namespace and pod["metadata"]["labels"].get("controller-uid") == uid:
                if orphan:
                    pod["metadata"]["ownerReferences"] = []
                else:
                    del self._pods[key]
        self._changed.notify_all()

    # ------------------------------------------------------------------ API: pods

    def _get_pod(self, namespace: str, name: str) -> dict:
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise _not_found("pods", "", name)
            return copy.deepcopy(pod)

    def _log_precheck(self, namespace: str, name: str, query: dict[str, str]) -> None:
        with self._lock:
            pod = self._pods.get((namespace, name))
            if pod is None:
                raise _not_found("pods", "", name)
            names = [c["name"] for c in pod["spec"]["containers"]]
            container = query.get("container")
            if container is None and len(names) > 1:
                raise _ApiError(400, "BadRequest", f"a container name must be specified for pod {name}, "
                                                   f"choose one of: {names}")
            if container is not None and container not in names:
                raise _ApiError(400, "BadRequest", f"container {container} is not valid for pod {name}")
            if pod["status"]["phase"] == "Pending":
                waiting = pod["status"]["containerStatuses"][0]["state"].get("waiting", {})
                why = {"ErrImagePull": "trying and failing to pull image",
                       "ImagePullBackOff": "trying and failing to pull image"}.get(waiting.get("reason"))
                raise _ApiError(400, "BadRequest", f'container "{container or names[0]}" in pod "{name}" is '
                                                   f"waiting to start: {why or waiting.get('reason', 'ContainerCreating')}")

    def _log_snapshot(self, namespace: str, name: str, tail: int | None) -> tuple[bytes, int]:
        with self._lock:
            data = bytes(self._logs.get((namespace, name), b""))
        if tail is not None:
            lines = data.splitlines(keepends=True)
            chunk = b"".join(lines[-tail:]) if tail > 0 else b""
        else:
            chunk = data
        return chunk, len(data)

    def _pod_finished(self, namespace: str, name: str) -> bool:
        pod = self._pods.get((namespace, name))
        return pod is None or pod["status"]["phase"] in ("Succeeded", "Failed")

    # ------------------------------------------------------------------ kubelet

    def _update_pod(self, run: _Run, phase: str | None = None, state: dict | None = None,
                    ready: bool | None = None) -> None:
        pod = self._pods.get((run.namespace, run.pod_name))
        if pod is None:
            return
        status = pod["status"]
        if phase:
            status["phase"] = phase
        cs = status["containerStatuses"][0]
        if state is not None:
            if "running" not in state and "running" in cs["state"]:
                cs["lastState"] = {}
            cs["state"] = state
            cs["started"] = "running" in state
        if ready is not None:
            cs["ready"] = ready
            status["conditions"] = [c for c in status["conditions"] if c["type"] != "Ready"] + [
                {"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": _now()}]
        self._touch(pod)
        self._changed.notify_all()

    def _finish_job(self, run: _Run, condition: dict | None) -> None:
        """Under the lock: the pod is done; update the Job if it still exists."""
        job = self._jobs.get((run.namespace, run.job_name))
        self._set_active(run.uid, False)
        self._runs.pop(run.uid, None)
        if job is None or job["metadata"]["uid"] != run.uid:
            self._changed.notify_all()
            return
        status = job["status"]
        status.pop("active", None)
        status["ready"] = 0
        now = _now()
        if condition["type"] == "Complete":
            status["succeeded"] = 1
            status["completionTime"] = now
        else:
            status["failed"] = 1
        status["conditions"] = [{"lastProbeTime": now, "lastTransitionTime": now, "status": "True", **condition}]
        self._touch(job)
        ttl = job["spec"].get("ttlSecondsAfterFinished")
        if ttl is not None:
            threading.Thread(target=self._expire, args=(run.namespace, run.job_name, run.uid, float(ttl)),
                             daemon=True).start()
        self._changed.notify_all()

    def _expire(self, namespace: str, name: str, uid: str, ttl: float) -> None:
        if self._stopping.wait(ttl):
            return
        with self._lock:
            job = self._jobs.get((namespace, name))
            if job is not None and job["metadata"]["uid"] == uid:
                self._remove_job(namespace, name, orphan=False)
                self.expired_jobs.append(name)

    def _wait(self, run: _Run, seconds: float) -> str | None:
        """Sleep up to `seconds`; return "cancel" or "deadline" if that happened first."""
        end = time.monotonic() + seconds
        while True:
            now = time.monotonic()
            if run.deadline is not None and now >= run.deadline:
                return "deadline"
            if now >= end:
                return None
            step = end - now
            if run.deadline is not None:
                step = min(step, run.deadline - now)
            if run.cancel.wait(min(step, 0.05)):
                return "cancel"

    def _deadline_failure(self, run: _Run) -> None:
        with self._lock:
            self._finish_job(run, {"type": "Failed", "reason": "DeadlineExceeded",
                                   "message": "Job was active longer than specified deadline"})

    def _kubelet(self, run: _Run) -> None:
        try:
            self._kubelet_inner(run)
        except Exception as exc:  # never leave a Job active for ever because of a fake bug
            with self._lock:
                self._logs.setdefault((run.namespace, run.pod_name), bytearray()).extend(
                    f"fake-k8s kubelet error: {exc!r}\n".encode())
                if run.uid in self._runs:
                    self._update_pod(run, "Failed", {"terminated": {"exitCode": 128, "reason": "StartError"}}, False)
                    self._finish_job(run, {"type": "Failed", "reason": "BackoffLimitExceeded",
                                           "message": "Job has reached the specified backoff limit"})

    def _kubelet_inner(self, run: _Run) -> None:
        outcome = self._wait(run, self.kubelet_delay)
        if outcome == "cancel":
            return
        if outcome == "deadline":
            return self._deadline_failure(run)

        with self._lock:
            pod = self._pods.get((run.namespace, run.pod_name))
            if pod is None or run.cancel.is_set():
                return
            container = copy.deepcopy(pod["spec"]["containers"][0])
        image = container["image"]

        if image in self.unpullable_images or _image_key(image) in self.unpullable_images:
            with self._lock:
                self._update_pod(run, state={"waiting": {
                    "reason": "ErrImagePull",
                    "message": f'failed to pull and unpack image "{image}": not found (fake-k8s)'}})
            outcome = self._wait(run, self.image_pull_backoff_after)
            if outcome is None:
                with self._lock:
                    self._update_pod(run, state={"waiting": {
                        "reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}})
                outcome = self._wait(run, float("inf"))
            if outcome == "deadline":
                self._deadline_failure(run)
            return

        argv = [str(a) for a in (container.get("command") or []) + (container.get("args") or [])]
        env = dict(os.environ)
        env["HOSTNAME"] = run.pod_name
        for item in container.get("env") or []:
            if "value" in item and item.get("value") is not None:
                env[item["name"]] = str(item["value"])
        workdir = container.get("workingDir")
        if not workdir or not os.path.isdir(workdir):
            workdir = self.base_dir / "pods" / run.pod_name
            workdir.mkdir(parents=True, exist_ok=True)

        log = self._logs[(run.namespace, run.pod_name)]
        started = _now()
        with self._lock:
            if run.cancel.is_set():
                return
            try:
                if not argv:
                    raise OSError("the fake kubelet needs the container's command (or args): images are ignored")
                run.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, env=env, cwd=str(workdir),
                                            start_new_session=True)
            except OSError as exc:
                log.extend(f"fake-k8s: failed to start container {container['name']!r}: {exc}\n".encode())
                self._update_pod(run, "Failed", {"terminated": {
                    "exitCode": 128, "reason": "StartError", "message": str(exc),
                    "startedAt": started, "finishedAt": _now()}}, False)
                self._finish_job(run, {"type": "Failed", "reason": "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"})
                return
            self._update_pod(run, "Running", {"running": {"startedAt": started}}, True)
            job = self._jobs.get((run.namespace, run.job_name))
            if job is not None:
                job["status"]["ready"] = 1
                self._touch(job)

        proc = run.proc
        reader = threading.Thread(target=self._pump, args=(proc, log), daemon=True,
                                  name=f"fake-kubelet-log-{run.pod_name}")
        reader.start()

        killed_by = None
        while proc.poll() is None:
            outcome = self._wait(run, 0.05)
            if outcome is not None:
                killed_by = outcome
                self._kill(run)
                break
        proc.wait()
        reader.join(timeout=5)
        code = proc.returncode
        exit_code = code if code >= 0 else 128 - code
        finished = _now()

        with self._lock:
            if run.cancel.is_set():
                # Job deleted (or server stopping): an orphaned pod that is still listed is marked dead
                self._update_pod(run, "Failed", {"terminated": {
                    "exitCode": exit_code, "reason": "Error", "startedAt": started, "finishedAt": finished}}, False)
                self._set_active(run.uid, False)
                self._runs.pop(run.uid, None)
                return
            if killed_by == "deadline":
                self._update_pod(run, "Failed", {"terminated": {
                    "exitCode": exit_code, "reason": "DeadlineExceeded", "startedAt": started,
                    "finishedAt": finished}}, False)
                pod = self._pods.get((run.namespace, run.pod_name))
                if pod is not None:
                    pod["status"]["reason"] = "DeadlineExceeded"
                self._finish_job(run, {"type": "Failed", "reason": "DeadlineExceeded",
                                       "message": "Job was active longer than specified deadline"})
            elif code == 0:
                self._update_pod(run, "Succeeded", {"terminated": {
                    "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": finished}}, False)
                self._finish_job(run, {"type": "Complete"})
            else:
                self._update_pod(run, "Failed", {"terminated": {
                    "exitCode": exit_code, "reason": "Error", "startedAt": started, "finishedAt": finished}}, False)
                self._finish_job(run, {"type": "Failed", "reason": "BackoffLimitExceeded",
                                       "message": "Job has reached the specified backoff limit"})

    def _pump(self, proc: subprocess.Popen, log: bytearray) -> None:
        fd = proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                with self._lock:
                    log.extend(chunk)
                    self._changed.notify_all()
        except OSError:
            pass
        finally:
            proc.stdout.close()


class _Unhandled(Exception):
    pass


_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), h) for m, p, h in [
        ("POST", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$", "create_job"),
        ("GET", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs$", "list_jobs"),
        ("GET", r"^/apis/batch/v1/jobs$", "list_jobs"),
        ("GET", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)(?:/status)?$", "read_job"),
        ("DELETE", r"^/apis/batch/v1/namespaces/(?P<ns>[^/]+)/jobs/(?P<name>[^/]+)$", "delete_job"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods$", "list_pods"),
        ("GET", r"^/api/v1/pods$", "list_pods"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)$", "read_pod"),
        ("GET", r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<name>[^/]+)/log$", "pod_log"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeKubernetes  # set on the per-server subclass
    server_version = "fake-kube-apiserver"

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def setup(self):
        super().setup()
        self.fake._connections.add(self.connection)

    def finish(self):
        try:
            super().finish()
        finally:
            self.fake._connections.discard(self.connection)

    # --- plumbing

    def _read_body(self) -> Any:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            raw = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                raw.extend(self.rfile.read(size))
                self.rfile.readline()
        else:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise _ApiError(400, "BadRequest", "the request body is not valid JSON")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode(), "application/json")

    def _handle(self) -> None:
        fake = self.fake
        split = urlsplit(self.path)
        path = unquote(split.path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        with fake._lock:
            fake.requests.append((self.command, path))
        try:
            body = self._read_body() if self.command in ("POST", "PUT", "PATCH", "DELETE") else None
        except _ApiError as err:
            return self._send_json(err.code, err.body)
        with fake._lock:
            fake.request_log.append({"method": self.command, "path": path, "query": query,
                                     "headers": {k.lower(): v for k, v in self.headers.items()},
                                     "body": body})
        try:
            for method, pattern, handler in _ROUTES:
                match = pattern.match(path)
                if method == self.command and match:
                    return getattr(self, "_h_" + handler)(query, body, **match.groupdict())
            raise _Unhandled()
        except _Unhandled:
            with fake._lock:
                fake.unhandled.append((self.command, self.path))
            self._send_json(404, _status(404, "NotFound", "the server could not find the requested resource",
                                         {"causes": [{"reason": "UnexpectedServerResponse",
                                                      "message": "404 page not found (fake-k8s)"}]}))
        except _ApiError as err:
            self._send_json(err.code, err.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    # --- handlers

    def _h_create_job(self, query, body, ns):
        self._send_json(201, self.fake._create_job(ns, body, query))

    def _h_list_jobs(self, query, body, ns=None):
        self._send_json(200, self.fake._list(self.fake._jobs, ns, query, "JobList", "batch/v1"))

    def _h_read_job(self, query, body, ns, name):
        self._send_json(200, self.fake._get_job(ns, name))

    def _h_delete_job(self, query, body, ns, name):
        self._send_json(200, self.fake._delete_job(ns, name, body, query))

    def _h_list_pods(self, query, body, ns=None):
        self._send_json(200, self.fake._list(self.fake._pods, ns, query, "PodList", "v1"))

    def _h_read_pod(self, query, body, ns, name):
        self._send_json(200, self.fake._get_pod(ns, name))

    def _h_pod_log(self, query, body, ns, name):
        fake = self.fake
        fake._log_precheck(ns, name, query)
        tail = int(query["tailLines"]) if query.get("tailLines") not in (None, "") else None
        chunk, offset = fake._log_snapshot(ns, name, tail)
        if not _truthy(query.get("follow")):
            return self._send(200, chunk, "text/plain")
        # follow: chunked transfer until the pod has ended and everything was sent
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def write(data: bytes) -> None:
            if data:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

        write(chunk)
        key = (ns, name)
        while True:
            with fake._changed:
                while (len(fake._logs.get(key, b"")) == offset and not fake._pod_finished(ns, name)
                       and not fake._stopping.is_set()):
                    fake._changed.wait(0.5)
                data = bytes(fake._logs.get(key, b"")[offset:])
                offset += len(data)
                done = fake._pod_finished(ns, name) or fake._stopping.is_set()
            write(data)
            if done:
                with fake._lock:  # the pump may add the last bytes just before the pod is marked finished
                    rest = bytes(fake._logs.get(key, b"")[offset:])
                write(rest)
                break
        self.wfile.write(b"0\r\n\r\n")
        self.close_connection = True
