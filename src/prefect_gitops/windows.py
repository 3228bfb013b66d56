"""Sync windows, as in Argo CD: cron-scheduled allow/deny periods for applying changes.

Pure: no I/O and no clock reads; callers pass `now` (timezone-aware).
Rules (Argo CD's): an active deny window blocks syncs and wins over allow
windows; if allow windows exist, syncs happen only while one is active.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator

UTC = timezone.utc

# Units in a fixed order, Go-style ("1h30m") plus days; no fractions or signs.
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")
_UNIT_SECONDS = (86400, 3600, 60, 1)


def _parse_duration(text: str) -> int:
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"invalid duration {text!r}: use e.g. '90s', '30m', '1h30m', '2d'")
    seconds = sum(int(n) * unit for n, unit in zip(match.groups(), _UNIT_SECONDS) if n)
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return seconds


class SyncWindow(BaseModel):
    """A period, starting at each cron fire time and lasting `duration`, when syncs are allowed or denied."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["allow", "deny"] = Field(
        description="allow: syncs only inside allow windows; deny: no syncs inside (deny wins over allow).")
    schedule: str = Field(
        description="5-field cron expression for when the window opens, in `timezone`, e.g. '0 22 * * 1-5'.")
    duration: str = Field(
        description="How long the window stays open after each start: e.g. '90s', '30m', '1h30m', '2d'.")
    timezone: str = Field(default="UTC", description="IANA time zone the schedule is read in, e.g. 'Europe/Berlin'.")
    description: str = Field(default="", description="Why the window exists; shown in status messages.")

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        value = " ".join(value.split())
        # cronsim also takes a 6th (seconds) field; we promise plain 5-field cron.
        if len(value.split()) != 5:
            raise ValueError(f"invalid cron expression {value!r}: expected 5 fields (minute hour day month weekday)")
        try:
            CronSim(value, datetime(2000, 1, 1))
        except CronSimError as exc:
            raise ValueError(f"invalid cron expression {value!r}: {exc}") from None
        return value

    @field_validator("duration")
    @classmethod
    def _duration(cls, value: str) -> str:
        _parse_duration(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):  # ValueError: malformed keys like "../x"
            raise ValueError(f"unknown time zone {value!r}: use an IANA name such as 'Europe/Berlin'") from None
        return value

    @property
    def duration_seconds(self) -> int:
        return _parse_duration(self.duration)

    def describe(self) -> str:
        text = f"{self.schedule!r} for {self.duration} in {self.timezone}"
        return f"{text}: {self.description}" if self.description else text


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now.astimezone(UTC)


def _starts(window: SyncWindow, after: datetime) -> Iterator[datetime]:
    """Fire times strictly after `after`, as UTC instants.

    cronsim works on wall-clock time in the window's zone (so "0 9 * * *" stays
    at 09:00 local across DST) and nudges times in a spring-forward gap to the
    first valid minute. All arithmetic and comparisons happen in UTC because
    Python compares datetimes sharing one tzinfo by wall time, which is wrong
    across DST changes.
    """
    local = after.astimezone(ZoneInfo(window.timezone))
    for fire in CronSim(window.schedule, local):
        yield fire.astimezone(UTC)


def window_active(window: SyncWindow, now: datetime) -> bool:
    """True when `now` is in [start, start + duration) for some start of the window's schedule."""
    now = _utc(now)
    length = timedelta(seconds=window.duration_seconds)
    # Only a start in (now - duration, now] can cover now, so begin the scan there.
    for start in _starts(window, now - length):
        if start > now:
            return False
        if start + length > now:
            return True
    return False  # only reached if cronsim runs out of dates


@dataclass(frozen=True)
class WindowVerdict:
    allowed: bool
    reason: str
    active: tuple[SyncWindow, ...]


def evaluate(windows: Sequence[SyncWindow], now: datetime) -> WindowVerdict:
    """May a sync run at `now`? Deny beats allow; allow windows, if any, must be active."""
    if not windows:
        return WindowVerdict(True, "no sync windows", ())
    active = tuple(w for w in windows if window_active(w, now))
    denies = [w for w in active if w.kind == "deny"]
    allows = [w for w in active if w.kind == "allow"]
    if denies:
        return WindowVerdict(False, "inside deny window " + "; ".join(w.describe() for w in denies), active)
    if allows:
        return WindowVerdict(True, "inside allow window " + "; ".join(w.describe() for w in allows), active)
    if any(w.kind == "allow" for w in windows):
        listed = "; ".join(w.describe() for w in windows if w.kind == "allow")
        return WindowVerdict(False, f"outside every allow window ({listed})", active)
    listed = "; ".join(w.describe() for w in windows)
    return WindowVerdict(True, f"outside every deny window ({listed})", active)


def next_change(
    windows: Sequence[SyncWindow], now: datetime, horizon: timedelta = timedelta(days=7)
) -> datetime | None:
    """The first instant in (now, now + horizon] when `evaluate(...).allowed` flips, else None.

    The verdict can only change where some window opens or closes, so only
    those instants are checked (exact, and cheaper than stepping by minute).
    """
    now = _utc(now)
    end = now + horizon
    edges: set[datetime] = set()
    for window in windows:
        length = timedelta(seconds=window.duration_seconds)
        for start in _starts(window, now - length):
            if start > end:
                break
            edges.update(t for t in (start, start + length) if now < t <= end)
    allowed = evaluate(windows, now).allowed
    for edge in sorted(edges):
        if evaluate(windows, edge).allowed != allowed:
            return edge
    return None
