"""Which Prefect server an environment lives on, and a client for it.

Environment E lives on the server of the GitOps Target block named `gitops-target-E` when the control
server (the one the flow runs on) has that block; otherwise on the control server itself. Never from
the environment file or anything else in Git: a repository writer must not be able to send the
control plane's writes, and the target's key, to a server of their choosing.

On the environment's server: its work pools, deployments and queues (read and written), its recorded
state and history, its lock, the event log the drift check reads, and its canary runs. On the control
server: the flow run, its task runs, logs, artifact and events, and every block the platform team
configures (this lookup, the Secret it names, policy, defaults, sources) and the smoke-test cap.

The block document is read raw and validated here (the block types module, which imports GitLab's
client, is not imported for it). The key is taken out of the document only to build the client, and
goes nowhere else: the client sends it as a header; errors name the URL without userinfo.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager, AsyncIterator, Callable, Optional
from urllib.parse import urlsplit, urlunsplit

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError

from prefect_gitops.adapters.api_retry import retrying
from prefect_gitops.adapters.locks import environment_lock, leased_environment_lock
from prefect_gitops.adapters.prefect_api import PrefectAPI, api_errors
from prefect_gitops.errors import PermanentError, TargetRejected

TARGET_BLOCK_TYPE = "gitops-target"  # blocks.GitOpsTarget's slug
REJECTED = frozenset({401, 403})


def target_block_name(environment: str) -> str:
    return f"{TARGET_BLOCK_TYPE}-{environment}"


class _SecretDocument(BaseModel):
    """A nested Secret block as the block document carries it (include_secrets=True)."""

    value: SecretStr


class _TargetDocument(BaseModel):
    model_config = ConfigDict(extra="ignore")  # the block's own bookkeeping fields, if any

    api_url: str
    api_key: Optional[_SecretDocument] = None
    auth_string: Optional[_SecretDocument] = None


@dataclass(frozen=True)
class Target:
    """Where an environment lives when not on the control server; the credentials stay SecretStr."""

    environment: str
    api_url: str = field(repr=False)  # shown as `display`: a URL may carry userinfo
    api_key: SecretStr | None = None
    auth_string: SecretStr | None = None

    @property
    def display(self) -> str:
        """The API URL for messages: no userinfo, no query."""
        parts = urlsplit(self.api_url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def describe(self) -> str:
        return f"the Prefect server of environment {self.environment!r} ({self.display}, block {target_block_name(self.environment)})"


async def read_target(control: PrefectClient, environment: str) -> Target | None:
    """The environment's GitOps Target block on the control server, or None (it lives there too)."""
    name = target_block_name(environment)
    async with api_errors(f"reading the GitOps Target block {name!r}"):  # 5xx, network: transient
        try:
            document = await retrying(lambda: control.read_block_document_by_name(
                name=name, block_type_slug=TARGET_BLOCK_TYPE, include_secrets=True))
        except ObjectNotFound:  # no such block, or the block type was never registered
            return None
    try:
        fields = _TargetDocument.model_validate(document.data or {})
    except ValidationError as exc:  # pydantic's messages name fields, never SecretStr values
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PermanentError(f"the GitOps Target block {name!r} is not valid: {problems}; nothing was written") from None
    return Target(environment=environment, api_url=fields.api_url,
                  api_key=fields.api_key.value if fields.api_key else None,
                  auth_string=fields.auth_string.value if fields.auth_string else None)


def _refuse_rejected(target: Target) -> Callable[[httpx.Response], Any]:
    """A response hook: a 401/403 from the target is its own typed, permanent error naming the
    environment and the URL (Prefect's client would otherwise give a bare HTTP error)."""

    async def hook(response: httpx.Response) -> None:
        if response.status_code in REJECTED:
            raise TargetRejected(f"{target.describe()} rejected the block's credentials "
                                 f"(HTTP {response.status_code}); check its api_key or auth_string; "
                                 "nothing was written there")
    return hook


@contextlib.asynccontextmanager
async def target_client(target: Target) -> AsyncIterator[PrefectClient]:
    """A client of the target's API with its credentials (the one place that reads them out)."""
    auth_string = target.auth_string.get_secret_value() if target.auth_string else None
    api_key = target.api_key.get_secret_value() if target.api_key else None
    client = PrefectClient(target.api_url, api_key=api_key, auth_string=auth_string,
                           httpx_settings={"event_hooks": {"response": [_refuse_rejected(target)]}})
    async with client:
        yield client


@contextlib.asynccontextmanager
async def environment_api(control: PrefectClient, environment: str) -> AsyncIterator[PrefectAPI]:
    """The API of the server `environment` lives on; platform blocks are still read from `control`."""
    target = await read_target(control, environment)
    if target is None:
        yield PrefectAPI(control)
        return
    async with target_client(target) as client:
        yield PrefectAPI(client, control=control, server=target.describe())


LockFactory = Callable[[str, float], AsyncContextManager[None]]


def environment_lock_on(api: PrefectAPI) -> LockFactory:
    """The environment lock on the environment's own server. Prefect's `concurrency()` always talks to
    the server of the run's settings, so a target's lock takes its lease through the target's client."""
    if api.on_control:
        return lambda environment, timeout: environment_lock(api.client, environment, timeout)
    return lambda environment, timeout: leased_environment_lock(api.client, environment, timeout)
