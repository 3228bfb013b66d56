"""Signed commits without a Prefect server: the pure verdict and policy (signatures.py), the block's
settings, and git's real answer for real signatures (adapters/signatures.py, through GitSource)."""

from __future__ import annotations

import os

import pytest

from prefect_gitops.adapters.git import GitSource
from prefect_gitops.blocks import GitOpsSource
from prefect_gitops.errors import PermanentError
from prefect_gitops.signatures import SignatureMode, SignaturePolicy, parse_signature_status
from helpers import GitRepo
from signing import Keys, signed_commit

SHA = "a" * 40

# ---------------------------------------------------------------------------
# the pure part: git's exit code and %G? line -> a typed verdict
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("exit_code, line, trusted, why", [
    (0, "G\x00E20120235E70A030\x00Alice <alice@example.com>", True, "signed by Alice <alice@example.com>"),
    (1, "N\x00\x00", False, "it is not signed"),
    (1, "", False, "it is not signed"),
    (1, "E\x00E20120235E70A030\x00", False, "not among trusted_gpg_keys (key E20120235E70A030)"),
    (1, "B\x00E20120235E70A030\x00Alice", False, "its signature is bad"),
    (1, "R\x00E20120235E70A030\x00Alice", False, "signed by a revoked key"),
    (1, "Y\x00E20120235E70A030\x00Alice", False, "signed by an expired key"),
    (1, "U\x00SHA256:abc\x00", False, "signed with SSH, but this source accepts only OpenPGP"),
    (1, "G\x00E20120235E70A030\x00Alice", False, "git did not accept its signature"),  # the exit code decides too
    (0, "U\x00E20120235E70A030\x00Alice", False, "signed by a key that is not trusted"),  # and so does the letter
])
def test_gpg_verdicts(exit_code, line, trusted, why):
    verdict = parse_signature_status(SHA, SignatureMode.GPG, exit_code, line)
    assert verdict.trusted is trusted
    assert why in verdict.why()
    if not trusted:
        assert verdict.refusal().startswith(f"revision {SHA} is refused: ")
        assert verdict.refusal().endswith("nothing applied")


@pytest.mark.parametrize("line, why", [
    ("U\x00SHA256:+3sjLOCGC0g6\x00", "not in allowed_signers (key SHA256:+3sjLOCGC0g6)"),
    ("E\x00E20120235E70A030\x00", "signed with OpenPGP, but this source accepts only SSH signatures"),
    ("N\x00\x00", "it is not signed"),
])
def test_ssh_verdicts(line, why):
    verdict = parse_signature_status(SHA, SignatureMode.SSH, 1, line)
    assert not verdict.trusted and why in verdict.why()


PUBLIC = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDMEZ...\n-----END PGP PUBLIC KEY BLOCK-----\n"


@pytest.mark.parametrize("policy, problem", [
    (SignaturePolicy(SignatureMode.OFF), None),
    (SignaturePolicy(SignatureMode.GPG, trusted_gpg_keys=PUBLIC), None),
    (SignaturePolicy(SignatureMode.GPG), "trusted_gpg_keys holds no armored OpenPGP public key"),
    (SignaturePolicy(SignatureMode.GPG, trusted_gpg_keys="-----BEGIN PGP PRIVATE KEY BLOCK-----\n"),
     "trusted_gpg_keys holds a private key"),
    (SignaturePolicy(SignatureMode.SSH, allowed_signers="a@b ssh-ed25519 AAAA\n"), None),
    (SignaturePolicy(SignatureMode.SSH, allowed_signers="# nobody yet\n\n"), "allowed_signers lists no signer"),
    (SignaturePolicy(SignatureMode.SSH, allowed_signers="-----BEGIN OPENSSH PRIVATE KEY-----\n"),
     "allowed_signers holds a private key"),
])
def test_policy_problems(policy, problem):
    problems = policy.problems()
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_block_refuses_unusable_signature_settings_and_makes_the_policy():
    with pytest.raises(ValueError, match="trusted_gpg_keys holds no armored OpenPGP public key"):
        GitOpsSource(url="file:///r", verify_signatures="gpg")
    block = GitOpsSource(url="file:///r", verify_signatures="ssh", allowed_signers="a@b ssh-ed25519 AAAA")
    assert block.signature_policy() == SignaturePolicy(SignatureMode.SSH, allowed_signers="a@b ssh-ed25519 AAAA")
    assert GitOpsSource(url="file:///r").signature_policy().enabled is False


# ---------------------------------------------------------------------------
# git's real answer: real keys, real signed commits, the check against the policy's keys only
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys():
    made = Keys()
    try:
        yield {"alice": made.gpg("Alice", "alice@example.com"), "mallory": made.gpg("Mallory", "mallory@example.com"),
               "ssh-alice": made.ssh("alice@example.com"), "ssh-bob": made.ssh("bob@example.com")}
    finally:
        made.close()


@pytest.fixture(scope="module")
def commits(keys, tmp_path_factory):
    repo = GitRepo(tmp_path_factory.mktemp("signed"))
    shas = {name: signed_commit(repo, "qa", f"# {name}\n", keys[name], message=name) for name in keys}
    shas["unsigned"] = signed_commit(repo, "qa", "# unsigned\n", None)
    return repo, shas


def _verdict(commits, tmp_path, name, policy):
    repo, shas = commits
    return GitSource(repo.url, cache_dir=tmp_path).verify_signature(shas[name], policy)


@pytest.mark.parametrize("commit, trusted, status", [
    ("alice", True, "G"), ("mallory", False, "E"), ("unsigned", False, "N"), ("ssh-alice", False, "U")])
def test_gpg_mode_trusts_only_the_blocks_keys(keys, commits, tmp_path, monkeypatch, commit, trusted, status):
    # the process's own GNUPGHOME trusts Mallory: the check must not look there
    monkeypatch.setenv("GNUPGHOME", str(keys["mallory"].home))
    policy = SignaturePolicy(SignatureMode.GPG, trusted_gpg_keys=keys["alice"].armored)
    verdict = _verdict(commits, tmp_path, commit, policy)
    assert (verdict.trusted, verdict.status) == (trusted, status), verdict
    assert os.environ["GNUPGHOME"] == str(keys["mallory"].home)


@pytest.mark.parametrize("commit, trusted, status", [
    ("ssh-alice", True, "G"), ("ssh-bob", False, "U"), ("unsigned", False, "N"), ("alice", False, "E")])
def test_ssh_mode_trusts_only_the_allowed_signers(keys, commits, tmp_path, commit, trusted, status):
    verdict = _verdict(commits, tmp_path, commit,
                       SignaturePolicy(SignatureMode.SSH, allowed_signers=keys["ssh-alice"].allowed_signer + "\n"))
    assert (verdict.trusted, verdict.status) == (trusted, status), verdict
    if trusted:
        assert verdict.signer == "alice@example.com"


def test_keys_gpg_cannot_import_are_a_permanent_error(commits, tmp_path):
    broken = SignaturePolicy(SignatureMode.GPG, trusted_gpg_keys=PUBLIC)
    with pytest.raises(PermanentError, match="trusted_gpg_keys"):
        _verdict(commits, tmp_path, "alice", broken)
