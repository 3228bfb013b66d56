"""Reads the GitOps Policy block a reconcile checks the environment file against.

No name given: the block named `gitops-policy`, if there is one (none: no policy). A name given: that
block, and a missing one is an error, so a typo never turns the policy off. The block document is
validated straight into the pure Policy model (extra fields refused: a policy this version cannot read
in full is not half-applied); the block types module is not imported for that.
"""

from __future__ import annotations

from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectNotFound
from pydantic import ValidationError

from prefect_gitops.adapters.api_retry import retrying
from prefect_gitops.adapters.prefect_api import api_errors
from prefect_gitops.errors import PermanentError
from prefect_gitops.policy import DEFAULT_POLICY_BLOCK, Policy

POLICY_BLOCK_TYPE = "gitops-policy"  # blocks.GitOpsPolicy's slug


async def read_policy(client: PrefectClient, name: str | None) -> Policy | None:
    block_name = name or DEFAULT_POLICY_BLOCK
    async with api_errors(f"reading the GitOps Policy block {block_name!r}"):  # 5xx, network: transient
        try:
            document = await retrying(lambda: client.read_block_document_by_name(
                name=block_name, block_type_slug=POLICY_BLOCK_TYPE))
        except ObjectNotFound:  # no such block, or the block type was never registered
            document = None
    if document is None:
        if name is None:
            return None
        raise PermanentError(f"the GitOps Policy block {name!r} does not exist on the Prefect server "
                             f"(block type {POLICY_BLOCK_TYPE}); nothing was written")
    try:
        return Policy.model_validate({**(document.data or {}), "name": block_name})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise PermanentError(f"the GitOps Policy block {block_name!r} is not valid: {problems}") from None
