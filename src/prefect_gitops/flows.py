"""The control flows. Thin: parameters for the UI's run form, then the reconcile layer."""

from __future__ import annotations

import asyncio
import functools
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, ParamSpec, overload

from prefect import State, flow, get_client, get_run_logger
from prefect.blocks.core import Block
from prefect.states import Cancelled, Failed
from prefect.runtime import flow_run
from pydantic import Field

from prefect_gitops.adapters.environment_server import environment_api, environment_lock_on
from prefect_gitops.adapters.git import GitSource
from prefect_gitops.adapters.process import RunLogger
from prefect_gitops.model import ENVIRONMENT_NAME_PATTERN, deep_merge
from prefect_gitops.adapters.smoke_runner import SmokeRunner
from prefect_gitops.errors import GitOpsError
from prefect_gitops.reconcile import ReconcileRequest, reconcile as run_reconcile
from prefect_gitops.report import text
from prefect_gitops.result import ReconcileResult
from prefect_gitops.rollback import RollbackRequest, rollback as run_rollback
from prefect_gitops.signatures import SignaturePolicy
from prefect_gitops.status import RunEnd, outcome

if TYPE_CHECKING:  # for annotations only: load_block() imports the block types when a block is named
    from prefect_gitops.adapters.image_write_back import MergeRequestApi
    from prefect_gitops.image_write import Author, ImageWrite, WriteBackResult
    from prefect_gitops.blocks import GitOpsRolloutDefaults, GitOpsSmokeTestDefaults, GitOpsSource



def param(default: Any, title: str, description: str) -> Any:
    """A flow parameter with a title and a description for the UI's run form.

    Prefect builds the parameter schema from a pydantic Field given as the default, keeping its
    description but not its constraints (those go in the annotation) and setting every title to
    the parameter's name (so the title goes through json_schema_extra).
    """
    return Field(default, description=description, json_schema_extra={"title": title})


# What each control flow run of this process returned, by flow run id, for an in-process caller (the CLI,
# the demo). Prefect retries a final state write whose answer was lost (a server stall, a 503); the server
# refuses the repeat ("this run has already made this state transition") and the engine hands back the
# server's copy of the final state, which carries no data: results are not persisted. The caller then takes
# the report from here. Bounded: a long-lived process (a `serve`) runs many flows nobody here collects.
_RETURNED: OrderedDict[str, Any] = OrderedDict()
_RETURNED_KEPT = 16

FlowResult = dict[str, Any] | State[Any]  # what the control flows return: the report, or a State carrying it
P = ParamSpec("P")
FlowFunction = Callable[P, Coroutine[Any, Any, FlowResult]]


def keeps_what_it_returns(fn: FlowFunction[P]) -> FlowFunction[P]:
    """Keep what the flow function returns by its flow run id, for `run_here`; the signature is unchanged
    (Prefect builds the parameter schema through functools.wraps)."""
    @functools.wraps(fn)
    async def kept(*args: P.args, **kwargs: P.kwargs) -> FlowResult:
        value = await fn(*args, **kwargs)
        run_id = _flow_run_id()
        if run_id:
            _RETURNED[run_id] = value
            while len(_RETURNED) > _RETURNED_KEPT:
                _RETURNED.popitem(last=False)
        return value
    return kept


def run_here(flow_fn: Callable[..., Awaitable[State[FlowResult]]], **parameters: Any) -> tuple[State[Any], Any]:
    """Run a control flow in this process (a real flow run): its final state and its result, the report
    (a dict) when the flow ended Completed or Failed, the exception when it crashed before reporting."""
    from prefect.exceptions import MissingResult

    async def run() -> tuple[State[Any], Any]:
        state = await flow_fn(**parameters, return_state=True)
        kept = _RETURNED.pop(str(state.state_details.flow_run_id), None)
        try:
            return state, await state.aresult(raise_on_failure=False)
        except MissingResult:  # the server's copy of the final state (see _RETURNED)
            if kept is None:
                raise
            return state, kept.data if isinstance(kept, State) else kept

    return asyncio.run(run())


@flow(name="gitops-reconcile", description="Plan and apply a GitOps environment's job variables to Prefect.")
@keeps_what_it_returns
async def reconcile(
    environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "Environment", description="Which environment file to reconcile: ENVIRONMENT.yaml in the environments folder of the GitOps repo."),
    source_block: str | None = param(None, "GitOps Source block", description="Name of a saved GitOps Source block (URL, ref, folder, credentials). " "The fields below override it when set."),
    source_url: str | None = param(None, "GitOps repository URL", description="Any URL git can fetch: https://, ssh://, git@host:path, file:// or a local path."),
    ref: str | None = param(None, "Git ref", description="Branch, tag or full commit SHA to follow (default: the block's, else main)."),
    path: str | None = param(None, "Environments folder", description="Folder of the environment files inside the repo (default: the block's, else environments)."),
    revision: Annotated[str | None, Field(pattern=r"^[0-9a-f]{40}$")] = param(None, "Pinned revision", description="A full commit SHA to apply instead of resolving the ref (for example from CI)."),
    dry_run: bool = param(False, "Dry run", description="Plan and publish the plan artifact, write nothing."),
    drift_mode: Literal["from-file", "correct", "warn"] = param("from-file", "Drift mode", description="correct: revert values changed outside Git; warn: report only; " "from-file: the environment file's drift.mode (default correct)."),
    concurrency: Annotated[int, Field(ge=1, le=32)] = param(4, "Write concurrency", description="Targets updated at once."),
    force: bool = param(False, "Force", description="Apply even the revision a rollback moved away from."),
    full_check: bool = param(False, "Full drift check", description="Read every managed target now, even if no drift check is due or the server's event log shows no change to them."),
    override_windows: bool = param(False, "Override sync windows", description="Apply even inside a deny window or outside every allow window."),
    rollout_defaults_block: str | None = param(None, "Rollout defaults block", description="Name of a GitOps Rollout Defaults block for files that leave drift/rollout out."),
    smoke_test_defaults_block: str | None = param(None, "Smoke test defaults block", description="Name of a GitOps Smoke Test Defaults block for files that leave smoke_test out."),
    policy_block: str | None = param(None, "GitOps Policy block", description="Name of a GitOps Policy block the file must keep to (keys, image registries, digests); a block named here must exist. Left empty: the gitops-policy block if there is one, else no policy."),
    allow_mass_release: bool = param(False, "Allow mass release", description="Apply a revision whose file manages nothing or releases more managed keys than rollout.release_limit allows (otherwise refused)."),
    allow_history_rewrite: bool = param(False, "Allow history rewrite", description="Apply a revision that does not descend from the last applied one, e.g. after a force-push (otherwise refused)."),
) -> dict[str, Any] | State[Any]:
    logger = get_run_logger()
    block = await load_block("GitOpsSource", source_block) if source_block else None
    where = source_settings(block, source_url, ref, path)
    url = where.url
    if not url:
        message = "give source_url or source_block: where is the GitOps repo?"
        return failed_run(environment, message)
    source = git_source(block, url)
    defaults: dict[str, Any] = {}
    if rollout_defaults_block:
        defaults = deep_merge(defaults, (await load_block("GitOpsRolloutDefaults", rollout_defaults_block)).as_file_defaults())
    if smoke_test_defaults_block:
        defaults = deep_merge(defaults, (await load_block("GitOpsSmokeTestDefaults", smoke_test_defaults_block)).as_file_defaults())
    request = ReconcileRequest(
        environment=environment, source=source, ref=where.ref, path=where.path, revision=revision,
        dry_run=dry_run, drift_mode=None if drift_mode == "from-file" else drift_mode,
        concurrency=concurrency, flow_run_id=_flow_run_id(), force=force, override_windows=override_windows,
        full_check=full_check,
        defaults=defaults or None,
        signatures=where.signatures,
        policy_block=policy_block,
        allow_mass_release=allow_mass_release, allow_history_rewrite=allow_history_rewrite,
    )
    try:
        async with get_client() as client, environment_api(client, environment) as api:
            from prefect_gitops.adapters.task_runs import TaskRunSteps

            steps = TaskRunSteps()  # smoke tests, waves' writes, the post-apply check, the record: task runs
            runner = SmokeRunner(client, environment, logger, concurrency=SMOKE_CONCURRENCY, steps=steps,
                                 deployments=api.client)
            result = await run_reconcile(request, api, runner, lock=environment_lock_on(api), steps=steps)
    except GitOpsError as exc:  # the environment's GitOps Target block could not be read
        result = ReconcileResult.failed_before_start(environment, exc, request.flow_run_id)
    if block is not None and not dry_run:
        await _report_commit_status(block, result, logger)
    return await _finish(result, "reconcile")


@overload
async def load_block(block_class: Literal["GitOpsSource"], name: str) -> GitOpsSource: ...
@overload
async def load_block(block_class: Literal["GitOpsRolloutDefaults"], name: str) -> GitOpsRolloutDefaults: ...
@overload
async def load_block(block_class: Literal["GitOpsSmokeTestDefaults"], name: str) -> GitOpsSmokeTestDefaults: ...
async def load_block(block_class: str, name: str) -> Block:
    # the block types bring GitLab's client with them (~0.1 s to import): only when a block is named
    import prefect_gitops.blocks

    block: Block = await getattr(prefect_gitops.blocks, block_class).aload(name)
    return block


@dataclass(frozen=True)
class SourceSettings:
    """Where a command or flow reads (and writes) the GitOps repo: its own arguments, else the GitOps
    Source block's fields, else the defaults."""

    url: str | None
    ref: str
    path: str
    signatures: SignaturePolicy | None  # the block's, even when a URL is given instead


def source_settings(block: GitOpsSource | None, url: str | None, ref: str | None, path: str | None) -> SourceSettings:
    return SourceSettings(url=url or (block.url if block else None), ref=ref or (block.ref if block else "main"),
                          path=path or (block.path if block else "environments"),
                          signatures=block.signature_policy() if block else None)


def git_source(block: GitOpsSource | None, url: str) -> GitSource:
    """The source to read (and push) with: the block's, with its credentials, when the URL is the block's;
    a URL given instead gets none of the block's secrets."""
    return block.to_source() if block is not None and url == block.url else GitSource(url)


async def _report_commit_status(block: GitOpsSource, result: ReconcileResult, logger: RunLogger) -> None:
    """GitLab source with an API URL and a project: the result becomes a commit status on the revision."""
    creds = block.gitlab_credentials
    if creds is None or not creds.url or not block.gitlab_project or not result.revision or creds.token is None:
        return
    from prefect_gitops.adapters.gitlab import report_commit_status

    row = outcome(result.status)
    api_url = creds.url.rstrip("/")
    try:
        report_commit_status(api_url, creds.token, block.gitlab_project, result.revision, row.commit_status,
                             name=f"prefect-gitops/{result.environment}", description=row.summary[:255])
    except GitOpsError as exc:  # a status we could not post does not change the reconcile's outcome
        logger.warning("could not report the commit status to GitLab: %s", exc)


@flow(name="gitops-rollback", description="Restore an environment's job variables as applied at an earlier revision.")
@keeps_what_it_returns
async def rollback(
    environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "Environment", description="The environment to roll back."),
    to_revision: Annotated[str | None, Field(pattern=r"^[0-9a-f]{7,40}$")] = param(None, "To revision", description="A revision from the history (at least 7 characters of its SHA)."),
    steps: Annotated[int | None, Field(ge=1, le=50)] = param(None, "Steps back", description="Go back this many applied revisions (used when no revision is given)."),
    concurrency: Annotated[int, Field(ge=1, le=32)] = param(4, "Write concurrency", description="Targets updated at once."),
) -> dict[str, Any] | State[Any]:
    request = RollbackRequest(environment=environment, to_revision=to_revision, steps=steps,
                              concurrency=concurrency, flow_run_id=_flow_run_id())
    try:
        async with get_client() as client, environment_api(client, environment) as api:
            result = await run_rollback(request, api, lock=environment_lock_on(api))
    except GitOpsError as exc:  # the environment's GitOps Target block could not be read
        result = ReconcileResult.failed_before_start(environment, exc, request.flow_run_id)
    return await _finish(result, "rollback")


@flow(name="gitops-promote", description="Commit the images an environment runs into the next environment's file.")
@keeps_what_it_returns
async def promote(
    from_environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "From environment", description="Whose applied images to promote (e.g. qa)."),
    to_environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "To environment", description="Whose file in the GitOps repo gets them (e.g. prod)."),
    source_block: str | None = param(None, "GitOps Source block", description="Name of a saved GitOps Source block: the repository (and its branch and folder) to commit to. The fields below override it when set."),
    source_url: str | None = param(None, "GitOps repository URL", description="The repository to commit to (push access needed)."),
    branch: str | None = param(None, "Branch", description="Branch to commit the promotion to (default: the block's ref, else main)."),
    path: str | None = param(None, "Environments folder", description="Folder of the environment files inside the repo (default: the block's, else environments)."),
) -> dict[str, Any] | State[Any]:
    from prefect_gitops.promote import promote as run_promote

    logger = get_run_logger()
    block = await load_block("GitOpsSource", source_block) if source_block else None
    where = source_settings(block, source_url, branch, path)
    source_url, branch, path = where.url, where.ref, where.path
    if not source_url:
        message = "give source_url or source_block: which GitOps repo should the promotion commit to?"
        return failed_run(to_environment, message)
    try:  # the record of from_environment, on the server it lives on
        async with get_client() as client, environment_api(client, from_environment) as api:
            state, handle = await api.read_state(from_environment, history=False)
    except GitOpsError as exc:
        return failed_run(to_environment, str(exc), exc)
    if handle is None:
        message = f"environment {from_environment!r} has never been reconciled: nothing to promote"
        return failed_run(to_environment, message)
    source = git_source(block, source_url)  # push with the credentials the reconcile reads with
    try:
        sha, plan = run_promote(state, to_environment, source.writer(), branch, path)
    except GitOpsError as exc:
        return failed_run(to_environment, str(exc), exc)
    changes = [{"target_type": section.rstrip("s"), "target": target,
                "key": "image", "old": plan.current.get((section, target)), "new": image}
               for (section, target), image in sorted(plan.updates.items())]
    for (section, target), why in sorted(plan.skipped.items()):
        logger.warning("left %s %s alone: %s", section, target, why)
    message = (f"committed {sha} to {branch}: {len(changes)} image(s) from {from_environment}" if sha
               else f"{to_environment} already runs {from_environment}'s images: nothing to commit")
    logger.info("%s", message)
    return {"status": "promoted" if sha else "in-sync", "environment": to_environment, "revision": sha,
            "message": message, "changes": changes, "applied": len(changes), "errors": [],
            "skipped": [{"target": t, "reason": why} for (_, t), why in sorted(plan.skipped.items())]}


@flow(name="gitops-set-image", description="Commit a new image for one deployment or work pool into an "
                                            "environment's file in the GitOps repo (push mode, for CI).")
@keeps_what_it_returns
async def set_image(
    environment: Annotated[str, Field(pattern=ENVIRONMENT_NAME_PATTERN)] = param(..., "Environment", description="Whose file gets the image: ENVIRONMENT.yaml in the environments folder of the GitOps repo."),
    image: str = param(..., "Image", description="The new image reference, e.g. registry.example.com/team/etl:1.4.2 or one pinned by @sha256:..."),
    deployment: str | None = param(None, "Deployment", description='The deployment to set it for, "flow/deployment" as the environment file names it (give this or a work pool).'),
    work_pool: str | None = param(None, "Work pool", description="The work pool whose default image to set (give this or a deployment)."),
    merge_request: bool = param(False, "Merge request", description="Open (or update) a GitLab merge request into the branch instead of committing to it."),
    message: str | None = param(None, "Message", description="Added to the commit message and the merge request: which pipeline asks (e.g. its URL)."),
    author: str | None = param(None, "Author", description='Whom the commit is made for, "Name <email>" (e.g. the pipeline\'s user: "$GITLAB_USER_NAME <$GITLAB_USER_EMAIL>"); prefect-gitops is its committer. Left empty: prefect-gitops.'),
    source_block: str | None = param(None, "GitOps Source block", description="Name of a saved GitOps Source block: the repository (and its branch and folder) to write to, with its credentials. The fields below override it when set."),
    source_url: str | None = param(None, "GitOps repository URL", description="The repository to write to (push access needed)."),
    branch: str | None = param(None, "Branch", description="Branch to commit to, or the merge request's target (default: the block's ref, else main)."),
    path: str | None = param(None, "Environments folder", description="Folder of the environment files inside the repo (default: the block's, else environments)."),
    policy_block: str | None = param(None, "GitOps Policy block", description="Name of the GitOps Policy block the image must keep to (its registries, digests), as the reconcile's policy_block; a block named here must exist. Left empty: the gitops-policy block if there is one."),
) -> dict[str, Any] | State[Any]:
    from prefect_gitops.image_write import ImageWrite, parse_author

    logger = get_run_logger()
    try:
        made_for = parse_author(author) if author else None
    except GitOpsError as exc:
        return failed_run(environment, str(exc), exc)
    block = await load_block("GitOpsSource", source_block) if source_block else None
    where = source_settings(block, source_url, branch, path)
    source_url, branch, path = where.url, where.ref, where.path
    if not source_url:
        return failed_run(environment, "give source_url or source_block: which GitOps repo should the image be written to?")
    if (deployment is None) == (work_pool is None):
        return failed_run(environment, "give exactly one of deployment or work_pool: whose image is it?")
    source = git_source(block, source_url)  # push with the credentials the reconcile reads with
    write = ImageWrite(environment=environment, target_type="deployment" if deployment else "work_pool",
                       target=deployment or work_pool or "", image=image)
    try:
        result = await write_images(block, source, [write], branch=branch, folder=path, merge_request=merge_request,
                                    message=message or "", policy_block=policy_block, author=made_for)
    except GitOpsError as exc:
        return failed_run(environment, str(exc), exc)
    written = result.writes[0]
    if written.outcome == "committed":
        summary = f"committed {written.revision} to {branch}: {write.describe()} {written.old or '(none)'} -> {image}"
    elif written.outcome == "merge-request":
        summary = f"merge request {written.merge_request_url}: {write.describe()} {written.old or '(none)'} -> {image}"
    else:
        summary = (f"{write.describe()} already runs {image} on {branch}: nothing to commit"
                 + (f" (merge request {written.merge_request_url})" if written.merge_request_url else ""))
    logger.info("%s", summary)
    changes = [{"target_type": w.target_type, "target": w.target, "key": "image", "old": w.old, "new": w.new,
                "outcome": w.outcome} for w in result.changed]
    return {"status": result.status, "environment": environment, "revision": result.revision,
            "merge_request_url": result.merge_request_url, "branch": written.branch, "message": summary,
            "changes": changes, "applied": len(changes), "errors": []}


def failed_run(environment: str, message: str, exc: Exception | None = None) -> State[Any]:
    """The Failed end of a control flow that stopped before its work began (a parameter missing, its input
    refused): the message logged, the report of nothing done, a bad file's problems with file, line and key."""
    from prefect_gitops.errors import ConfigError

    errors = ([p.to_dict() for p in exc.problems] if isinstance(exc, ConfigError) else [{"message": message}])
    get_run_logger().error("%s", message)
    return Failed(message=message[:5000], data={"status": "failed", "message": message, "environment": environment,
                                                "errors": errors, "changes": [], "applied": 0, "revision": None})


async def write_images(block: GitOpsSource | None, source: GitSource, writes: list[ImageWrite], *, branch: str,
                       folder: str, merge_request: bool, message: str, policy_block: str | None = None,
                       author: Author | None = None) -> WriteBackResult:
    """Push mode's and pull mode's write-back: checked against the GitOps Policy block the reconcile
    checks (`policy_block`, else gitops-policy if there is one), committed or proposed with the source's
    credentials, for `author` (else prefect-gitops), the message ending with a trailer naming this flow run."""
    from prefect_gitops.adapters.image_write_back import write_back
    from prefect_gitops.adapters.policy_store import read_policy
    from prefect_gitops.image_write import commit_note

    async with get_client() as client:
        policy = await read_policy(client, policy_block)
    this_run = f"{flow_run.id} ({flow_run.name})" if flow_run.id else None
    return await write_back(source, writes, branch=branch, folder=folder, merge_request=merge_request,
                            message=commit_note(message, this_run), policy=policy, author=author,
                            gitlab=_merge_request_api(block, source) if merge_request else None)


def _merge_request_api(block: GitOpsSource | None, source: GitSource) -> MergeRequestApi | None:
    """The block's GitLab instance and project when it names them, else the repository URL's."""
    from prefect_gitops.adapters.image_write_back import merge_request_api

    creds = block.gitlab_credentials if block is not None else None
    return merge_request_api(source, api_url=creds.url if creds is not None else None,
                             project=block.gitlab_project if block is not None else None)


SMOKE_CONCURRENCY = 4


def _flow_run_id() -> str | None:
    return str(flow_run.get_id() or "") or None


async def _finish(result: ReconcileResult, what: str) -> dict[str, Any] | State[Any]:
    """Log, publish the artifact and the events, and end the run Failed when it failed."""
    from prefect_gitops.adapters.events import emit_reconcile_events, publish_artifact

    get_run_logger().info("%s", text(result))
    await publish_artifact(result)
    emit_reconcile_events(result)
    report = result.to_json()
    end = outcome(result.status).run_end
    if end is RunEnd.BUSY:
        # not a success and not a failure of this run: another rollout holds the environment
        get_run_logger().warning("%s", result.message)
        return Cancelled(name=RunEnd.BUSY.value, message=result.message[:5000], data=report)
    if end is RunEnd.FAILED:
        # A Failed state, not an exception: the run ends Failed with the reason and the report, no traceback.
        message = f"{what} of {result.environment} failed ({result.error_kind}): {result.message}"
        get_run_logger().error("%s", message)
        return Failed(message=message[:5000], data=report)
    return report
