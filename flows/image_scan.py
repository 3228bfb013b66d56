"""Entrypoint for prefect.yaml and `prefect deploy`: flows/image_scan.py:image_scan."""

from prefect_gitops.image_scan_flow import image_scan

__all__ = ["image_scan"]
