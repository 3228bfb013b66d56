"""Promotion: write the images an earlier environment runs into a later environment's file, as a commit.

Git stays the source of truth: the later environment's next reconcile applies
the commit (through its own gates: smoke tests, waves, the soak time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

from ruamel.yaml import YAML

from prefect_gitops.loader import environment_file_path
from prefect_gitops.state import EnvironmentState
from prefect_gitops.waves import applied_images
from prefect_gitops.yaml_edit import set_images

Key = tuple[str, str]  # (section, target)


class FileCommitter(Protocol):
    """What promote() needs of a writer (adapters.git_write.GitWriter)."""

    def commit_file_update(self, branch: str, path: str, edit: Callable[[str], str], message: str) -> str | None:
        ...


def repository_of(image: str) -> str:
    """registry/name without the tag or digest."""
    name = image.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass
class PromotionPlan:
    updates: dict[Key, str] = field(default_factory=dict)  # (section, target) -> new image
    current: dict[Key, str] = field(default_factory=dict)
    skipped: dict[Key, str] = field(default_factory=dict)  # why a target was left alone


def plan_promotion(source: EnvironmentState, target_images: dict[Key, str]) -> PromotionPlan:
    """Pure. A target takes the source image of the same target name, else of the same repository
    when the source runs exactly one tag of it."""
    running = applied_images(source)
    by_repository: dict[str, set[str]] = {}
    for image in running.values():
        by_repository.setdefault(repository_of(image), set()).add(image)
    out = PromotionPlan(current=dict(target_images))
    for key, image in sorted(target_images.items()):
        if key in running:
            candidate = running[key]
        else:
            tags = by_repository.get(repository_of(image), set())
            if len(tags) != 1:
                out.skipped[key] = (f"{source.environment} runs no image of {repository_of(image)}" if not tags else
                                    f"{source.environment} runs several images of {repository_of(image)}: "
                                    + ", ".join(sorted(tags)))
                continue
            candidate = next(iter(tags))
        if candidate != image:
            out.updates[key] = candidate
    return out


def images_in_file(text: str) -> dict[Key, str]:
    data = YAML(typ="safe").load(text) or {}
    out: dict[Key, str] = {}
    for section in ("work_pools", "deployments"):
        for target, spec in (data.get(section) or {}).items():
            image = ((spec or {}).get("job_variables") or {}).get("image")
            if isinstance(image, str):
                out[(section, target)] = image
    return out


def promote(source_state: EnvironmentState, to_env: str, writer: FileCommitter, branch: str,
            folder: str) -> tuple[str | None, PromotionPlan]:
    """Commit the promotion to `branch`; returns (new commit SHA or None when nothing changed, the plan).

    `writer` has `commit_file_update(branch, path, edit, message)` (adapters.git_write.GitWriter,
    from the source's `writer()` so it pushes with the source's credentials)."""
    planned: list[PromotionPlan] = []

    def edit(text: str) -> str:  # re-run on the new tip if the branch moved meanwhile
        result = plan_promotion(source_state, images_in_file(text))
        planned.append(result)
        return set_images(text, result.updates) if result.updates else text

    message = (f"prefect-gitops: promote {source_state.environment} -> {to_env}\n\n"
               f"Images as applied in {source_state.environment} at {source_state.last_applied_revision}.")
    sha = writer.commit_file_update(branch, environment_file_path(folder, to_env), edit, message)
    return sha, planned[-1] if planned else PromotionPlan()
