"""Signed commits: which signers a source trusts, and what git said about a revision. Pure.

The policy comes from the GitOps Source block (never from the repository it governs, or a commit could
vouch for itself). adapters/signatures.py asks git: `git verify-commit` (its exit code) and
`git log --format=%G?...` (why), with only the policy's keys in reach; this module turns that into a
typed verdict and the message a refusal shows. A revision is trusted only when both say so: git's exit
code 0 and the status letter G.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SignatureMode(StrEnum):
    OFF = "off"
    GPG = "gpg"  # OpenPGP signatures by one of `trusted_gpg_keys`
    SSH = "ssh"  # SSH signatures by a signer of `allowed_signers`


@dataclass(frozen=True)
class SignaturePolicy:
    mode: SignatureMode = SignatureMode.OFF
    trusted_gpg_keys: str = ""  # ASCII-armored OpenPGP public keys
    allowed_signers: str = ""  # the content of an ssh allowed-signers file

    @property
    def enabled(self) -> bool:
        return self.mode is not SignatureMode.OFF

    def problems(self) -> list[str]:
        """What makes this policy unusable (empty: usable). Named by the block's field names."""
        if self.mode is SignatureMode.GPG:
            if "PRIVATE KEY" in self.trusted_gpg_keys:
                # a text field is stored in the clear: a private key must never be pasted there
                return ["trusted_gpg_keys holds a private key: paste only the armored public keys"]
            if "BEGIN PGP PUBLIC KEY BLOCK" not in self.trusted_gpg_keys:
                return ["verify_signatures is gpg but trusted_gpg_keys holds no armored OpenPGP public key"]
        if self.mode is SignatureMode.SSH:
            if "PRIVATE KEY" in self.allowed_signers:
                return ["allowed_signers holds a private key: list only principals and public keys"]
            lines = [line.strip() for line in self.allowed_signers.splitlines()]
            if not any(line and not line.startswith("#") for line in lines):
                return ["verify_signatures is ssh but allowed_signers lists no signer"]
        return []


# git's %G? letters (git-log(1), "Placeholders"), as the reason a refusal gives
_WHY = {
    "B": "its signature is bad (the commit was changed after it was signed)",
    "U": "it is signed by a key that is not trusted",
    "X": "its signature has expired",
    "Y": "it is signed by an expired key",
    "R": "it is signed by a revoked key",
    "E": "its signature cannot be checked against the trusted keys",
    "N": "it is not signed",
}


@dataclass(frozen=True)
class SignatureVerdict:
    revision: str
    mode: SignatureMode
    git_verified: bool  # `git verify-commit` exited 0
    status: str  # git's %G? letter
    key: str = ""  # %GK: the key ID or SSH fingerprint that signed (public, safe to show)
    signer: str = ""  # %GS: the signer's name or SSH principal

    @property
    def trusted(self) -> bool:
        return self.git_verified and self.status == "G"

    def why(self) -> str:
        if self.trusted:
            return f"signed by {self.signer or self.key}"
        if self.status == "G":  # a good signature git still refused (e.g. below a trust level)
            reason = "git did not accept its signature"
        elif self.status == "E" and self.mode is SignatureMode.SSH and self.key and not self.key.startswith("SHA256:"):
            reason = "it is signed with OpenPGP, but this source accepts only SSH signatures"
        elif self.status == "U" and self.mode is SignatureMode.GPG and self.key.startswith("SHA256:"):
            reason = "it is signed with SSH, but this source accepts only OpenPGP signatures"
        elif self.status == "E" and self.mode is SignatureMode.GPG:
            reason = "it is signed by a key that is not among trusted_gpg_keys"
        elif self.status == "U" and self.mode is SignatureMode.SSH:
            reason = "it is signed by an SSH key that is not in allowed_signers"
        else:
            reason = _WHY.get(self.status, f"git reported signature status {self.status!r}")
        return reason + (f" (key {self.key})" if self.key else "")

    def refusal(self) -> str:
        return (f"revision {self.revision} is refused: {self.why()}; verify_signatures is {self.mode}, "
                "so only commits signed by a trusted signer are applied; nothing applied")


def parse_signature_status(revision: str, mode: SignatureMode, exit_code: int, log_line: str) -> SignatureVerdict:
    """The verdict from verify-commit's exit code and `git log -1 --format=%G?%x00%GK%x00%GS`."""
    status, _, rest = log_line.strip("\n").partition("\x00")
    key, _, signer = rest.partition("\x00")
    return SignatureVerdict(revision=revision, mode=mode, git_verified=exit_code == 0,
                            status=status.strip() or "N", key=key.strip(), signer=signer.strip())
