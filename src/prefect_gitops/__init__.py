"""prefect-gitops: a GitOps control plane for Prefect work pools and deployments."""

__version__ = "0.2.0"
