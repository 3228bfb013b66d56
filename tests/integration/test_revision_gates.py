"""Nothing from Git takes the environment away or slips through without consent (README "Security"):
emptied files and mass releases, rewritten histories, and `apply` doing what `plan` showed.

Real server, real Git repositories (force-pushed and garbage-collected for real), real CLI processes
where the CLI is the feature; the other runs are the reconcile flow in this process (a real flow run).
"""

from __future__ import annotations

from helpers import (
    GitRepo,
    cli,
    cli_json_here,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_state,
    run,
    run_reconcile_flow,
    server_snapshot,
    set_deployment_job_variables,
    uid,
)

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.report import status_text

EXIT_REFUSED = 5


def _estate(tmp_path):
    u = uid()
    env, pool, flow = f"g{u}", f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    return dict(env=env, pool=pool, daily=f"{flow}/daily", repo=GitRepo(tmp_path / "gitops"))


def _doc(e, pool_image="flows:2.0.0", daily=True, **more):
    doc = {"work_pools": {e["pool"]: {"job_variables": {"image": pool_image}}}, **more}
    if daily:
        doc["deployments"] = {e["daily"]: {"job_variables": {"image": "flows:2.0.1", "env": {"A": "1"}}}}
    return doc


def _flow(e, **parameters):
    state, report = run_reconcile_flow(environment=e["env"], source_url=e["repo"].url, **parameters)
    return report


def _snapshot(e):
    return server_snapshot([e["pool"]], [e["daily"]])


def _rollback_flow(env: str, to_revision: str) -> dict:
    from prefect_gitops.adapters.events import flush_to_api
    from prefect_gitops.flows import rollback

    async def go():
        state = await rollback(environment=env, to_revision=to_revision, return_state=True)
        return await state.result(raise_on_failure=False)

    try:
        return run(go())
    finally:
        flush_to_api()


def test_emptied_file_and_mass_release_need_consent(tmp_path):
    e = _estate(tmp_path)
    limit = {"release_limit": {"max_fraction": 0.3, "min_keys": 2}}  # 2 of 3 managed keys is too many
    applied = e["repo"].commit_env(e["env"], _doc(e, rollout=limit))
    assert _flow(e)["status"] == "applied"
    before = _snapshot(e)

    # the deployment (2 of the 3 managed keys) leaves Git: refused, nothing written, recorded with its reason
    e["repo"].commit_env(e["env"], _doc(e, daily=False, rollout=limit))
    report = _flow(e)
    assert report["status"] == "refused" and report["applied"] == 0, report
    assert report["errors"][0]["key"] == "rollout.release_limit" and "release 2 of the 3" in report["message"]
    assert _snapshot(e) == before
    state, _ = read_state(e["env"])
    assert state.condition.reason == "MassRelease" and state.last_applied_revision == applied
    # the flow's consent: applied
    report = _flow(e, allow_mass_release=True)
    assert report["status"] == "applied" and report["applied"] == 2, report
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs"}

    # a file emptied to a comment: every managed key would go; the CLI says why, exit 5
    e["repo"].commit_env(e["env"], "# emptied by a bad merge\n")
    done = cli("apply", "--source", e["repo"].url, "--env", e["env"], check_codes=(EXIT_REFUSED,))
    assert "refused: " in done.stdout and "manages nothing" in done.stdout and "allow_empty: true" in done.stdout
    assert f"environments/{e['env']}.yaml:1: allow_empty" in done.stdout
    assert pool_default(e["pool"], "image") == "flows:2.0.0"
    state, _ = read_state(e["env"])
    assert state.condition.reason == "EmptyRevision" and state.inventory.count() == 1
    assert "(EmptyRevision: environments/" in status_text(state)  # what `status` prints

    # the file's consent: the pool's default from before prefect-gitops is restored
    e["repo"].commit_env(e["env"], "# nothing is managed here any more\nallow_empty: true\n")
    report = _flow(e)
    assert report["status"] == "applied" and report["applied"] == 1, report
    assert pool_default(e["pool"], "image") == "flows:1.0.0"
    assert read_state(e["env"])[0].inventory.count() == 0


def _force_push_unrelated(repo: GitRepo, content: dict, branch: str = "main") -> str:
    """Replace `branch` with a commit that shares no history with it, and let git forget the old one."""
    repo.git("checkout", "-q", "--orphan", f"rewrite-{uid()}")
    sha = repo.commit_env(content.pop("env"), content, message="rewritten")
    repo.git("branch", "-f", branch, sha)
    repo.git("checkout", "-q", branch)
    repo.git("reflog", "expire", "--expire=now", "--all")
    repo.git("gc", "-q", "--prune=now")
    return sha


def test_rewritten_history_is_refused_and_rollback_keeps_working(tmp_path):
    e = _estate(tmp_path)
    first = e["repo"].commit_env(e["env"], _doc(e))
    assert _flow(e)["status"] == "applied"
    e["repo"].commit_env(e["env"], _doc(e, pool_image="flows:3.0.0"))
    assert _flow(e)["status"] == "applied"  # a descendant: no consent needed

    # roll back to the first revision, then rewrite the branch on top of it (dropping the second):
    # it descends from the revision the rollback moved to, so it is applied
    assert _rollback_flow(e["env"], first)["status"] == "rolled-back"
    e["repo"].git("reset", "-q", "--hard", first)
    on_top = e["repo"].commit_env(e["env"], _doc(e, pool_image="flows:2.5.0"))
    report = _flow(e)
    assert report["status"] == "applied" and report["revision"] == on_top, report

    # force-pushed to an unrelated commit, the old one gone from the remote: refused, nothing written
    rewritten = _force_push_unrelated(e["repo"], {"env": e["env"], **_doc(e, pool_image="flows:9.9.9")})
    before = _snapshot(e)
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", e["env"], check_codes=(EXIT_REFUSED,))
    assert report["status"] == "refused" and report["revision"] == rewritten and report["applied"] == 0
    assert f"does not descend from {on_top[:12]}" in report["message"] and "--allow-history-rewrite" in report["message"]
    assert _snapshot(e) == before
    state, _ = read_state(e["env"])
    assert state.condition.reason == "HistoryRewritten" and state.last_applied_revision == on_top
    assert state.last_attempted_revision == rewritten

    # with the flag (the CLI runs the reconcile flow with allow_history_rewrite: the parameter too): applied
    code, report = cli_json_here("apply", "--source", e["repo"].url, "--env", e["env"], "--allow-history-rewrite")
    assert report["status"] == "applied" and report["revision"] == rewritten
    assert pool_default(e["pool"], "image") == "flows:9.9.9"

    # the environment moved to another repository (set in the source, not by a commit): no common
    # history to compare, so no refusal; the history check resumes within the new repository
    moved = GitRepo(tmp_path / "moved")
    elsewhere = moved.commit_env(e["env"], _doc(e, pool_image="flows:10.0.0"))
    code, report = cli_json_here("apply", "--source", moved.url, "--env", e["env"])
    assert report["status"] == "applied" and report["revision"] == elsewhere, report
    assert read_state(e["env"])[0].last_applied_source == GitSource(moved.url).display


def test_apply_applies_the_drift_plan_shows(tmp_path):
    e = _estate(tmp_path)
    e["repo"].commit_env(e["env"], _doc(e))  # drift.check_interval_seconds: the default 300 s
    assert _flow(e)["status"] == "applied"
    flags = ("--source", e["repo"].url, "--env", e["env"])
    drifted = {"namespace": "jobs", "image": "flows:hotfix", "env": {"A": "1"}}

    set_deployment_job_variables(e["daily"], drifted)
    code, planned = cli_json_here("plan", *flags, check_codes=(2,))
    assert [(c["key"], c["reason"]) for c in planned["changes"]] == [("image", "drift")]
    # right after, with Git unchanged and no drift check due: a person's apply corrects it
    code, applied = cli_json_here("apply", *flags)
    assert applied["status"] == "applied" and applied["applied"] == 1, applied
    assert deployment_job_variables(e["daily"])["image"] == "flows:2.0.1"

    # --quick is the scheduled runs' shortcut: Git unchanged, no check due -> up to date, drift left
    set_deployment_job_variables(e["daily"], drifted)
    code, quick = cli_json_here("apply", *flags, "--quick")
    assert quick["status"] == "up-to-date" and quick["applied"] == 0, quick
    assert deployment_job_variables(e["daily"])["image"] == "flows:hotfix"
