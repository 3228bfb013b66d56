"""Sync windows: Argo CD's allow/deny rules, across midnight, weekdays and DST."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from prefect_gitops.windows import SyncWindow, evaluate, next_change, window_active

UTC = timezone.utc


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def allow(schedule: str, duration: str, tz: str = "UTC") -> SyncWindow:
    return SyncWindow(kind="allow", schedule=schedule, duration=duration, timezone=tz)


def deny(schedule: str, duration: str, tz: str = "UTC") -> SyncWindow:
    return SyncWindow(kind="deny", schedule=schedule, duration=duration, timezone=tz)


NIGHTLY_DENY = deny("0 22 * * *", "8h")  # 22:00 until 06:00 the next day
OFFICE_HOURS = allow("0 9 * * 1-5", "8h")  # weekdays 09:00-17:00
BERLIN_MORNING = allow("0 9 * * *", "1h", "Europe/Berlin")

# (id, windows, now, allowed, reason fragment); 2024-01-10 is a Wednesday.
CASES = [
    ("no windows", [], utc(2024, 1, 10, 12), True, "no sync windows"),
    # deny windows
    ("deny active", [NIGHTLY_DENY], utc(2024, 1, 10, 23), False, "inside deny window '0 22 * * *' for 8h in UTC"),
    ("deny at its start", [NIGHTLY_DENY], utc(2024, 1, 10, 22), False, "inside deny window"),
    ("deny not active", [NIGHTLY_DENY], utc(2024, 1, 10, 12), True, "outside every deny window"),
    ("deny crosses midnight", [NIGHTLY_DENY], utc(2024, 1, 11, 3), False, "inside deny window"),
    ("deny ends, half-open", [NIGHTLY_DENY], utc(2024, 1, 11, 6), True, "outside every deny window"),
    ("deny one second before end", [NIGHTLY_DENY], utc(2024, 1, 11, 5, 59, 59), False, "inside deny window"),
    # allow windows
    ("allow active", [OFFICE_HOURS], utc(2024, 1, 10, 10), True, "inside allow window '0 9 * * 1-5' for 8h"),
    ("allow at its start", [OFFICE_HOURS], utc(2024, 1, 10, 9), True, "inside allow window"),
    ("before allow", [OFFICE_HOURS], utc(2024, 1, 10, 8, 59), False, "outside every allow window"),
    ("after allow, half-open", [OFFICE_HOURS], utc(2024, 1, 10, 17), False, "outside every allow window"),
    ("allow on saturday", [OFFICE_HOURS], utc(2024, 1, 13, 10), False, "outside every allow window"),
    ("allow on monday", [OFFICE_HOURS], utc(2024, 1, 15, 16, 30), True, "inside allow window"),
    ("weekend freeze crosses days", [deny("0 18 * * 5", "2d12h")], utc(2024, 1, 14, 12), False, "inside deny window"),
    ("weekend freeze over", [deny("0 18 * * 5", "2d12h")], utc(2024, 1, 15, 6), True, "outside every deny window"),
    # both kinds
    ("deny wins over allow", [OFFICE_HOURS, deny("0 12 * * *", "1h")], utc(2024, 1, 10, 12, 30), False,
     "inside deny window '0 12 * * *'"),
    ("allow when deny inactive", [OFFICE_HOURS, deny("0 12 * * *", "1h")], utc(2024, 1, 10, 13), True,
     "inside allow window"),
    ("neither active", [OFFICE_HOURS, NIGHTLY_DENY], utc(2024, 1, 10, 20), False, "outside every allow window"),
    ("one of two allows", [OFFICE_HOURS, allow("0 20 * * *", "1h")], utc(2024, 1, 10, 20, 15), True,
     "inside allow window '0 20 * * *'"),
    # Europe/Berlin: 09:00 local is 08:00Z in winter (CET) and 07:00Z in summer (CEST)
    ("berlin winter inside", [BERLIN_MORNING], utc(2024, 1, 10, 8, 30), True, "in Europe/Berlin"),
    ("berlin winter before", [BERLIN_MORNING], utc(2024, 1, 10, 7, 30), False, "outside every allow window"),
    ("berlin summer inside", [BERLIN_MORNING], utc(2024, 7, 10, 7, 30), True, "inside allow window"),
    ("berlin summer after", [BERLIN_MORNING], utc(2024, 7, 10, 8, 30), False, "outside every allow window"),
    # DST days: clocks go 02:00 CET -> 03:00 CEST on 2024-03-31, 03:00 CEST -> 02:00 CET on 2024-10-27
    ("spring forward day", [BERLIN_MORNING], utc(2024, 3, 31, 7, 30), True, "inside allow window"),
    ("spring forward day, old offset", [BERLIN_MORNING], utc(2024, 3, 31, 8, 30), False, "outside"),
    ("fall back day", [BERLIN_MORNING], utc(2024, 10, 27, 8, 30), True, "inside allow window"),
    ("fall back day, old offset", [BERLIN_MORNING], utc(2024, 10, 27, 7, 30), False, "outside"),
    # starts 00:00 CET (23:00Z); duration is elapsed time, so 6h ends 05:00Z = 07:00 CEST, not 06:00 wall time
    ("duration spans spring forward", [deny("0 0 * * *", "6h", "Europe/Berlin")], utc(2024, 3, 31, 4, 30), False,
     "inside deny window"),
    ("duration spans spring forward, ended", [deny("0 0 * * *", "6h", "Europe/Berlin")], utc(2024, 3, 31, 5), True,
     "outside every deny window"),
    # 02:30 does not exist on 2024-03-31; the start moves to 03:00 CEST (01:00Z)
    ("start in the DST gap", [deny("30 2 * * *", "1h", "Europe/Berlin")], utc(2024, 3, 31, 1, 30), False,
     "inside deny window"),
    # `now` in any zone means the same instant
    ("now given in another zone", [NIGHTLY_DENY], datetime(2024, 1, 11, 4, tzinfo=timezone(timedelta(hours=5))),
     False, "inside deny window"),  # 23:00Z
]


@pytest.mark.parametrize(("windows", "now", "allowed", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_evaluate(windows, now, allowed, fragment):
    verdict = evaluate(windows, now)
    assert verdict.allowed is allowed
    assert fragment in verdict.reason
    assert "\n" not in verdict.reason
    assert all(window_active(w, now) == (w in verdict.active) for w in windows)


INVALID = [
    ("bad cron value", {"schedule": "61 * * * *"}, "invalid cron expression '61 * * * *'"),
    ("too few cron fields", {"schedule": "* * * *"}, "expected 5 fields"),
    ("seconds field", {"schedule": "0 * * * * *"}, "expected 5 fields"),
    ("zero duration", {"duration": "0h"}, "must be greater than zero"),
    ("word duration", {"duration": "abc"}, "invalid duration 'abc'"),
    ("negative duration", {"duration": "-1h"}, "invalid duration '-1h'"),
    ("fractional duration", {"duration": "1.5h"}, "invalid duration"),
    ("empty duration", {"duration": ""}, "invalid duration"),
    ("units out of order", {"duration": "30m1h"}, "invalid duration"),
    ("unknown timezone", {"timezone": "Mars/Olympus_Mons"}, "unknown time zone 'Mars/Olympus_Mons'"),
    ("malformed timezone", {"timezone": "../etc/passwd"}, "unknown time zone"),
    ("unknown kind", {"kind": "maybe"}, "kind"),
    ("unknown field", {"manual_sync": True}, "Extra inputs are not permitted"),
]


@pytest.mark.parametrize(("override", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_window(override, message):
    spec = {"kind": "deny", "schedule": "0 22 * * *", "duration": "8h"} | override
    with pytest.raises(ValidationError) as info:
        SyncWindow.model_validate(spec)
    assert message in str(info.value)


@pytest.mark.parametrize(("duration", "seconds"), [("90s", 90), ("30m", 1800), ("1h", 3600), ("1h30m", 5400),
                                                   ("2d", 172800), ("1d2h3m4s", 93784)])
def test_duration_seconds(duration, seconds):
    assert deny("* * * * *", duration).duration_seconds == seconds


def test_window_is_frozen_and_schema_is_documented():
    with pytest.raises(ValidationError):
        NIGHTLY_DENY.duration = "1h"
    properties = SyncWindow.model_json_schema()["properties"]
    assert set(properties) == {"kind", "schedule", "duration", "timezone", "description"}
    assert all(p.get("description") for p in properties.values())


def test_naive_now_is_rejected():
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate([NIGHTLY_DENY], datetime(2024, 1, 10, 12))


def test_description_is_in_the_reason():
    freeze = SyncWindow(kind="deny", schedule="0 0 24 12 *", duration="3d", description="holiday freeze")
    verdict = evaluate([freeze], utc(2024, 12, 25, 12))
    assert (verdict.allowed, verdict.active) == (False, (freeze,))
    assert verdict.reason.endswith(": holiday freeze")


NEXT_CHANGE = [
    ("no windows never change", [], utc(2024, 1, 10, 12), None),
    ("deny opens", [NIGHTLY_DENY], utc(2024, 1, 10, 12), utc(2024, 1, 10, 22)),
    ("deny closes", [NIGHTLY_DENY], utc(2024, 1, 11, 3), utc(2024, 1, 11, 6)),
    ("friday evening to monday", [OFFICE_HOURS], utc(2024, 1, 12, 18), utc(2024, 1, 15, 9)),
    ("deny inside allow", [OFFICE_HOURS, deny("0 12 * * *", "1h")], utc(2024, 1, 10, 12, 30), utc(2024, 1, 10, 13)),
    ("overlapping denies", [deny("0 10 * * *", "2h"), deny("0 11 * * *", "2h")], utc(2024, 1, 10, 10, 30),
     utc(2024, 1, 10, 13)),
    ("always open", [allow("* * * * *", "5m")], utc(2024, 1, 10, 12), None),
    ("berlin summer", [BERLIN_MORNING], utc(2024, 7, 10, 12), utc(2024, 7, 11, 7)),
    ("beyond the horizon", [allow("0 0 1 1 *", "1h")], utc(2024, 6, 1), None),
]


@pytest.mark.parametrize(("windows", "now", "expected"), [c[1:] for c in NEXT_CHANGE], ids=[c[0] for c in NEXT_CHANGE])
def test_next_change(windows, now, expected):
    assert next_change(windows, now) == expected
