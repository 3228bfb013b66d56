"""A small workload flow for canary tests: fails when asked to, or when its image name contains "bad"."""

import os

from prefect import flow, get_run_logger


@flow(name="canary-target")
def canary_target(should_fail: bool = False, marker: str = "") -> str:
    image = os.environ.get("SMOKE_IMAGE", "")
    get_run_logger().info("canary target running with image %r", image)
    if marker:
        with open(marker, "a") as f:
            f.write(image + "\n")
    if should_fail or "bad" in image:
        raise RuntimeError(f"canary target failed with image {image!r}")
    return image
