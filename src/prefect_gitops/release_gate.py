"""The release gate: a revision that empties the environment, or releases most of what it manages,
needs explicit consent. Pure.

A file truncated by a bad merge, emptied by a script or reduced to comments parses fine and means
"manage nothing": every managed key would be unset or restored in one reconcile. Argo CD refuses to
sync an application to nothing unless `allowEmpty` is set; this is the same gate for job variables,
widened to revisions that release more than `rollout.release_limit` of the managed keys.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect_gitops.kinds import KINDS
from prefect_gitops.model import EnvironmentFile, ReleaseLimit
from prefect_gitops.state import Inventory
from prefect_gitops.status import Reason

SHOWN_KEYS = 5  # released keys named in the message; the rest are counted


@dataclass(frozen=True)
class Release:
    """What a revision would do to the inventory: how many keys are managed, which of them it releases,
    and whether the file asks for anything at all."""

    managed: int
    released: tuple[str, ...]  # "deployments.<name>.<key>", as the file would name them
    file_manages_nothing: bool


@dataclass(frozen=True)
class Refusal:
    reason: Reason
    message: str


def release_of(spec: EnvironmentFile, inventory: Inventory) -> Release:
    """The managed keys the file no longer names (a target left out releases all of its keys)."""
    released: list[str] = []
    asked = 0
    for target_kind in KINDS:
        wanted = target_kind.desired(spec)
        asked += sum(len(keys) for keys in wanted.values())
        for target, keys in sorted(inventory.section(target_kind.name).items()):
            released += [f"{target_kind.section}.{target}.{key}" for key in sorted(keys)
                         if key not in wanted.get(target, {})]
    return Release(managed=inventory.count(), released=tuple(released), file_manages_nothing=asked == 0)


def release_refusal(release: Release, limit: ReleaseLimit, allow_empty: bool,
                    allow_mass_release: bool) -> Refusal | None:
    """None when the revision may go ahead; else why not. `allow_empty` is the file's consent,
    `allow_mass_release` the run's (a person at the CLI, or the flow's parameter); either covers both
    the emptied file and the mass release. Nothing at stake (no key released) is never refused."""
    count = len(release.released)
    if count == 0 or allow_empty or allow_mass_release:
        return None
    keys = ", ".join(release.released[:SHOWN_KEYS]) + (f" and {count - SHOWN_KEYS} more" if count > SHOWN_KEYS else "")
    if count == release.managed:
        what = "manages nothing" if release.file_manages_nothing else "names none of the managed keys"
        return Refusal(Reason.EMPTY_REVISION,
                       f"the file {what}: applying it would release all {count} managed key(s) ({keys}); refused. "
                       f"If that is intended, set `allow_empty: true` at the top of the file "
                       f"(or apply with --allow-mass-release)")
    if count > limit.max_fraction * release.managed and count >= limit.min_keys:
        return Refusal(Reason.MASS_RELEASE,
                       f"applying it would release {count} of the {release.managed} managed keys ({keys}), more "
                       f"than rollout.release_limit allows ({limit.max_fraction:.0%} and at least {limit.min_keys} "
                       f"keys); refused. If that is intended, apply with --allow-mass-release (flow parameter "
                       f"allow_mass_release) or set `allow_empty: true` in the file")
    return None
