"""A password written into an HTTPS Git URL (`https://user:password@host/repo.git`) never reaches git's
command line, `.git/config`, or a flow run's parameters.

git would otherwise get the URL as an argument (`git ls-remote URL`, `git fetch URL SHA`: readable in
`ps` and `/proc/<pid>/cmdline` by every user of the machine), and the CLI's `apply` and `promote` would
store it in the flow run's parameters on the server (shown in the UI, kept for ever). So:

* `split_credentials(url)` takes `user:password@` out of an http(s) URL and returns them as
  `Credentials`, which `GitRunner` hands to git only through the child's environment (GIT_ASKPASS);
* `hide_credentials(url)` does the same and keeps the credentials in this process's memory, keyed by
  the URL without them: the CLI passes that clean URL to the flow it runs in-process, and the
  `GitSource` the flow builds for it finds the credentials with `credentials_for(url)`.

A URL with a user name only (`https://user@host`, ssh's `git@host`) is left as it is: a user name is
not a secret, and git asks for the password through the usual channels.
"""

from __future__ import annotations

import threading
from urllib.parse import unquote, urlsplit

from pydantic import SecretStr

from prefect_gitops.adapters.git_runner import Credentials, display_url

_remembered: dict[str, Credentials] = {}
_lock = threading.Lock()


def split_credentials(url: str) -> tuple[str, Credentials | None]:
    """(the URL without `user:password@`, those credentials), or (url, None) when it has none."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.password is None:
        return url, None
    credentials = Credentials(SecretStr(unquote(parts.password)), unquote(parts.username or "") or "oauth2")
    return display_url(url), credentials


def hide_credentials(url: str) -> str:
    """The URL without its credentials; they stay in this process for `credentials_for`."""
    clean, credentials = split_credentials(url)
    if credentials is not None:
        with _lock:
            _remembered[clean] = credentials
    return clean


def credentials_for(url: str) -> tuple[str, Credentials | None]:
    """(clean URL, credentials) for a source URL: its own, else those `hide_credentials` kept for it."""
    clean, credentials = split_credentials(url)
    if credentials is None:
        with _lock:
            credentials = _remembered.get(clean)
    return clean, credentials
