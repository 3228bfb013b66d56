"""Entrypoint for prefect.yaml and `prefect deploy`: flows/rollback.py:rollback."""

from prefect_gitops.flows import rollback

__all__ = ["rollback"]
