"""Asks git whether a revision is signed by a signer the source block trusts.

Only the block's keys are in reach of the check: a fresh GNUPGHOME holding just `trusted_gpg_keys`
(never the user's keyring), an allowed-signers file holding just `allowed_signers` (passed with `-c`,
as is gpg.format), and no global or system git config (a user's gpg.minTrustLevel or allowed-signers
file must not widen or narrow what the block says). Whatever the mode, the other kind of signature
meets an empty keyring or an empty signers file, so it can never pass.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from prefect_gitops.adapters.git_runner import GitRunner
from prefect_gitops.errors import PermanentError
from prefect_gitops.signatures import SignatureMode, SignaturePolicy, SignatureVerdict, parse_signature_status

GPG_TIMEOUT = 30.0
# verify-commit's exit code says whether git accepts the signature; %G? says why not
STATUS_FORMAT = "--format=%G?%x00%GK%x00%GS"


def verify_commit(runner: GitRunner, repo: Path, sha: str, policy: SignaturePolicy) -> SignatureVerdict:
    """The verdict on commit `sha`, which must already be in `repo` (local operations only)."""
    with trust_material(policy) as (options, env):
        verified = runner.succeeds([*options, "-C", str(repo), "verify-commit", sha],
                                   what="verify the signature of", env=env)
        line = runner.run([*options, "-C", str(repo), "log", "-1", "--no-walk", STATUS_FORMAT, sha, "--"],
                          what="read the signature of", local=True, env=env)
    return parse_signature_status(sha, policy.mode, 0 if verified else 1, line)


@contextlib.contextmanager
def trust_material(policy: SignaturePolicy) -> Iterator[tuple[list[str], dict[str, str]]]:
    """git's `-c` options and environment for a check against the policy's keys only."""
    problems = policy.problems()
    if problems:
        raise PermanentError("the GitOps Source block's signature settings are unusable: " + "; ".join(problems))
    with tempfile.TemporaryDirectory(prefix="pgo-verify-") as tmp:
        home = Path(tmp) / "gnupg"
        home.mkdir(mode=0o700)
        # public keys only: no agent is needed, and no key is ever fetched from a keyserver
        (home / "gpg.conf").write_text("no-autostart\nno-auto-key-retrieve\n")
        signers = Path(tmp) / "allowed_signers"
        signers.write_text(policy.allowed_signers if policy.mode is SignatureMode.SSH else "")
        if policy.mode is SignatureMode.GPG:
            import_trusted_keys(home, policy.trusted_gpg_keys)
        options = ["-c", f"gpg.format={'ssh' if policy.mode is SignatureMode.SSH else 'openpgp'}",
                   "-c", f"gpg.ssh.allowedSignersFile={signers}"]
        env = {"GNUPGHOME": str(home), "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
        yield options, env


def import_trusted_keys(home: Path, armored: str) -> None:
    """Import the armored public keys into `home` and trust them fully: the block is what vouches for
    them (without it, gpg calls their signatures good but of unknown validity, %G? U)."""
    _gpg(home, ["--import"], armored, "import trusted_gpg_keys")
    listing = _gpg(home, ["--with-colons", "--list-keys"], "", "list trusted_gpg_keys")
    primaries, previous = [], ""
    for line in listing.splitlines():
        fields = line.split(":")
        if fields[0] == "fpr" and previous == "pub":
            primaries.append(fields[9])
        previous = fields[0]
    if not primaries:
        raise PermanentError("trusted_gpg_keys of the GitOps Source block holds no OpenPGP public key gpg can import")
    _gpg(home, ["--import-ownertrust"], "".join(f"{fpr}:6:\n" for fpr in primaries), "trust trusted_gpg_keys")


def _gpg(home: Path, args: list[str], stdin: str, what: str) -> str:
    try:
        done = subprocess.run(["gpg", "--batch", "--no-tty", "--homedir", str(home), *args], input=stdin,
                              capture_output=True, text=True, timeout=GPG_TIMEOUT)
    except FileNotFoundError:
        raise PermanentError("verify_signatures is gpg but gpg is not installed") from None
    except subprocess.TimeoutExpired:
        raise PermanentError(f"gpg timed out trying to {what}") from None
    if done.returncode != 0:
        # gpg's own words name the problem (no key material: it prints key IDs and user IDs)
        detail = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise PermanentError(f"cannot {what} of the GitOps Source block: {detail}")
    return done.stdout
