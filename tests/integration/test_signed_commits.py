"""Signed commits (the GitOps Source block's verify_signatures): a revision signed by a trusted key is
applied; an unsigned one, or one signed by another key, is refused with nothing written, read back from
the server. Real GPG and SSH keys, real signed commits, real reconcile flow runs on the real server."""

from __future__ import annotations

import pytest

from helpers import (GitRepo, cli, cli_json, create_deployment, create_pool, deployment_job_variables, pool_default, read_state,
                     run_reconcile_flow, server_snapshot, uid)
from prefect_gitops.blocks import GitOpsSource
from signing import Keys, signed_commit


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    u = uid()
    pool, flow = f"k8s-signed-{u}", f"etl-signed-{u}"
    create_pool(pool, image_default="flows:1.0.0")
    create_deployment(flow, "daily", pool, {"namespace": "jobs"})
    keys = Keys()
    try:
        yield dict(pool=pool, daily=f"{flow}/daily", tmp=tmp_path_factory,
                   alice=keys.gpg("Alice", "alice@example.com"), mallory=keys.gpg("Mallory", "mallory@example.com"),
                   ssh_alice=keys.ssh("alice@example.com"), ssh_bob=keys.ssh("bob@example.com"))
    finally:
        keys.close()


def _file(w, image: str) -> str:
    return (f"work_pools:\n  {w['pool']}:\n    job_variables:\n      image: {image}\n"
            f"deployments:\n  {w['daily']}:\n    job_variables:\n      image: {image}\n")


def _assert_refused(w, env: str, block: str, sha: str, why: str, **parameters) -> None:
    """The run fails naming the revision and why, writes no target, and records SignatureInvalid."""
    before = server_snapshot([w["pool"]], [w["daily"]])
    applied_before = read_state(env)[0].last_applied_revision
    state, report = run_reconcile_flow(environment=env, source_block=block, **parameters)
    assert state.is_failed() and report["status"] == "failed", report
    assert report["revision"] == sha and report["applied"] == 0 and report["changes"] == []
    message = report["errors"][0]["message"]
    assert message.startswith(f"revision {sha} is refused: ") and why in message, message
    assert "KEY BLOCK" not in message and "ssh-ed25519" not in message  # no key material
    assert server_snapshot([w["pool"]], [w["daily"]]) == before
    recorded, _ = read_state(env)
    assert recorded.last_applied_revision == applied_before and recorded.last_attempted_revision == sha
    assert recorded.condition.reason == "SignatureInvalid" and sha in recorded.condition.message


def test_gpg_signed_by_a_trusted_key_is_applied_unsigned_or_other_keys_are_refused(world):
    w, env, block = world, f"signed{uid()}", f"signed-gpg-{uid()}"
    repo = GitRepo(w["tmp"].mktemp("gpg"))
    GitOpsSource(url=repo.url, verify_signatures="gpg", trusted_gpg_keys=w["alice"].armored).save(block)

    good = signed_commit(repo, env, _file(w, "flows:2.0.0"), w["alice"])
    state, report = run_reconcile_flow(environment=env, source_block=block)
    assert state.is_completed() and report["status"] == "applied" and report["revision"] == good, report
    assert pool_default(w["pool"], "image") == "flows:2.0.0"
    assert deployment_job_variables(w["daily"])["image"] == "flows:2.0.0"

    unsigned = signed_commit(repo, env, _file(w, "flows:6.6.6"), None)
    _assert_refused(w, env, block, unsigned, "it is not signed")
    forged = signed_commit(repo, env, _file(w, "flows:6.6.6"), w["mallory"])
    mallory_id = w["mallory"].fingerprint[-16:]  # the key ID git shows
    _assert_refused(w, env, block, forged, f"signed by a key that is not among trusted_gpg_keys (key {mallory_id})")

    # a pinned revision (--revision, trigger) is checked as well, though the branch is signed again
    signed_commit(repo, env, _file(w, "flows:3.0.0"), w["alice"])
    _assert_refused(w, env, block, unsigned, "it is not signed", revision=unsigned)
    state, report = run_reconcile_flow(environment=env, source_block=block)
    assert state.is_completed() and report["status"] == "applied", report
    assert pool_default(w["pool"], "image") == "flows:3.0.0"
    assert read_state(env)[0].condition.reason == "Applied"


def test_ssh_signer_in_allowed_signers_is_applied_another_is_refused(world):
    w, env, block = world, f"signed{uid()}", f"signed-ssh-{uid()}"
    repo = GitRepo(w["tmp"].mktemp("ssh"))
    GitOpsSource(url=repo.url, verify_signatures="ssh", allowed_signers=w["ssh_alice"].allowed_signer).save(block)

    good = signed_commit(repo, env, _file(w, "flows:4.0.0"), w["ssh_alice"])
    state, report = run_reconcile_flow(environment=env, source_block=block)
    assert state.is_completed() and report["status"] == "applied" and report["revision"] == good, report
    assert deployment_job_variables(w["daily"])["image"] == "flows:4.0.0"

    other = signed_commit(repo, env, _file(w, "flows:6.6.6"), w["ssh_bob"])
    # a dry run (the UI's plan) is refused too, and leaves the record alone
    state, report = run_reconcile_flow(environment=env, source_block=block, dry_run=True)
    assert state.is_failed() and report["revision"] == other and "not in allowed_signers" in report["message"]
    assert read_state(env)[0].condition.reason == "Applied"
    _assert_refused(w, env, block, other, "signed by an SSH key that is not in allowed_signers")


def test_the_cli_checks_the_block_it_is_given(world):
    """`plan`/`apply --source-block` read the block's URL and signature check: a person at a terminal
    cannot apply an unsigned revision that the scheduled runs would refuse."""
    w, env, block = world, f"signed{uid()}", f"signed-cli-{uid()}"
    repo = GitRepo(w["tmp"].mktemp("cli"))
    GitOpsSource(url=repo.url, verify_signatures="ssh", allowed_signers=w["ssh_alice"].allowed_signer).save(block)
    good = signed_commit(repo, env, _file(w, "flows:5.0.0"), w["ssh_alice"])
    code, planned = cli_json("plan", "--source-block", block, "--env", env, check_codes=(2,))
    assert planned["revision"] == good and planned["changes"], planned
    code, applied = cli_json("apply", "--source-block", block, "--env", env)
    assert applied["status"] == "applied" and applied["revision"] == good, applied
    assert deployment_job_variables(w["daily"])["image"] == "flows:5.0.0"

    unsigned = signed_commit(repo, env, _file(w, "flows:6.6.6"), None)
    before = server_snapshot([w["pool"]], [w["daily"]])
    for command, code_expected in (("plan", 1), ("apply", 1)):
        code, report = cli_json(command, "--source-block", block, "--env", env, check_codes=(code_expected,))
        assert report["revision"] == unsigned and "it is not signed" in report["errors"][0]["message"], report
    assert server_snapshot([w["pool"]], [w["daily"]]) == before
    missing = cli("plan", "--source-block", f"no-such-{uid()}", "--env", env, check_codes=(1,))
    assert "no-such" in missing.stderr and "Traceback" not in missing.stderr
