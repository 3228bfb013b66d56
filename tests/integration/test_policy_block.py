"""The GitOps Policy block, saved on the real server, refuses what the repository may not set: a denied
job variable key, an image from a registry not allowed, a tag without digest in prod. `plan` and `apply`
(real CLI processes) exit 1 naming file, line and key, and nothing is written (the server's pools,
deployments and the recorded state read back); the same file without the violation applies."""

from __future__ import annotations

import pytest

from helpers import (
    GitRepo,
    _with_client,
    cli_json,
    create_deployment,
    create_pool,
    deployment_job_variables,
    pool_default,
    read_artifacts,
    read_state,
    run,
    run_reconcile_flow,
    server_snapshot,
    uid,
)

DIGEST = "@sha256:" + "0123456789abcdef" * 4


@pytest.fixture(scope="module")
def estate(tmp_path_factory):
    from prefect_gitops.blocks import GitOpsPolicy

    u = uid()
    pool, flow = f"k8s-{u}", f"etl-{u}"
    create_pool(pool, image_default="harbor.corp/team/flows:1")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    policy = f"policy-{u}"
    GitOpsPolicy(all_targets={"allowed_images": ["harbor.corp/team/"], "require_digest_in": ["prod-*"]},
                 # the pool's rules reach the deployments that run on it
                 work_pools={pool: {"denied_keys": ["service_account_name"]}}).save(policy)
    return dict(u=u, pool=pool, daily=f"{flow}/daily", policy=policy, tmp=tmp_path_factory)


def _file(e, pool_image: str, deployment_lines: str = "") -> str:
    return f"""\
work_pools:
  {e['pool']}:
    job_variables:
      image: {pool_image}
deployments:
  {e['daily']}:
    job_variables:
      namespace: jobs-2
{deployment_lines}"""


def test_violations_are_refused_by_plan_and_apply_and_nothing_is_written(estate):
    """One file in prod with the three violations (the checker's cases are in unit/test_policy.py): the
    CLI's plan (a dry run in the CLI process) and apply (a flow run) report each with file, line and key."""
    e = estate
    env = f"prod-{uid()}"
    repo = GitRepo(e["tmp"].mktemp("violations"))
    repo.commit_env(env, _file(e, "evil.example.com/team/flows:2",
                               "      image: harbor.corp/team/flows:2\n"
                               "      service_account_name: cluster-admin\n"))
    before = server_snapshot([e["pool"]], [e["daily"]])
    expected = [(4, f"work_pools.{e['pool']}.job_variables.image", "not from a registry the GitOps policy allows"),
                (9, f"deployments.{e['daily']}.job_variables.image", "not pinned by digest"),
                (10, f"deployments.{e['daily']}.job_variables.service_account_name", "is denied by the GitOps policy")]

    for command in ("plan", "apply"):
        code, report = cli_json(command, "--source", repo.url, "--env", env, "--policy-block", e["policy"],
                                check_codes=(1,))
        assert report["status"] == "failed", report
        errors = report["errors"]
        assert [(x["file"], x["line"], x["key"]) for x in errors] == [
            (f"environments/{env}.yaml", line, key) for line, key, _ in expected], report
        for error, (_, _, fragment) in zip(errors, expected):
            assert fragment in error["message"] and repr(e["policy"]) in error["message"], error
    assert report["applied"] == 0
    artifact = read_artifacts(f"gitops-{env}")[0].data  # the apply run's artifact lists them too
    for line, key, fragment in expected:
        assert f"environments/{env}.yaml:{line}: {key}: " in artifact and fragment in artifact, artifact
    assert server_snapshot([e["pool"]], [e["daily"]]) == before
    state, _ = read_state(env)
    assert state.last_applied_revision is None and state.inventory.count() == 0
    assert state.condition is not None and state.condition.reason == "ValidationFailed"

    # the same file without the violations applies (through the flow's policy_block parameter)
    pinned = f"harbor.corp/team/flows:2{DIGEST}"
    repo.commit_env(env, _file(e, pinned, f"      image: {pinned}\n"))
    state, report = run_reconcile_flow(environment=env, source_url=repo.url, policy_block=e["policy"])
    assert state.is_completed() and report["status"] == "applied" and report["errors"] == [], report
    assert pool_default(e["pool"], "image") == pinned
    assert deployment_job_variables(e["daily"]) == {"namespace": "jobs-2", "image": pinned}


def test_a_named_policy_block_that_is_missing_or_unreadable_is_an_error(estate):
    e = estate
    env = f"qa-{uid()}"
    repo = GitRepo(e["tmp"].mktemp("missing"))
    repo.commit_env(env, _file(e, "harbor.corp/team/flows:3"))
    before = server_snapshot([e["pool"]], [e["daily"]])
    state, report = run_reconcile_flow(environment=env, source_url=repo.url, policy_block=f"no-such-{e['u']}")
    assert state.is_failed() and report["status"] == "failed", report
    assert f"the GitOps Policy block 'no-such-{e['u']}' does not exist" in report["message"], report
    assert server_snapshot([e["pool"]], [e["daily"]]) == before

    # a policy block this version cannot read in full (here: a field it does not know, as from a newer
    # or an edited schema) fails the run too, rather than being half-applied
    from prefect.client.schemas.actions import BlockDocumentUpdate

    from prefect_gitops.blocks import GitOpsPolicy

    GitOpsPolicy().save(f"odd-{e['u']}")

    async def add_unknown_field(client):
        document = await client.read_block_document_by_name(f"odd-{e['u']}", "gitops-policy")
        await client.update_block_document(document.id, BlockDocumentUpdate(
            data={**document.data, "all_targets": {"denied_keys": ["image"], "deny_everything": True}}))

    run(_with_client(add_unknown_field))
    state, report = run_reconcile_flow(environment=env, source_url=repo.url, policy_block=f"odd-{e['u']}")
    assert state.is_failed() and f"the GitOps Policy block 'odd-{e['u']}' is not valid" in report["message"], report
    assert "all_targets.deny_everything" in report["message"], report
    assert server_snapshot([e["pool"]], [e["daily"]]) == before


def test_the_default_policy_block_applies_when_it_exists(estate):
    """No block named: `gitops-policy` if there is one, else no policy. Its rules here name only this
    test's pool, so other tests sharing the server are not affected while it exists."""
    from prefect_gitops.blocks import GitOpsPolicy

    e = estate
    env = f"qa-{uid()}"
    repo = GitRepo(e["tmp"].mktemp("default"))
    repo.commit_env(env, _file(e, "harbor.corp/team/flows:4", "      cpu_request: '2'\n"))

    async def delete_default(client):
        from prefect.exceptions import ObjectNotFound

        try:
            document = await client.read_block_document_by_name("gitops-policy", "gitops-policy")
        except ObjectNotFound:
            return
        await client.delete_block_document(document.id)

    run(_with_client(delete_default))
    GitOpsPolicy(work_pools={e["pool"]: {"allowed_keys": ["image", "namespace"]}}).save("gitops-policy")
    try:
        before = server_snapshot([e["pool"]], [e["daily"]])
        state, report = run_reconcile_flow(environment=env, source_url=repo.url)
        assert state.is_failed() and [(x["line"], x["key"]) for x in report["errors"]] == [
            (9, f"deployments.{e['daily']}.job_variables.cpu_request")], report
        assert "not among the keys the GitOps policy allows" in report["errors"][0]["message"]
        assert server_snapshot([e["pool"]], [e["daily"]]) == before
    finally:
        run(_with_client(delete_default))
    # without the default block there is no policy: the same file applies
    state, report = run_reconcile_flow(environment=env, source_url=repo.url)
    assert state.is_completed() and report["status"] == "applied", report
    assert deployment_job_variables(e["daily"])["cpu_request"] == "2"
