"""Entrypoint for prefect.yaml and `prefect deploy`: flows/promote.py:promote."""

from prefect_gitops.flows import promote

__all__ = ["promote"]
