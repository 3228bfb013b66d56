"""image_status: what status and the artifact show per target, and the last write-back kept across scans."""

from __future__ import annotations

import datetime as dt

from prefect_gitops.image_status import ScanStatus, TargetScan, markdown, status_lines

AT = dt.datetime(2026, 12, 2, 4, 0, tzinfo=dt.timezone.utc)


def row(**kwargs) -> TargetScan:
    return TargetScan(**{"target_type": "work_pool", "target": "k8s", "policy": "semver ^1",
                         "repository": "r.example.com/app", "scanned_at": AT, "outcome": "current", **kwargs})


def test_a_scan_that_writes_nothing_keeps_the_last_write_back():
    first = ScanStatus(environment="qa", scanned_at=AT, targets=[
        row(outcome="updated", newest_tag="1.2.0", written_image="r.example.com/app:1.2.0", written_at=AT,
            written_to="abc123")])
    later = AT + dt.timedelta(minutes=10)
    second = ScanStatus(environment="qa", scanned_at=later, targets=[row(scanned_at=later, newest_tag="1.2.0")])
    kept = second.carry_over(first).targets[0]
    assert (kept.written_image, kept.written_at, kept.written_to, kept.scanned_at) == (
        "r.example.com/app:1.2.0", AT, "abc123", later)
    assert second.carry_over(None) is second


def test_status_lines_and_artifact_show_policy_newest_tag_scan_time_and_write_back():
    status = ScanStatus(environment="qa", scanned_at=AT, revision="f" * 40, targets=[
        row(newest_tag="1.2.0", tags_seen=12, tags_ignored=3, written_image="r.example.com/app:1.2.0",
            written_at=AT, written_to="abc123"),
        row(target_type="deployment", target="etl/nightly", outcome="failed", error_kind="transient",
            message="r.example.com/job: the registry answered 429 | retry")])
    text = "\n".join(status_lines(status))
    assert "work_pool k8s: semver ^1" in text
    assert "newest tag 1.2.0 of 12 (3 unparseable), scanned 2026-12-02 04:00:00: current" in text
    assert "written back: r.example.com/app:1.2.0 at 2026-12-02 04:00:00 (abc123)" in text
    assert "deployment etl/nightly" in text and "failed (r.example.com/job: the registry answered 429" in text
    assert status_lines(None) == ["image scan:               never (no image_policy scanned yet)"]
    md = markdown(status)
    assert "| work_pool `k8s` | semver ^1 | 1.2.0 | 12 (3) |" in md and "429 \\| retry" in md
