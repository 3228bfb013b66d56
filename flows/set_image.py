"""Entrypoint for prefect.yaml and `prefect deploy`: flows/set_image.py:set_image."""

from prefect_gitops.flows import set_image

__all__ = ["set_image"]
