"""Which images a promotion writes (prefect_gitops.promote, pure): the README's rules, table-driven.

"a prod target takes the image of the qa target with the same name, else the single qa image of the
same repository (targets with no or several candidates are left alone and reported)."
"""

from __future__ import annotations

import pytest

from prefect_gitops.promote import PromotionPlan, images_in_file, plan_promotion, repository_of
from prefect_gitops.state import EnvironmentState, Inventory, ManagedKey

POOL, DEPLOYMENT = "work_pools", "deployments"


def qa_running(*entries: tuple[str, str, str], unapplied: tuple[tuple[str, str, str], ...] = ()) -> EnvironmentState:
    """qa's recorded state: (section, target, image) applied, and `unapplied` ones (a write in flight or failed)."""
    inventory = Inventory()
    for (section, target, image), applied in [*((e, True) for e in entries), *((e, False) for e in unapplied)]:
        getattr(inventory, section).setdefault(target, {})["image"] = ManagedKey(
            value=image, applied=applied, had_previous=False)
    return EnvironmentState(environment="qa", inventory=inventory, last_applied_revision="a" * 40)


# qa: deployment etl/daily runs flows:2.0, etl/hourly runs flows:3.0 (two tags of one repository),
# the pool k8s-qa runs tools:5 (the only tools image), reports/weekly runs reports:7
QA = qa_running((DEPLOYMENT, "etl/daily", "reg.example.com/flows:2.0"),
                (DEPLOYMENT, "etl/hourly", "reg.example.com/flows:3.0"),
                (POOL, "k8s-qa", "reg.example.com/tools:5"),
                (DEPLOYMENT, "reports/weekly", "reg.example.com/reports:7"))

CASES = [
    # (why, prod target, prod image, expected new image or None, expected skip reason fragment or None)
    ("same-name target wins even though qa runs several tags of the repository",
     (DEPLOYMENT, "etl/daily"), "reg.example.com/flows:1.0", "reg.example.com/flows:2.0", None),
    ("same-name target wins over the repository: its image is taken as it is",
     (DEPLOYMENT, "reports/weekly"), "reg.example.com/other:1", "reg.example.com/reports:7", None),
    ("no same-name target: the single qa image of the repository",
     (POOL, "k8s-prod"), "reg.example.com/tools:4", "reg.example.com/tools:5", None),
    ("no same-name target: the single image of the repository, a deployment taking a pool's image",
     (DEPLOYMENT, "tools/nightly"), "reg.example.com/tools:1", "reg.example.com/tools:5", None),
    ("a digest pin is of the same repository",
     (DEPLOYMENT, "tools/pinned"), "reg.example.com/tools@sha256:" + "0" * 64, "reg.example.com/tools:5", None),
    ("several candidates: left alone and reported",
     (DEPLOYMENT, "etl/weekly"), "reg.example.com/flows:1.0", None, "qa runs several images of reg.example.com/flows: "
                                                                   "reg.example.com/flows:2.0, reg.example.com/flows:3.0"),
    ("no candidate: left alone and reported",
     (DEPLOYMENT, "ml/train"), "reg.example.com/ml:9", None, "qa runs no image of reg.example.com/ml"),
    ("a pool and a deployment of the same name are different targets",
     (POOL, "etl/daily"), "reg.example.com/ml:9", None, "qa runs no image of reg.example.com/ml"),
    ("already the qa image: nothing to write, nothing skipped",
     (POOL, "k8s-other"), "reg.example.com/tools:5", None, None),
]


@pytest.mark.parametrize("why,key,image,new,skipped", CASES, ids=[c[0] for c in CASES])
def test_each_target_alone(why, key, image, new, skipped):
    result = plan_promotion(QA, {key: image})
    assert result.updates == ({key: new} if new else {}), why
    if skipped:
        assert result.skipped == {key: skipped}, why
    else:
        assert result.skipped == {}, why
    assert result.current == {key: image}


def test_all_targets_of_one_file_together():
    """One prod file with every case: the updates and the skips are exactly the table's, and a skipped
    target does not stop the others."""
    prod = {key: image for _, key, image, _, _ in CASES}
    result = plan_promotion(QA, prod)
    assert result.updates == {key: new for _, key, _, new, _ in CASES if new}
    assert set(result.skipped) == {key for _, key, _, _, skip in CASES if skip}
    assert not set(result.updates) & set(result.skipped)


def test_only_applied_images_count():
    """An image qa has not applied (a write in flight or failed) is no candidate, by name or by repository."""
    qa = qa_running((DEPLOYMENT, "etl/hourly", "reg.example.com/flows:3.0"),
                    unapplied=((DEPLOYMENT, "etl/daily", "reg.example.com/flows:9.9"),
                               (POOL, "k8s-qa", "reg.example.com/tools:9.9")))
    result = plan_promotion(qa, {(DEPLOYMENT, "etl/daily"): "reg.example.com/flows:1.0",
                                 (POOL, "k8s-prod"): "reg.example.com/tools:4"})
    # etl/daily's own qa entry is not applied: the repository's single applied image is used instead
    assert result.updates == {(DEPLOYMENT, "etl/daily"): "reg.example.com/flows:3.0"}
    assert result.skipped == {(POOL, "k8s-prod"): "qa runs no image of reg.example.com/tools"}


def test_two_targets_running_the_same_image_are_one_candidate():
    qa = qa_running((DEPLOYMENT, "etl/a", "reg.example.com/flows:2.0"), (DEPLOYMENT, "etl/b", "reg.example.com/flows:2.0"))
    result = plan_promotion(qa, {(DEPLOYMENT, "etl/c"): "reg.example.com/flows:1.0"})
    assert result.updates == {(DEPLOYMENT, "etl/c"): "reg.example.com/flows:2.0"} and result.skipped == {}


def test_nothing_running_in_qa_skips_everything():
    result = plan_promotion(qa_running(), {(DEPLOYMENT, "etl/daily"): "reg.example.com/flows:1.0"})
    assert result == PromotionPlan(updates={}, current={(DEPLOYMENT, "etl/daily"): "reg.example.com/flows:1.0"},
                                   skipped={(DEPLOYMENT, "etl/daily"): "qa runs no image of reg.example.com/flows"})


@pytest.mark.parametrize("image,repository", [
    ("reg.example.com/flows:1.4.2", "reg.example.com/flows"),
    ("reg.example.com:5000/flows:1.4.2", "reg.example.com:5000/flows"),
    ("reg.example.com:5000/flows", "reg.example.com:5000/flows"),
    ("flows", "flows"),
    ("flows:latest", "flows"),
    ("reg.example.com/team/flows@sha256:" + "a" * 64, "reg.example.com/team/flows"),
    ("reg.example.com:5000/flows:1.0@sha256:" + "a" * 64, "reg.example.com:5000/flows"),
])
def test_repository_of(image, repository):
    assert repository_of(image) == repository


def test_images_in_file_reads_the_image_of_every_target():
    text = """\
# prod
work_pools:
  k8s-prod:
    job_variables: {image: "reg.example.com/tools:4", namespace: prod}
  no-image: {job_variables: {namespace: x}}
  empty:
deployments:
  etl/daily:
    job_variables:
      image: reg.example.com/flows:1.0   # pinned
  etl/odd: {job_variables: {image: 42}}
"""
    assert images_in_file(text) == {(POOL, "k8s-prod"): "reg.example.com/tools:4",
                                    (DEPLOYMENT, "etl/daily"): "reg.example.com/flows:1.0"}
    assert images_in_file("") == {}
