"""The one way prefect-gitops runs git: for the source, the GitLab source and the writer.

`GitRunner(url, credentials=...)` owns everything that must be the same for
every git child process, so a fix lands everywhere at once:

* the environment: never a terminal prompt (`GIT_TERMINAL_PROMPT=0`, stdin
  closed), C locale so the messages matched below are English;
* credentials (`Credentials`: a token and the user name sent with it) reach git
  only through the child's environment. The URL given to git carries no user
  information, `GIT_ASKPASS` points at a tiny script that holds no secret (it
  prints `$PREFECT_GITOPS_GIT_USERNAME` for "Username" prompts and
  `$PREFECT_GITOPS_GIT_PASSWORD` otherwise), those two variables are set only
  for the child, and `-c credential.helper=` empties the helper list so nothing
  is stored. So the token is never in argv (`ps`), a URL, or `.git/config`;
* a timeout, reported as a TransientError;
* scrubbing: the token (raw and URL-encoded) and any `user:password@` in URLs
  are removed from every message before it reaches an exception or a log;
* one classification of failures: TRANSIENT (network, 429, 5xx: worth a retry)
  vs everything else (PermanentError), and, with credentials, "the server
  refused the token" as a PermanentError that says which scope is needed.

Without credentials the user's own git setup (credential helpers, GIT_ASKPASS,
tokens inside the URL) is left to work as it does on the command line.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import SecretStr

from prefect_gitops.errors import PermanentError, RefNotFound, TransientError

logger = logging.getLogger(__name__)

USERNAME_ENV = "PREFECT_GITOPS_GIT_USERNAME"
PASSWORD_ENV = "PREFECT_GITOPS_GIT_PASSWORD"

# Network trouble, rate limits and server errors: a later attempt may succeed.
# (The union of what the source and the writer each matched before they shared this runner.)
TRANSIENT = re.compile(
    r"could not resolve host|could not resolve hostname|temporary failure in name resolution|"
    r"connection (refused|reset|timed out|closed)|failed to connect|couldn't connect|could not connect|"
    r"network is unreachable|no route to host|timed out|temporarily|early eof|"
    r"the remote end hung up unexpectedly|http (429|5\d\d)|error: (429|5\d\d)|returned error: (429|5\d\d)|"
    r"rpc failed|gnutls_handshake|ssl_connect|tls connection",
    re.IGNORECASE,
)
# git's ways of saying "the server refused these credentials"
AUTH_FAILED = re.compile(
    r"authentication failed|could not read (username|password)|"
    r"returned error: (401|403)|http basic: access denied|terminal prompts disabled",
    re.IGNORECASE,
)
# git's ways of saying "the remote has no such ref or commit"
REF_NOT_FOUND = re.compile(r"not our ref|couldn't find remote ref", re.IGNORECASE)
_HTTP_CODE = re.compile(r"returned error: (401|403)")
# variables that make git print its HTTP traffic (headers included); never passed on with a token
_NOISY_ENV = ("GIT_CURL_VERBOSE", "GIT_TRACE", "GIT_TRACE_CURL", "GIT_TRACE_PACKET",
              "GIT_TRACE_CURL_NO_DATA", "GIT_TRACE_REDACT")

_ASKPASS_SCRIPT = f"""#!/bin/sh
# prefect-gitops: answers git's credential prompts from the environment (no secret in here)
case "$1" in
  Username*|username*) printf '%s\\n' "${USERNAME_ENV}" ;;
  *) printf '%s\\n' "${PASSWORD_ENV}" ;;
esac
"""
_askpass_lock = threading.Lock()
_askpass_path: Path | None = None


def askpass_script() -> Path:
    """The GIT_ASKPASS helper, created on first use in a private (0700) temp dir."""
    global _askpass_path
    with _askpass_lock:
        if _askpass_path is None or not _askpass_path.is_file():
            directory = Path(tempfile.mkdtemp(prefix="prefect-gitops-askpass-"))
            os.chmod(directory, 0o700)
            script = directory / "askpass.sh"
            fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
            with os.fdopen(fd, "w") as f:
                f.write(_ASKPASS_SCRIPT)
            os.chmod(script, stat.S_IRWXU)
            atexit.register(shutil.rmtree, directory, True)
            _askpass_path = script
        return _askpass_path


def display_url(url: str) -> str:
    """The URL without user:password@ so it can be logged."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return url


def scrub_credentials(text: str, url: str) -> str:
    """Remove the credentials of `url` (and any user:password@ in URLs) from a message."""
    display = display_url(url)
    if url != display:
        text = text.replace(url, display)
    text = re.sub(r"(://)[^/@\s]+@", r"\1", text)
    parts = urlsplit(url)
    if parts.password and len(parts.password) >= 4:
        text = text.replace(parts.password, "***")
    elif parts.username and not parts.password and len(parts.username) >= 8:  # a token as the user name
        text = text.replace(parts.username, "***")
    return text


@dataclass(frozen=True)
class Credentials:
    """What git answers when an HTTPS server asks: `username` ("oauth2" for GitLab access
    tokens, a deploy token's own name) and `token` (None: anonymous, but still never prompting)."""

    token: SecretStr | None = field(default=None, repr=False)
    username: str = "oauth2"

    @property
    def secret(self) -> str:
        return self.token.get_secret_value() if self.token is not None else ""


class GitRunner:
    """Runs git for one repository URL, with its credentials, and maps failures to GitOps errors.

    `scope` is the token scope the caller needs (GitLab's read_repository to
    read, write_repository to push); it only appears in "rejected the token" messages.
    """

    def __init__(self, url: str, *, credentials: Credentials | None = None, timeout: float = 60.0,
                 extra_env: dict[str, str] | None = None, scope: str = "read_repository"):
        self.url = url
        self.credentials = credentials
        self.timeout = timeout
        self.extra_env = dict(extra_env or {})
        self.scope = scope

    def __repr__(self) -> str:
        return f"GitRunner({self.display!r}, credentials={self.credentials!r})"

    @property
    def display(self) -> str:
        return display_url(self.url)

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """The child's environment; with credentials, the token is in it and nowhere else."""
        env = dict(os.environ)
        if self.credentials is not None:
            for name in _NOISY_ENV:
                env.pop(name, None)
        env.update({"GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": env.get("GIT_ASKPASS", "true"), "LC_ALL": "C"})
        env.update(self.extra_env)
        env.update(extra or {})
        if self.credentials is not None:  # last, so no extra_env can point git elsewhere
            env.update({"GIT_ASKPASS": str(askpass_script()), USERNAME_ENV: self.credentials.username,
                        PASSWORD_ENV: self.credentials.secret, "GIT_TRACE_REDACT": "1",
                        "GIT_TERMINAL_PROMPT": "0"})
        return env

    def _spawn(self, args: list[str], what: str, env: dict[str, str] | None) -> subprocess.CompletedProcess[str]:
        prefix = ["-c", "credential.helper="] if self.credentials is not None else []
        try:
            return subprocess.run(["git", *prefix, *args], capture_output=True, text=True, env=self.env(env),
                                  timeout=self.timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise TransientError(f"git timed out after {self.timeout:.0f}s trying to {what} {self.display}") from None

    def run(self, args: list[str], *, what: str, local: bool = False, env: dict[str, str] | None = None) -> str:
        """git's stdout. `what` completes "cannot WHAT URL: ..." in errors; `local` operations
        (no network) are never transient and never an authentication failure."""
        done = self._spawn(args, what, env)
        if done.returncode == 0:
            return done.stdout
        detail = self.scrub(done.stderr.strip() or done.stdout.strip() or f"exit status {done.returncode}")
        logger.debug("git failed: %s", detail)
        if not local and self.credentials is not None and AUTH_FAILED.search(detail):
            raise PermanentError(self.auth_message(detail))
        message = f"cannot {what} {self.display}: {detail}"
        if not local and TRANSIENT.search(detail):
            raise TransientError(message)
        if not local and REF_NOT_FOUND.search(detail):
            raise RefNotFound(message)
        raise PermanentError(message)

    def succeeds(self, args: list[str], *, what: str, env: dict[str, str] | None = None) -> bool:
        """Whether a local git command exits 0 (for questions like "is this commit here?")."""
        return self._spawn(args, what, env).returncode == 0

    def answers_yes(self, args: list[str], *, what: str) -> bool:
        """A local yes/no question git answers with exit 0 or 1 (`merge-base --is-ancestor`);
        anything else is a failure, not a "no"."""
        done = self._spawn(args, what, None)
        if done.returncode in (0, 1):
            return done.returncode == 0
        detail = self.scrub(done.stderr.strip() or f"exit status {done.returncode}")
        raise PermanentError(f"cannot {what} {self.display}: {detail}")

    def scrub(self, text: str) -> str:
        text = scrub_credentials(text, self.url)
        secret = self.credentials.secret if self.credentials is not None else ""
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
        return text

    def auth_message(self, detail: str) -> str:
        match = _HTTP_CODE.search(detail)
        code = match.group(1) if match else "401"
        credentials = self.credentials or Credentials()
        if credentials.token is None:
            return (f"GitLab refused anonymous access to {self.display} (HTTP {code}): "
                    f"set a GitLabCredentials token with the {self.scope} scope")
        if credentials.username == "oauth2":
            hint = f"check the GitLabCredentials token and its {self.scope} scope"
        else:
            hint = (f"check the deploy token, its username ({credentials.username!r}) "
                    f"and its {self.scope} scope")
        return f"GitLab rejected the token for {self.display} (HTTP {code}): {hint}"
