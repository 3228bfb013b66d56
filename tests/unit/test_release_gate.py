"""The release gate's decision (release_gate.py), table-driven: which revisions need consent."""

from __future__ import annotations

import pytest

from prefect_gitops.loader import parse_environment
from prefect_gitops.model import ReleaseLimit
from prefect_gitops.release_gate import Release, release_of, release_refusal
from prefect_gitops.state import Inventory, ManagedKey
from prefect_gitops.status import Reason

DEFAULT = ReleaseLimit()  # more than 50 % and at least 5 keys


def keys(n: int) -> tuple[str, ...]:
    return tuple(f"deployments.f/d{i}.image" for i in range(n))


# (case, managed, released, file manages nothing, limit, allow_empty, allow_mass_release, expected reason)
CASES = [
    ("nothing released", 10, 0, False, DEFAULT, False, False, None),
    ("empty file, nothing managed yet", 0, 0, True, DEFAULT, False, False, None),
    ("empty file releases every key", 3, 3, True, DEFAULT, False, False, Reason.EMPTY_REVISION),
    ("empty file, one managed key", 1, 1, True, DEFAULT, False, False, Reason.EMPTY_REVISION),
    ("file names other targets only: every key released", 2, 2, False, DEFAULT, False, False, Reason.EMPTY_REVISION),
    ("empty file with allow_empty", 3, 3, True, DEFAULT, True, False, None),
    ("empty file with the run's consent", 3, 3, True, DEFAULT, False, True, None),
    ("half released: at the fraction, not over it", 20, 10, False, DEFAULT, False, False, None),
    ("over half and 6 keys", 10, 6, False, DEFAULT, False, False, Reason.MASS_RELEASE),
    ("over half but only 4 keys", 7, 4, False, DEFAULT, False, False, None),
    ("over half, 5 keys (the minimum)", 9, 5, False, DEFAULT, False, False, Reason.MASS_RELEASE),
    ("mass release with allow_empty", 10, 6, False, DEFAULT, True, False, None),
    ("mass release with the run's consent", 10, 6, False, DEFAULT, False, True, None),
    ("stricter limit from the file", 10, 3, False, ReleaseLimit(max_fraction=0.2, min_keys=2), False, False,
     Reason.MASS_RELEASE),
    ("limit off (fraction 1) still refuses releasing everything", 10, 10, False,
     ReleaseLimit(max_fraction=1.0), False, False, Reason.EMPTY_REVISION),
    ("limit off (fraction 1), most released", 10, 9, False, ReleaseLimit(max_fraction=1.0), False, False, None),
]


@pytest.mark.parametrize("managed,released,empty,limit,allow_empty,allow_mass,expected",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_release_refusal(managed, released, empty, limit, allow_empty, allow_mass, expected):
    refusal = release_refusal(Release(managed, keys(released), empty), limit, allow_empty, allow_mass)
    assert (refusal.reason if refusal else None) == expected


def test_the_message_names_the_released_keys_and_the_ways_to_consent():
    refusal = release_refusal(Release(7, keys(7), True), DEFAULT, False, False)
    assert refusal is not None
    assert "manages nothing" in refusal.message and "all 7 managed key(s)" in refusal.message
    assert "deployments.f/d0.image" in refusal.message and "and 2 more" in refusal.message
    assert "allow_empty: true" in refusal.message and "--allow-mass-release" in refusal.message


def _inventory(**sections: dict[str, list[str]]) -> Inventory:
    inventory = Inventory()
    for section, targets in sections.items():
        for target, names in targets.items():
            for name in names:
                getattr(inventory, section).setdefault(target, {})[name] = ManagedKey(
                    value="x", applied=True, had_previous=False)
    return inventory


@pytest.mark.parametrize("text,released,nothing", [
    ("", ["deployments.f/a.env", "deployments.f/a.image", "work_pools.p.image"], True),
    ("~\n", ["deployments.f/a.env", "deployments.f/a.image", "work_pools.p.image"], True),
    ("# only a comment\n", ["deployments.f/a.env", "deployments.f/a.image", "work_pools.p.image"], True),
    ("drift: {mode: warn}\n", ["deployments.f/a.env", "deployments.f/a.image", "work_pools.p.image"], True),
    ("work_pools: {p: {job_variables: {image: y}}}\n", ["deployments.f/a.env", "deployments.f/a.image"], False),
    ("deployments: {f/a: {job_variables: {image: y}}}\n", ["deployments.f/a.env", "work_pools.p.image"], False),
    ("work_pools: {p: {job_variables: {image: y}}}\ndeployments: {f/a: {job_variables: {image: y, env: {}}}}\n",
     [], False),
], ids=["empty", "tilde", "comments", "settings only", "deployment left out", "one key left out", "all kept"])
def test_release_of_a_file(text, released, nothing):
    spec = parse_environment(text, file="environments/e.yaml", name="e").spec
    release = release_of(spec, _inventory(work_pools={"p": ["image"]}, deployments={"f/a": ["image", "env"]}))
    assert release.managed == 3 and sorted(release.released) == released and release.file_manages_nothing is nothing
