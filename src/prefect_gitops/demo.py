"""`prefect-gitops demo`: a sample GitOps repo reconciled against a real local Prefect server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, cast

if TYPE_CHECKING:  # for annotations only: the demo imports Prefect and the flows where it uses them
    from prefect_gitops.demo_registry import LocalRegistry
    from prefect_gitops.state import EnvironmentState

GIT_ID = ["-c", "user.name=prefect-gitops demo", "-c", "user.email=demo@example.com", "-c", "commit.gpgsign=false"]

QA = """\
# environments/qa.yaml: what the qa work pool and deployments run
work_pools:
  demo-k8s-qa:
    job_variables:
      image: registry.example.com/flows:1.5.0-rc1
      namespace: flows-qa
deployments:
  etl/qa-daily:
    job_variables:
      env: {LOG_LEVEL: debug}
"""

# with the demo's local registry (docker-registry) at HOST: etl/qa-daily follows its newest 1.x tag
QA_IMAGE_POLICY = """\
      image: HOST/demo/etl:1.0.0
    image_policy:   # pull mode: the gitops-image-scan flow writes the newest allowed tag into image above
      repository: HOST/demo/etl
      policy: {semver: {range: "^1"}}
      insecure: true   # the demo's registry speaks plain HTTP
"""

PROD = """\
# environments/prod.yaml: what the prod work pool and deployments run
smoke_test:
  kind: process   # this demo has no cluster: the check runs locally and does not isolate the image
  process:
    command: [python3, -c, "import os, sys; i = os.environ['SMOKE_IMAGE']; print('smoke test of', i); sys.exit(3 if 'broken' in i else 0)"]
  timeout_seconds: 60
rollout:
  waves:
    - {wave: 1, name: canary, deployments: ["etl/*"]}
    - {wave: 2, name: fleet, work_pools: [demo-k8s-prod], deployments: ["reports/*"]}
work_pools:
  demo-k8s-prod:
    job_variables:
      image: registry.example.com/flows:1.4.2
      namespace: flows-prod
deployments:
  etl/prod-daily:
    job_variables:
      image: registry.example.com/flows:TAG
      env: {LOG_LEVEL: info}
  reports/prod-weekly:
    job_variables:
      image: registry.example.com/reports:REPORTS
      cpu_request: "500m"
"""


@contextlib.contextmanager
def _local_server() -> Iterator[subprocess.Popen[bytes] | None]:
    """A throwaway Prefect server (SQLite in a temporary home) unless PREFECT_API_URL is set."""
    if os.environ.get("PREFECT_API_URL"):
        print(f"using the Prefect server at {os.environ['PREFECT_API_URL']}")
        yield None
        return
    from prefect_gitops.local_server import free_port, running_server, server_env

    home = tempfile.mkdtemp(prefix="prefect-gitops-demo-")
    port = free_port()
    os.environ.update(server_env(home, port))
    print(f"starting a local Prefect server on 127.0.0.1:{port} (home {home}) ...")
    with running_server(Path(home), port) as proc:
        try:
            yield proc
        finally:
            from prefect_gitops.adapters.events import flush_to_api

            flush_to_api()


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *GIT_ID, *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def _prod(tag: str, reports: str) -> str:
    return PROD.replace("TAG", tag).replace("REPORTS", reports)


def _make_repo(root: Path, registry_host: str | None) -> Path:
    repo = root / "gitops"
    (repo / "environments").mkdir(parents=True)
    qa = QA + QA_IMAGE_POLICY.replace("HOST", registry_host) if registry_host else QA
    (repo / "environments" / "qa.yaml").write_text(qa)
    (repo / "environments" / "prod.yaml").write_text(_prod("1.4.3", "2.0.0"))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "receive.denyCurrentBranch", "updateInstead")  # promote pushes to it
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "Describe qa and prod")
    return repo


async def _create_estate() -> None:
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect_kubernetes.worker import KubernetesWorker

    async with get_client() as client:
        for pool in ("demo-k8s-qa", "demo-k8s-prod"):
            with contextlib.suppress(ObjectAlreadyExists):
                await client.create_work_pool(WorkPoolCreate(
                    name=pool, type="kubernetes", base_job_template=KubernetesWorker.get_default_base_job_template()))
        for full, pool in (("etl/qa-daily", "demo-k8s-qa"), ("etl/prod-daily", "demo-k8s-prod"),
                           ("reports/prod-weekly", "demo-k8s-prod")):
            flow_name, name = full.split("/")
            flow_id = await client.create_flow_from_name(flow_name)
            try:
                await client.read_deployment_by_name(full)
            except Exception:
                await client.create_deployment(flow_id=flow_id, name=name, work_pool_name=pool)


def _reconcile(repo: Path, env: str) -> dict[str, Any]:
    from prefect_gitops.flows import reconcile, run_here

    state, report = run_here(reconcile, environment=env, source_url=repo.as_uri())
    if not isinstance(report, dict):
        raise SystemExit(f"reconcile of {env} crashed: {report}")
    report["flow_run_id"] = str(state.state_details.flow_run_id)
    return report


@contextlib.contextmanager
def _local_registry(root: Path) -> Iterator[LocalRegistry | None]:
    """The demo's OCI registry (docker-registry on a free 127.0.0.1 port, anonymous) holding demo/etl:1.0.0,
    stopped at the end; None, said in one line, when docker-registry is not installed or does not start."""
    import httpx

    from prefect_gitops.demo_registry import LocalRegistry, binary

    if binary() is None:
        print("image scan step skipped: docker-registry is not installed (Debian package docker-registry)")
        yield None
        return
    registry = LocalRegistry(root)
    try:
        registry.start()
        registry.push("demo/etl", "1.0.0")
    except (RuntimeError, OSError, httpx.HTTPError) as exc:
        registry.stop()
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        print(f"image scan step skipped: the local registry (docker-registry) did not start: {why}")
        yield None
        return
    print(f"local OCI registry (docker-registry) at {registry.host}, holding demo/etl:1.0.0")
    try:
        yield registry
    finally:
        registry.stop()


def _image_scan(repo: Path, env: str) -> dict[str, Any]:
    from prefect_gitops.flows import run_here
    from prefect_gitops.image_scan_flow import image_scan

    # cast: the flow's report, also when it ended Failed (as for _promote)
    return cast("dict[str, Any]", run_here(image_scan, environment=env, source_url=repo.as_uri())[1])


def _promote(repo: Path, source: str, target: str) -> dict[str, Any]:
    from prefect_gitops.flows import promote, run_here

    # cast: the result is the flow's report, also when the flow ended Failed (a State the flow returns
    # becomes its final state, and that state's data, the report, is its result: Prefect's types cannot
    # say so); a crashed run would give its exception, which the demo does not expect
    return cast("dict[str, Any]", run_here(promote, from_environment=source, to_environment=target,
                                           source_url=repo.as_uri())[1])


def _show(title: str, report: dict[str, Any]) -> None:
    from prefect.settings import PREFECT_UI_URL

    from prefect_gitops.report import _value

    print(f"\n== {title}: {report['status']} at {str(report['revision'])[:12]} ==")
    for c in report["changes"]:
        new = _value(c["new"]) if c["action"] == "set" else "(unset)"
        old = _value(c["old"], c["old_present"])
        print(f"  {c['action']:5} {c['target_type']:10} {c['target']:20} {c['key']:12} {old} -> {new}  [{c['reason']}]")
    for t in report.get("smoke_tests", []):
        print(f"  smoke test ({t['kind']}) of {t['image']}: {t.get('result', 'not run')}: {t.get('message', '')}")
        if t.get("result") not in (None, "passed") and t.get("log_tail"):
            print("    log tail: " + t["log_tail"].replace("\n", "\n              "))
    if len(report.get("waves", [])) > 1:
        print("  waves: " + "; ".join(f"{w['wave']} {w['name']} ({w['changes']} change(s)): {w['state']}"
                                      for w in report["waves"]))
    if report.get("held"):
        print(f"  {report['held']} change(s) held back: nothing of this revision was applied")
    for e in report["errors"]:
        print(f"  error: {e.get('message', e)}")
    print(f"  {report['applied']} change(s) applied; "
          f"flow run {PREFECT_UI_URL.value().rstrip('/')}/runs/flow-run/{report['flow_run_id']}")


def _pull_mode_step(repo: Path, registry: LocalRegistry) -> bool:
    """A new tag arrives in the registry; the image scan commits it to qa.yaml; qa's reconcile applies it."""
    registry.push("demo/etl", "1.1.0")
    old, new = f"{registry.host}/demo/etl:1.0.0", f"{registry.host}/demo/etl:1.1.0"
    print("\npushed demo/etl:1.1.0 to the local registry; the image scan (pull mode) of qa picks the newest "
          "allowed tag (semver ^1) and commits it:")
    scan = _image_scan(repo, "qa")
    for t in scan.get("targets", []):
        print(f"  {t['target_type']} {t['target']}: {t['policy']}: newest tag {t.get('newest_tag') or '-'} of "
              f"{t.get('tags_seen', 0)}: {t['outcome']}{': ' + t['message'] if t.get('message') else ''}")
    for d in scan.get("decisions", []):
        print(f"  image scan: {d['target']}: {d['old']} -> {d['new']}")
    print("  " + _git(repo, "log", "-1", "--format=%h %s"))
    qa = _reconcile(repo, "qa")
    _show("qa after the image scan", qa)
    return (scan.get("status") == "scanned"
            and [(d["old"], d["new"]) for d in scan.get("decisions", [])] == [(old, new)]
            and qa["status"] == "applied"
            and [(c["target"], c["key"], c["new"]) for c in qa["changes"]] == [("etl/qa-daily", "image", new)])


def run_demo(keep: bool = False) -> int:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")  # the demo prints its own summary
    with (_local_server() as server, tempfile.TemporaryDirectory(prefix="prefect-gitops-demo-repo-") as tmp,
          _local_registry(Path(tmp) / "registry") as registry):
        if server is not None:  # our own server: prove its scheduler works, or reconciles never fire on a schedule
            from prefect_gitops.local_server import check_scheduler

            print(f"its scheduler works: an hourly deployment got {asyncio.run(check_scheduler())} scheduled runs")
        asyncio.run(_create_estate())
        repo = _make_repo(Path(tmp), registry.host if registry else None)
        print(f"sample GitOps repo: {repo}")
        qa = _reconcile(repo, "qa")
        _show("qa", qa)
        prod = _reconcile(repo, "prod")
        _show("prod", prod)

        (repo / "environments" / "prod.yaml").write_text(_prod("1.4.4", "2.0.0"))
        _git(repo, "commit", "-q", "-am", "prod: etl/prod-daily to 1.4.4")
        print("\ncommitted a tag change to environments/prod.yaml (1.4.3 -> 1.4.4); reconciling prod again")
        again = _reconcile(repo, "prod")
        _show("prod after the tag change", again)

        (repo / "environments" / "prod.yaml").write_text(_prod("1.4.4", "2.1.0-broken"))
        _git(repo, "commit", "-q", "-am", "prod: reports/prod-weekly to 2.1.0-broken")
        print("\ncommitted a broken image for reports/prod-weekly; its smoke test fails and the change is held back")
        broken = _reconcile(repo, "prod")
        _show("prod with a broken image", broken)

        (repo / "environments" / "prod.yaml").write_text(_prod("1.4.4", "2.0.0"))
        _git(repo, "commit", "-q", "-am", "prod: revert reports/prod-weekly to 2.0.0")
        print("\nreverted the broken image in Git; now promoting qa's images to prod as a commit:")
        promoted = _promote(repo, "qa", "prod")
        print(f"  {promoted['message']}")
        for c in promoted["changes"]:
            print(f"  {c['target']}: {c['old']} -> {c['new']}")
        print("  " + _git(repo, "show", "--stat", "--format=%h %s", "HEAD").replace("\n", "\n  "))
        rollout = _reconcile(repo, "prod")
        _show("prod after the promotion (two waves)", rollout)

        pulled = _pull_mode_step(repo, registry) if registry else True

        ok = (pulled and all(r["status"] in ("applied", "in-sync") for r in (qa, prod, again))
              and promoted["status"] == "promoted" and rollout["status"] == "applied"
              and [w["state"] for w in rollout["waves"]] == ["applied", "applied"]
              and again["applied"] == 1 and again["changes"][0]["new"] == "registry.example.com/flows:1.4.4"
              and [t["result"] for t in again["smoke_tests"]] == ["passed"]
              and broken["status"] == "failed" and broken["applied"] == 0
              and [t["result"] for t in broken["smoke_tests"]] == ["failed"])
        print("\nstatus: prefect-gitops status --env prod (with PREFECT_API_URL set to this server)")
        from prefect_gitops.report import status_text
        from prefect_gitops.adapters.prefect_api import PrefectAPI
        from prefect import get_client

        async def status() -> EnvironmentState:
            async with get_client() as client:
                return (await PrefectAPI(client).read_state("prod"))[0]

        print(status_text(asyncio.run(status())))
        if keep:
            print(f"\nthe server keeps running at {os.environ['PREFECT_UI_URL']}; Ctrl-C to stop")
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(3600)
        print("\ndemo " + ("passed" if ok else "FAILED"))
        return 0 if ok else 1
