"""The image scan's Prefect side: registry credentials from prefect-docker blocks, the per-target scan
status kept in a block (`gitops-<env>` of type GitOps Image Scan Status, read by `status`), the
scan-failed events and the artifact."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from prefect.artifacts import acreate_markdown_artifact
from prefect.blocks.core import Block
from prefect.client.orchestration import PrefectClient
from prefect.events import emit_event
from prefect.exceptions import ObjectNotFound
from pydantic import Field

from prefect_gitops.adapters.registry import Registry, RegistryCredentials, RegistryRefused, split_repository
from prefect_gitops.adapters.state_store import _read_document, _save, state_block_name
from prefect_gitops.image_policy import ImagePolicy
from prefect_gitops.image_status import ScanStatus, markdown

SCAN_STATUS_BLOCK_TYPE = "gitops-image-scan-status"
SCAN_FAILED = "prefect-gitops.image.scan-failed"


class GitOpsImageScanStatus(Block):
    """What the last image scan of one environment saw and wrote back, per target; read by `status`."""

    _block_type_name = "GitOps Image Scan Status"
    _block_type_slug = SCAN_STATUS_BLOCK_TYPE
    _description = ("Per target with an image_policy: the policy, the newest tag the registry listed, when it "
                    "was scanned and what was written back. Written by gitops-image-scan; do not edit by hand.")

    environment: str = Field(default="", description="The environment.")
    status_json: str = Field(default="{}", description="The scan status as JSON.")


@asynccontextmanager
async def open_registry(policy: ImagePolicy) -> AsyncIterator[tuple[Registry, str]]:
    """The policy's registry, with the credentials of its DockerRegistryCredentials block, if it names one."""
    credentials = None
    if policy.credentials_block:
        from prefect_docker.credentials import DockerRegistryCredentials

        try:
            block = await DockerRegistryCredentials.aload(policy.credentials_block)
        except (ValueError, ObjectNotFound):
            raise RegistryRefused(f"no DockerRegistryCredentials block named {policy.credentials_block!r} "
                                  "(prefect-docker): save one or fix credentials_block") from None
        credentials = RegistryCredentials(username=block.username, password=block.password)
    host, path = split_repository(policy.repository)
    async with Registry(host, credentials, insecure=policy.insecure) as registry:
        yield registry, path


async def read_scan_status(client: PrefectClient, environment: str) -> ScanStatus | None:
    document = await _read_document(client, state_block_name(environment), SCAN_STATUS_BLOCK_TYPE)
    if document is None:
        return None
    text = (document.data or {}).get("status_json") or "{}"
    try:
        return ScanStatus.model_validate_json(text)
    except ValueError:  # written by a newer or broken version: as if never scanned
        return None


async def save_scan_status(client: PrefectClient, status: ScanStatus) -> None:
    name = state_block_name(status.environment)
    document = await _read_document(client, name, SCAN_STATUS_BLOCK_TYPE)
    await _save(client, name, document, GitOpsImageScanStatus(environment=status.environment,
                                                              status_json=status.model_dump_json()))


def emit_scan_failed(status: ScanStatus) -> int:
    """One prefect-gitops.image.scan-failed event per target whose registry could not be read."""
    for t in status.failed:
        emit_event(SCAN_FAILED, {"prefect.resource.id": f"prefect-gitops.environment.{status.environment}",
                                 "prefect.resource.name": status.environment},
                   related=[{"prefect.resource.id": f"prefect-gitops.image-policy.{t.target_type}.{t.target}",
                             "prefect.resource.role": "gitops-target", "prefect.resource.name": t.target}],
                   payload={"environment": status.environment, "target_type": t.target_type, "target": t.target,
                            "repository": t.repository, "policy": t.policy, "error_kind": t.error_kind,
                            "message": t.message, "flow_run_id": status.flow_run_id})
    return len(status.failed)


async def publish_scan_artifact(status: ScanStatus) -> None:
    await acreate_markdown_artifact(key=f"gitops-image-scan-{status.environment}", markdown=markdown(status),
                                    description=f"prefect-gitops image scan of {status.environment}")
