"""Real signing keys for the signed-commit tests: GPG keys made in a throwaway GNUPGHOME, SSH keys
made with ssh-keygen, and commits signed with them by the git CLI (nothing is mocked)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from helpers import GIT_ID, GitRepo


@dataclass(frozen=True)
class GpgKey:
    home: Path  # the GNUPGHOME holding its secret key
    fingerprint: str
    armored: str  # the public key, as pasted into trusted_gpg_keys


@dataclass(frozen=True)
class SshKey:
    private: Path
    allowed_signer: str  # "<principal> <type> <key>", a line of an allowed-signers file


class Keys:
    """Keys made on demand, removed (and their gpg-agent stopped) by close()."""

    def __init__(self) -> None:
        # short: gpg-agent's socket path must fit in a sockaddr_un
        self.root = Path(tempfile.mkdtemp(prefix="pgs-", dir="/tmp"))
        self.homes: list[Path] = []

    def gpg(self, name: str, email: str) -> GpgKey:
        home = self.root / f"g{len(self.homes)}"
        home.mkdir(mode=0o700)
        self.homes.append(home)
        gpg = ["gpg", "--batch", "--homedir", str(home)]
        subprocess.run([*gpg, "--passphrase", "", "--quick-gen-key", f"{name} <{email}>", "ed25519", "sign", "never"],
                       check=True, capture_output=True)
        listing = subprocess.run([*gpg, "--with-colons", "--list-keys", email], check=True, capture_output=True,
                                 text=True).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
        armored = subprocess.run([*gpg, "--armor", "--export", fingerprint], check=True, capture_output=True,
                                 text=True).stdout
        return GpgKey(home, fingerprint, armored)

    def ssh(self, principal: str) -> SshKey:
        private = self.root / f"ssh-{principal.split('@')[0]}"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", principal, "-f", str(private)],
                       check=True, capture_output=True)
        public = Path(f"{private}.pub").read_text().split()
        return SshKey(private, f"{principal} {public[0]} {public[1]}")

    def close(self) -> None:
        for home in self.homes:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def signed_commit(repo: GitRepo, env: str, content: str, key: GpgKey | SshKey | None, message: str = "change") -> str:
    """Commit environments/<env>.yaml signed with `key` (None: unsigned); its SHA."""
    repo.write(f"environments/{env}.yaml", content)
    repo.git("add", "-A")
    if key is None:
        repo.git("commit", "-q", "--allow-empty", "-m", message)
    else:
        if isinstance(key, GpgKey):
            options, environ = ["-c", "gpg.format=openpgp", "-c", f"user.signingkey={key.fingerprint}"], {
                "GNUPGHOME": str(key.home)}
        else:
            options, environ = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key.private}"], {}
        subprocess.run(["git", *GIT_ID, *options, "commit", "-q", "-S", "--allow-empty", "-m", message],
                       cwd=repo.root, check=True, capture_output=True, env={**os.environ, **environ})
    return repo.git("rev-parse", "HEAD")
