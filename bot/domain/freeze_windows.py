"""Recurring freeze windows: the weekly hours in which an image is not promoted.

A window is read in its own time zone's wall clock ("fri 16:00" to "mon 09:00",
Europe/Berlin), so it keeps its hours across daylight-saving changes; it may cross
midnight and the end of the week. Pure: the caller says what time it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEK_S = 7 * 24 * 3600
_MOMENT = re.compile(r"([a-z]{3,9})\s+([01]?\d|2[0-3]):([0-5]\d)")
MAX_REASON = 200  # characters of a window's reason (it is shown in refusals and status)


def week_second(text: str) -> int:
    """ "fri 16:00" as seconds since Monday 00:00; ValueError saying what is wrong."""
    found = _MOMENT.fullmatch(text.strip().lower()) if isinstance(text, str) else None
    if found is None:
        raise ValueError(f"expected a day and a time like 'fri 16:00', not {str(text)[:40]!r}")
    day, hour, minute = found.groups()
    if day in DAYS:
        index = DAYS.index(day)
    elif day in _FULL_DAYS:
        index = _FULL_DAYS.index(day)
    else:
        raise ValueError(f"{day!r} is not a day: use mon, tue, wed, thu, fri, sat or sun")
    return index * 86400 + int(hour) * 3600 + int(minute) * 60


def zone(name: str) -> ZoneInfo:
    """The IANA time zone NAME; ValueError when there is none by that name."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"{str(name)[:60]!r} is not a time zone: use an IANA name like Europe/Berlin"
        ) from None


@dataclass(frozen=True)
class FreezeWindow:
    starts: str  # as written: "fri 16:00"
    ends: str
    timezone: str
    reason: str

    @classmethod
    def of(cls, starts: str, ends: str, timezone: str, reason: str) -> FreezeWindow:
        """A checked window; ValueError naming what is wrong."""
        window = cls(starts.strip().lower(), ends.strip().lower(), timezone, reason.strip())
        zone(timezone)
        if week_second(window.starts) == week_second(window.ends):
            raise ValueError(f"the window from {starts!r} to {ends!r} is empty")
        if not window.reason:
            raise ValueError("a window needs a reason: it is shown to whoever is refused")
        if len(window.reason) > MAX_REASON:
            raise ValueError(f"a window's reason is at most {MAX_REASON} characters")
        return window

    def describe(self) -> str:
        return f"{self.reason} ({self.starts} – {self.ends} {self.timezone})"

    def seconds_until(self, now: datetime) -> tuple[int, int]:
        """(until it next starts, until it next ends), in the zone's wall-clock seconds;
        0 until it starts means it is on."""
        local = now.astimezone(zone(self.timezone))
        position = local.weekday() * 86400 + local.hour * 3600 + local.minute * 60 + local.second
        to_start = (week_second(self.starts) - position) % WEEK_S
        to_end = (week_second(self.ends) - position) % WEEK_S or WEEK_S  # [start, end)
        if to_end < to_start:  # the end comes first: we are inside
            return 0, to_end
        return to_start, to_end

    def wall_clock_later(self, now: datetime, seconds: int) -> datetime:
        """The instant SECONDS of this zone's wall clock after NOW, in UTC: counting on the
        wall clock keeps "mon 09:00" at 09:00 across a daylight-saving change."""
        local = now.astimezone(zone(self.timezone)).replace(tzinfo=None)
        later = (local + timedelta(seconds=seconds)).replace(tzinfo=zone(self.timezone))
        return later.astimezone(UTC)


@dataclass(frozen=True)
class WindowTime:
    window: FreezeWindow
    starts_at: datetime  # UTC; now or earlier for the window that is on
    ends_at: datetime  # UTC

    def describe(self) -> str:
        return f"{self.window.describe()}, until {_when(self.ends_at, self.window.timezone)}"

    def describe_next(self) -> str:
        return (
            f"{self.window.reason}: from {_when(self.starts_at, self.window.timezone)} "
            f"until {_when(self.ends_at, self.window.timezone)}"
        )


def _when(moment: datetime, timezone: str) -> str:
    return moment.astimezone(zone(timezone)).strftime(f"%a %Y-%m-%d %H:%M {timezone}")


def window_on(windows: tuple[FreezeWindow, ...], now: datetime) -> WindowTime | None:
    """The window NOW is in (the one ending last, if several are), or None."""
    on = []
    for window in windows:
        to_start, to_end = window.seconds_until(now)
        if to_start == 0:
            on.append(WindowTime(window, now, window.wall_clock_later(now, to_end)))
    return max(on, key=lambda item: item.ends_at, default=None)


def next_window(windows: tuple[FreezeWindow, ...], now: datetime) -> WindowTime | None:
    """The window that begins next after NOW (not one that is on), or None."""
    coming = []
    for window in windows:
        to_start, to_end = window.seconds_until(now)
        if to_start > 0:
            coming.append(
                WindowTime(
                    window,
                    window.wall_clock_later(now, to_start),
                    window.wall_clock_later(now, to_end),
                )
            )
    return min(coming, key=lambda item: item.starts_at, default=None)
