"""`prefect-gitops`: plan, apply, status, schema, demo.

Exit codes: plan 0 = no changes, 2 = changes pending, 1 = error;
apply 0 = applied or nothing to do, 1 = failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from enum import Enum
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional
from uuid import uuid4

import typer

from prefect_gitops.status import EXIT_BUSY, EXIT_FAILED, EXIT_OK, RunEnd

if TYPE_CHECKING:  # for annotations only: the commands import Prefect and the flows where they use them
    from uuid import UUID

    from prefect import State
    from prefect.client.orchestration import PrefectClient

    from prefect_gitops.flows import FlowResult
    from prefect_gitops.result import ReconcileResult
    from prefect_gitops.state import EnvironmentState

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _print_version(wanted: bool) -> None:
    if wanted:
        import importlib.metadata
        import platform

        from prefect_gitops import __version__

        prefect = importlib.metadata.version("prefect")  # the installed one, without importing it (3 s)
        typer.echo(f"prefect-gitops {__version__} (Prefect {prefect}, Python {platform.python_version()})")
        raise typer.Exit(0)


@app.callback()
def _options(version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                          help="Print the versions of prefect-gitops, Prefect and Python.")) -> None:
    """A GitOps control plane for Prefect: plan, apply, status, rollback, promote."""


class Output(str, Enum):
    text = "text"
    json = "json"


class DriftOption(str, Enum):
    from_file = "from-file"
    correct = "correct"
    warn = "warn"


# from the environment too: a URL with a password in it stays out of the process list (`ps`)
SOURCE = typer.Option(None, "--source", envvar="PREFECT_GITOPS_SOURCE",
                      help="GitOps repo URL (https, ssh, file:// or a path).")
# a block carries what a URL cannot: credentials and the signature check (a run that names the block
# cannot leave the check out); --source, --ref and --path override its fields
SOURCE_BLOCK = typer.Option(None, "--source-block", help="A saved GitOps Source block: its URL, ref, folder, "
                                                          "credentials and signature verification.")
REF = typer.Option(None, "--ref", help="Branch, tag or commit SHA (default: the block's, else main).")
ENV = typer.Option(..., "--env", help="Environment name: <path>/<env>.yaml.")
PATH = typer.Option(None, "--path", help="Folder of the environment files (default: the block's, else environments).")
OUTPUT = typer.Option(Output.text, "--output", "-o")
REVISION = typer.Option(None, "--revision", help="Full commit SHA to use instead of resolving --ref.")
POLICY_BLOCK = typer.Option(None, "--policy-block", help="GitOps Policy block to check the file against (must "
                                                          "exist; default: gitops-policy if it exists).")


def _emit(payload: dict[str, Any], output: Output, text: str) -> None:
    if output == Output.json:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def plan(source: Optional[str] = SOURCE, source_block: Optional[str] = SOURCE_BLOCK, ref: Optional[str] = REF,
         env: str = ENV, path: Optional[str] = PATH, revision: Optional[str] = REVISION, output: Output = OUTPUT,
         drift_mode: DriftOption = typer.Option(DriftOption.from_file, "--drift-mode"),
         policy_block: Optional[str] = POLICY_BLOCK) -> None:
    """Show what apply would change. Exit 0: nothing; 2: changes pending; 1: error."""
    from prefect import get_client

    from prefect_gitops.adapters.environment_server import environment_api
    from prefect_gitops.errors import GitOpsError
    from prefect_gitops.flows import git_source, load_block, source_settings
    from prefect_gitops.reconcile import ReconcileRequest, ReconcileResult, reconcile
    from prefect_gitops.report import text

    if not (source or source_block):
        sys.stderr.write("give --source URL or --source-block NAME: where is the GitOps repo?\n")
        raise typer.Exit(1)

    async def run() -> ReconcileResult:
        try:
            block = await load_block("GitOpsSource", source_block) if source_block else None
        except ValueError as exc:  # Prefect's "Unable to find block document named ..."
            sys.stderr.write(f"GitOps Source block {source_block!r}: {exc}\n")
            raise typer.Exit(1)
        where = source_settings(block, source, ref, path)
        request = ReconcileRequest(environment=env, source=git_source(block, where.url or ""), ref=where.ref,
                                   path=where.path, revision=revision, dry_run=True, full_check=True,
                                   drift_mode=None if drift_mode == DriftOption.from_file else drift_mode.value,
                                   signatures=where.signatures, policy_block=policy_block)
        try:
            async with get_client() as client, environment_api(client, env) as api:  # on ENV's own server
                return await reconcile(request, api)
        except GitOpsError as exc:  # ENV's GitOps Target block could not be read
            return ReconcileResult.failed_before_start(env, exc)

    result = asyncio.run(run())
    payload = result.to_json()
    payload = {k: payload[k] for k in ("revision", "environment", "changes", "errors", "status")}
    _emit(payload, output, text(result))
    if not result.ok:
        raise typer.Exit(1)
    raise typer.Exit(2 if result.plan and result.plan.changes else 0)


@app.command()
def apply(source: Optional[str] = SOURCE, source_block: Optional[str] = SOURCE_BLOCK, ref: Optional[str] = REF,
          env: str = ENV, path: Optional[str] = PATH, revision: Optional[str] = REVISION, output: Output = OUTPUT,
          dry_run: bool = typer.Option(False, "--dry-run", help="Plan in a flow run, write nothing."),
          drift_mode: DriftOption = typer.Option(DriftOption.from_file, "--drift-mode"),
          concurrency: int = typer.Option(4, "--concurrency", min=1, max=32),
          force: bool = typer.Option(False, "--force", help="Apply even the revision a rollback moved away from."),
          full_check: bool = typer.Option(False, "--full-check",
                                          help="Read every managed target now (no shortcut, no event log)."),
          quick: bool = typer.Option(False, "--quick", help="As a scheduled run: stop when Git has not moved and "
                                     "no drift check is due, and look for drift in the event log first."),
          allow_mass_release: bool = typer.Option(
              False, "--allow-mass-release", help="Apply a revision that empties the file or releases more "
                                                  "managed keys than rollout.release_limit allows."),
          allow_history_rewrite: bool = typer.Option(
              False, "--allow-history-rewrite", help="Apply a revision that does not descend from the last "
                                                     "applied one (after a force-push)."),
          override_windows: bool = typer.Option(False, "--override-windows",
                                                help="Apply inside a deny window / outside every allow window."),
          policy_block: Optional[str] = POLICY_BLOCK) -> None:
    """Run the reconcile flow (a real flow run).

    Exit 0: applied, nothing to do, or rolled back; 1: failed; 3: another rollout of ENV is in progress;
    4: held (suspended, sync window closed, promotion gate waiting); 5: refused (emptied file, mass
    release, rewritten history) until allowed.

    Run by a person, apply reads every managed target, so it applies the drift `plan` shows now;
    --quick takes the scheduled runs' shortcut and event-log check instead.
    """
    from prefect_gitops.adapters.url_credentials import hide_credentials
    from prefect_gitops.flows import reconcile

    # the flow run's parameters are stored on the server: the URL's password stays in this process
    # (the flow says what is missing when neither --source nor --source-block is given)
    _run_flow(reconcile, output, env, environment=env, source_block=source_block,
              source_url=hide_credentials(source) if source else None, ref=ref, path=path, revision=revision,
              dry_run=dry_run, drift_mode=drift_mode.value, concurrency=concurrency, force=force,
              full_check=full_check or not quick, override_windows=override_windows, policy_block=policy_block,
              allow_mass_release=allow_mass_release, allow_history_rewrite=allow_history_rewrite)


@app.command()
def rollback(env: str = ENV, to: Optional[str] = typer.Option(None, "--to", help="Revision from the history."),
             steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Applied revisions to go back."),
             output: Output = OUTPUT, concurrency: int = typer.Option(4, "--concurrency", min=1, max=32)) -> None:
    """Restore the job variables as applied at an earlier revision (runs the rollback flow)."""
    from prefect_gitops.flows import rollback as rollback_flow

    if (to is None) == (steps is None):
        sys.stderr.write("give exactly one of --to REVISION or --steps N\n")
        raise typer.Exit(1)
    _run_flow(rollback_flow, output, env, environment=env, to_revision=to, steps=steps, concurrency=concurrency)


def _run_flow(flow_fn: Callable[..., Awaitable[State[FlowResult]]], output: Output, env: str,
              **parameters: Any) -> None:
    """Run a control flow in-process (a real flow run), print its report, exit 0 only if it completed."""
    from prefect_gitops.adapters.events import flush_to_api
    from prefect_gitops.flows import run_here

    state, outcome = run_here(flow_fn, **parameters)
    flush_to_api()  # before the report, so Prefect's drain at exit has nothing left to warn about
    flow_run_id = str(state.state_details.flow_run_id)
    if isinstance(outcome, dict):  # the report, from a Completed or a Failed run
        report = dict(outcome)
    else:  # the flow crashed before producing a report (bad parameters, server gone, a bug)
        message = str(outcome) or state.message or type(outcome).__name__
        report = {"environment": env, "status": "failed", "errors": [{"message": message}],
                  "changes": [], "applied": 0, "revision": None, "message": message}
    report["flow_run_id"] = flow_run_id
    lines = [f"flow run {flow_run_id}: {state.type.value}", f"{report.get('status')}: {report.get('message')}"]
    for test in report.get("smoke_tests", []):
        lines.append(f"  smoke test {test['kind']} {test['image']}: {test.get('result', 'not run')} {test.get('message', '')}")
    lines += [f"  error: {e.get('message') if not e.get('file') else _where(e)}" for e in report.get("errors", [])]
    lines.append(f"{report.get('applied', 0)} change(s) applied")
    ui = _ui_url(flow_run_id)
    if ui:
        lines.append(f"view it at {ui}")
    _emit(report, output, "\n".join(lines))
    raise typer.Exit(exit_code(report.get("status"), state.is_completed()))


def exit_code(status: str | None, completed: bool) -> int:
    from prefect_gitops.status import exit_code as status_exit_code

    return status_exit_code(status, completed)


def _where(problem: dict[str, Any]) -> str:
    from prefect_gitops.errors import ConfigProblem

    return str(ConfigProblem(**problem))


def _ui_url(flow_run_id: str) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


@app.command()
def status(env: str = ENV, output: Output = OUTPUT,
           entries: int = typer.Option(1, "--entries", min=0, help=(
               "How many of the newest history entries to show whole, with their changes (json output); "
               "every entry is listed by its summary."))) -> None:
    """What was last attempted and applied, the inventory size and the history."""
    from prefect import get_client

    from prefect_gitops.adapters.environment_server import environment_api
    from prefect_gitops.errors import GitOpsError
    from prefect_gitops.image_status import status_lines
    from prefect_gitops.report import status_text

    async def run() -> tuple[EnvironmentState, Any, Any]:
        from prefect_gitops.adapters.image_scan_io import read_scan_status

        async with get_client() as client, environment_api(client, env) as api:  # on ENV's own server
            state, handle = await api.read_state(env, history=False)
            if handle is not None:
                state.history = await api.read_history(state, entries)
            return state, handle, await read_scan_status(client, env)  # the scan's, on the control server

    try:
        state, handle, scan = asyncio.run(run())
    except GitOpsError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(EXIT_FAILED)
    if handle is None and scan is None:
        sys.stderr.write(f"environment {env!r} has never been reconciled on its Prefect server\n")
        raise typer.Exit(1)
    report = {**state.model_dump(mode="json"), "image_scan": scan.model_dump(mode="json") if scan else None}
    _emit(report, output, "\n".join([status_text(state), *status_lines(scan)]))


@app.command()
def suspend(env: str = ENV, reason: str = typer.Option("", "--reason", help="Shown in status and the artifact.")) -> None:
    """Pause reconciliation and drift correction of ENV (reconciles still plan and report)."""
    _set_suspended(env, True, reason)


@app.command()
def resume(env: str = ENV) -> None:
    """Resume reconciliation and drift correction of ENV."""
    _set_suspended(env, False, "")


def _set_suspended(env: str, suspend_: bool, reason: str) -> None:
    from prefect import get_client

    from prefect_gitops.adapters.environment_server import environment_api, environment_lock_on
    from prefect_gitops.errors import GitOpsError, RolloutBusy
    from prefect_gitops.suspend import set_suspended

    async def run() -> EnvironmentState:
        async with get_client() as client, environment_api(client, env) as api:  # on ENV's own server
            return await set_suspended(api, env, suspend_, reason, lock=environment_lock_on(api))

    try:
        asyncio.run(run())
    except GitOpsError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(EXIT_BUSY if isinstance(exc, RolloutBusy) else EXIT_FAILED)
    sys.stdout.write(f"{env}: {'suspended' if suspend_ else 'resumed'}\n")


@app.command()
def promote(source: Optional[str] = typer.Option(None, "--source", help="GitOps repo URL to push to (https, ssh, file:// or a path)."),
            source_block: Optional[str] = typer.Option(
                None, "--source-block", help="A saved GitOps Source block: its URL, ref, folder, and the credentials "
                                             "the reconcile reads with, to push with."),
            from_env: str = typer.Option(..., "--from", help="Environment to take images from."),
            to_env: str = typer.Option(..., "--to", help="Environment whose file gets them."),
            ref: Optional[str] = typer.Option(None, "--ref", help="Branch to commit to (default: the block's ref, else main)."),
            path: Optional[str] = typer.Option(None, "--path", help="Folder of the environment files (default: the block's, else environments)."),
            output: Output = OUTPUT) -> None:
    """Write FROM's applied images into TO's file as a commit and push it (TO's next reconcile applies it)."""
    from prefect_gitops.adapters.url_credentials import hide_credentials
    from prefect_gitops.flows import promote as promote_flow

    # the flow says what is missing when neither --source nor --source-block is given; a password in
    # --source stays in this process (the flow run's parameters are stored on the server)
    _run_flow(promote_flow, output, to_env, from_environment=from_env, to_environment=to_env,
              source_block=source_block, source_url=hide_credentials(source) if source else None,
              branch=ref, path=path)


@app.command("set-image")
def set_image(source: Optional[str] = typer.Option(None, "--source", envvar="PREFECT_GITOPS_SOURCE",
                                                   help="GitOps repo URL to push to (https, ssh, file:// or a path)."),
              source_block: Optional[str] = typer.Option(
                  None, "--source-block", help="A saved GitOps Source block: its URL, ref, folder, and the "
                                               "credentials the reconcile reads with, to push with."),
              env: str = ENV,
              deployment: Optional[str] = typer.Option(None, "--deployment", help='"flow/deployment" as the file names it.'),
              work_pool: Optional[str] = typer.Option(None, "--work-pool", help="A work pool of the file."),
              image: str = typer.Option(..., "--image", help="The new image reference."),
              merge_request: bool = typer.Option(False, "--merge-request",
                                                 help="Open or update a GitLab merge request instead of committing."),
              message: Optional[str] = typer.Option(
                  None, "--message", help="Which pipeline asks, for the commit message (default in GitLab CI: "
                                          "$CI_PROJECT_PATH pipeline $CI_PIPELINE_URL)."),
              author: Optional[str] = typer.Option(
                  None, "--author", help='Whom the commit is made for, "Name <email>" (default in GitLab CI: '
                                         '"$GITLAB_USER_NAME <$GITLAB_USER_EMAIL>"); prefect-gitops commits it.'),
              ref: Optional[str] = typer.Option(None, "--ref", help="Branch to commit to (default: the block's ref, else main)."),
              path: Optional[str] = typer.Option(None, "--path", help="Folder of the environment files (default: the block's, else environments)."),
              policy_block: Optional[str] = typer.Option(
                  None, "--policy-block", help="GitOps Policy block the image must keep to (default: gitops-policy if it exists)."),
              output: Output = OUTPUT) -> None:
    """Write IMAGE into ENV's file for one deployment or work pool, as a commit (or a merge request)."""
    import os

    from prefect_gitops.adapters.url_credentials import hide_credentials
    from prefect_gitops.flows import set_image as set_image_flow

    if (deployment is None) == (work_pool is None):
        sys.stderr.write("give exactly one of --deployment NAME or --work-pool NAME\n")
        raise typer.Exit(1)
    if message is None and os.environ.get("CI_PIPELINE_URL"):  # GitLab CI's predefined variables
        message = f"{os.environ.get('CI_PROJECT_PATH', 'CI')} pipeline {os.environ['CI_PIPELINE_URL']}"
    if author is None and os.environ.get("GITLAB_USER_EMAIL"):  # the user who started the pipeline
        author = f"{os.environ.get('GITLAB_USER_NAME') or os.environ['GITLAB_USER_EMAIL']} <{os.environ['GITLAB_USER_EMAIL']}>"
    _run_flow(set_image_flow, output, env, environment=env, image=image, deployment=deployment, work_pool=work_pool,
              merge_request=merge_request, message=message, author=author, source_block=source_block,
              source_url=hide_credentials(source) if source else None, branch=ref, path=path,
              policy_block=policy_block)


EXIT_TIMEOUT = 124  # as timeout(1)


@app.command()
def trigger(env: str = ENV,
            revision: Optional[str] = typer.Option(None, "--revision", help="Full commit SHA to apply (e.g. $CI_COMMIT_SHA)."),
            wait: bool = typer.Option(False, "--wait", help="Follow the run until it ends."),
            timeout: float = typer.Option(900, "--timeout", help="Seconds to wait with --wait."),
            deployment: Optional[str] = typer.Option(
                None, "--deployment", help="Reconcile deployment (default: gitops-reconcile/reconcile-ENV)."),
            dry_run: bool = typer.Option(False, "--dry-run", help="Plan only.")) -> None:
    """Start the reconcile deployment of ENV (what CI calls).

    Exit 0: started (or, with --wait, completed); 1: failed, crashed or cancelled; 3: another rollout
    of ENV was in progress; 124: still running when --timeout passed (the run goes on).
    """
    from prefect import get_client
    from prefect.deployments import arun_deployment

    name = deployment or f"gitops-reconcile/reconcile-{env}"
    parameters: dict[str, Any] = {}
    if revision:
        parameters["revision"] = revision
    if dry_run:
        parameters["dry_run"] = True

    async def run() -> int:
        from prefect.exceptions import ObjectNotFound

        async with get_client() as client:
            try:
                # a create retried after a lost answer gets back the run the server made, not a second one
                flow_run = await arun_deployment(name=name, client=client, parameters=parameters, timeout=0,
                                                 as_subflow=False, tags=["prefect-gitops-trigger"],
                                                 idempotency_key=uuid4().hex)
            except ObjectNotFound:
                sys.stderr.write(f"cannot start {name}: no such deployment on this Prefect server; "
                                 f"{await _reconcile_deployments(client)}\n")
                return EXIT_FAILED
            except Exception as exc:
                sys.stderr.write(f"cannot start {name}: {str(exc) or type(exc).__name__}\n")
                return EXIT_FAILED
            sys.stdout.write(f"started {name}: flow run {flow_run.name} ({flow_run.id})\n")
            ui = _ui_url(str(flow_run.id))
            if ui:
                sys.stdout.write(f"view it at {ui}\n")
            sys.stdout.flush()
            if not wait:
                return EXIT_OK
            return await _follow(client, flow_run.id, timeout)

    raise typer.Exit(asyncio.run(run()))


async def _reconcile_deployments(client: PrefectClient) -> str:
    """Which reconcile deployments this server has, for a trigger that named one it lacks."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    deployments = await client.read_deployments(flow_filter=FlowFilter(name=FlowFilterName(any_=["gitops-reconcile"])))
    names = sorted(f"gitops-reconcile/{d.name}" for d in deployments)
    return ("the reconcile deployments here are: " + ", ".join(names) if names
            else "no gitops-reconcile deployment exists here (deploy prefect.yaml first)")


async def _follow(client: PrefectClient, flow_run_id: UUID, timeout: float) -> int:
    """Print every state the run goes through, from its state history (a short run can pass through
    Running between two polls), until it ends or `timeout` passes."""
    import time

    deadline = time.monotonic() + timeout
    shown: set[UUID] = set()
    while True:
        states = sorted(await client.read_flow_run_states(flow_run_id), key=lambda s: s.timestamp)
        for state in states:
            if state.id not in shown:
                shown.add(state.id)
                sys.stdout.write(f"{state.timestamp:%H:%M:%S} {state.name}"
                                 + (f": {state.message}" if state.message else "") + "\n")
                sys.stdout.flush()
        last = states[-1] if states else None
        if last is not None and last.is_final():
            if last.is_completed():
                return EXIT_OK
            return EXIT_BUSY if last.name == RunEnd.BUSY.value else EXIT_FAILED
        if time.monotonic() > deadline:
            sys.stderr.write(f"timed out after {timeout:.0f}s; flow run {flow_run_id} is still "
                             f"{last.name if last else 'unknown'} and goes on\n")
            return EXIT_TIMEOUT
        await asyncio.sleep(1)


@app.command("prefect-file")
def prefect_file(image: str = typer.Option(..., "--image", help="The control image CI built and pushed."),
                 output: str = typer.Option(..., "--output", help="Where to write the prefect file."),
                 source: str = typer.Option("prefect.yaml", "--source", help="The project's prefect.yaml."),
                 workdir: Optional[str] = typer.Option(None, "--workdir", help="Override the pull step's directory."),
                 schedule_interval: Optional[int] = typer.Option(
                     None, "--schedule-interval", min=1,
                     help="Seconds between scheduled reconciles (default: prefect.yaml's, 300).")) -> None:
    """Write prefect.yaml without its build/push steps, for `prefect deploy --prefect-file` of a prebuilt image."""
    from pathlib import Path

    from prefect_gitops.prefect_file import write_prebuilt

    data = write_prebuilt(Path(source), image, Path(output), workdir, schedule_interval)
    sys.stdout.write(f"wrote {output}: {len(data.get('deployments', []))} deployment(s) using {image}\n")


@app.command("wait-for-server")
def wait_for_server(timeout: float = typer.Option(120, "--timeout", help="Seconds to wait.")) -> None:
    """Wait until the Prefect API at PREFECT_API_URL answers its health check (after `prefect server start &`)."""
    from prefect.settings import PREFECT_API_URL

    from prefect_gitops.local_server import wait_healthy

    url = PREFECT_API_URL.value()
    if not url:
        sys.stderr.write("PREFECT_API_URL is not set: which server should I wait for?\n")
        raise typer.Exit(1)
    try:
        wait_healthy(url.rstrip("/"), timeout=timeout)
    except RuntimeError as exc:
        sys.stderr.write(f"{exc}\n")
        raise typer.Exit(1)
    sys.stdout.write(f"the Prefect API at {url} is up\n")


@app.command()
def schema() -> None:
    """Print the JSON Schema of an environment file (for editors)."""
    from prefect_gitops.model import json_schema

    sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")


@app.command()
def demo(keep: bool = typer.Option(False, "--keep", help="Keep the server running until Ctrl-C.")) -> None:
    """Start a local server (unless PREFECT_API_URL is set), build a sample GitOps repo and reconcile it."""
    from prefect_gitops.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def main() -> None:
    app()
