"""prefect-gitops block types, for `prefect block register --file blocks/gitops.py`."""

from prefect_gitops.blocks import GitOpsPolicy, GitOpsRolloutDefaults, GitOpsSmokeTestDefaults, GitOpsSource, GitOpsTarget

__all__ = ["GitOpsSource", "GitOpsRolloutDefaults", "GitOpsSmokeTestDefaults", "GitOpsPolicy", "GitOpsTarget"]
