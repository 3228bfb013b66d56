"""Entrypoint for prefect.yaml and `prefect deploy`: flows/reconcile.py:reconcile."""

from prefect_gitops.flows import reconcile

__all__ = ["reconcile"]
