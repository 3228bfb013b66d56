"""prefect-file's copy of prefect.yaml: --schedule-interval changes the reconciles' schedules only."""

from __future__ import annotations

from pathlib import Path

from prefect_gitops.prefect_file import prebuilt

PREFECT_YAML = Path(__file__).resolve().parents[2] / "prefect.yaml"


def test_schedule_interval_changes_the_reconciles_and_leaves_the_image_scan_alone():
    declared = {d["name"]: d.get("schedules") for d in prebuilt(PREFECT_YAML, "img:1")["deployments"]}
    changed = {d["name"]: d.get("schedules") for d in prebuilt(PREFECT_YAML, "img:1", schedule_interval=10)["deployments"]}
    reconciles = [name for name in declared if name.startswith("reconcile-")]
    assert reconciles and declared["image-scan-qa"] == [{"interval": 600}]
    for name in reconciles:
        assert [s["interval"] for s in changed[name]] == [10] != [s["interval"] for s in declared[name]]
    # the scan still polls the registries every 10 minutes; deployments without a schedule get none
    assert {name: changed[name] for name in declared if name not in reconciles} == {
        name: declared[name] for name in declared if name not in reconciles}
