"""image_status: what status and the artifact show per target, and the last write-back kept across scans."""

from __future__ import annotations

import datetime as dt

import pytest

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


LATER = AT + dt.timedelta(minutes=10)
LAST = dict(outcome="updated", newest_tag="1.2.0", image="r.example.com/app:1.2.0", tags_seen=12, tags_ignored=3,
            tags_filtered_out=4, tags_out_of_range=2)
FAILED = dict(scanned_at=LATER, outcome="failed", error_kind="transient", message="the registry answered 503")
KEPT_KEYS = ("newest_tag", "image", "tags_seen", "tags_ignored", "tags_filtered_out", "tags_out_of_range")
KEPT = ("1.2.0", AT, "r.example.com/app:1.2.0", 12, 3, 4, 2)
NONE = (None, None, None, 0, 0, 0, 0)


@pytest.mark.parametrize("before, now, kept", [
    (LAST, FAILED, KEPT),  # the scan failed: the last newest tag stays, with when it was listed
    ({**LAST, "outcome": "current"}, FAILED, KEPT),
    ({**FAILED, "scanned_at": AT - dt.timedelta(hours=1), **{k: LAST[k] for k in KEPT_KEYS},
      "newest_tag_at": AT}, FAILED, KEPT),  # failed twice: still the time it was last listed, not the failure's
    ({"outcome": "no-tag"}, FAILED, NONE),  # nothing was allowed last time: nothing to keep
    (LAST, {**FAILED, "policy": "semver ^2"}, NONE),  # another policy now: the old tag says nothing about it
    (LAST, {**FAILED, "repository": "r.example.com/other"}, NONE),
    (LAST, {"scanned_at": LATER, "outcome": "no-tag"}, NONE),  # a scan that worked speaks for itself
    (LAST, {"scanned_at": LATER, "outcome": "current", "newest_tag": "1.3.0", "tags_seen": 13},
     ("1.3.0", None, None, 13, 0, 0, 0)),
])
def test_a_failed_scan_keeps_the_last_known_newest_tag(before, now, kept):
    previous = ScanStatus(environment="qa", scanned_at=AT, targets=[row(**before)])
    current = ScanStatus(environment="qa", scanned_at=LATER, targets=[row(**now)])
    t = current.carry_over(previous).targets[0]
    assert (t.newest_tag, t.newest_tag_at, t.image, t.tags_seen, t.tags_ignored, t.tags_filtered_out,
            t.tags_out_of_range) == kept
    assert (t.outcome, t.scanned_at, t.message) == (now["outcome"], LATER, now.get("message", ""))


def test_status_and_artifact_show_a_kept_newest_tag_and_that_the_last_scan_failed():
    previous = ScanStatus(environment="qa", scanned_at=AT, targets=[row(**LAST)])
    status = ScanStatus(environment="qa", scanned_at=LATER, targets=[row(**FAILED)]).carry_over(previous)
    text = "\n".join(status_lines(status))
    assert ("newest tag 1.2.0 of 12 (3 unparseable) as of 2026-12-02 04:00:00, scanned 2026-12-02 04:10:00: "
            "failed (the registry answered 503)") in text
    assert "| 1.2.0 as of 2026-12-02 04:00:00 | 12 (3) | 2026-12-02 04:10:00 | failed: the registry answered 503 |" \
        in markdown(status)
    fresh = "\n".join(status_lines(ScanStatus(environment="qa", scanned_at=AT, targets=[row(**LAST)])))
    assert "newest tag 1.2.0 of 12 (3 unparseable), scanned 2026-12-02 04:00:00: updated" in fresh
