"""How long a notebook instance may sit idle before it stops itself (`idle_timeout`).

Written in the config as a duration with its unit (`3h`, `90m`, `1h30m`); `0` or null
means never. Bounded as Workbench bounds its idle shutdown: "any integer value from 10
to 1440" minutes (cloud.google.com/vertex-ai/docs/workbench/instances/idle-shutdown),
whose default, 180 minutes, is ours too.
"""

from __future__ import annotations

import re

DEFAULT_IDLE_TIMEOUT_S = 3 * 3600
MIN_IDLE_TIMEOUT_S = 10 * 60
MAX_IDLE_TIMEOUT_S = 24 * 3600
_DURATION = re.compile(r"(?:(\d{1,2})h)?(?:(\d{1,4})m)?")


def parse_idle_timeout(value: object) -> int | None:
    """Seconds, or None for never; ValueError (one line, what to write) otherwise."""
    if value is None or (type(value) is int and value == 0) or value == "0":
        return None
    if not isinstance(value, str):
        raise ValueError(
            f"{str(value)[:20]} has no unit: write a duration like 3h, 90m or 1h30m "
            "(0 or null: never)"
        )
    text = value.strip().lower()
    match = _DURATION.fullmatch(text) if len(text) <= 12 else None
    if match is None or not any(match.groups()):
        raise ValueError(
            f"{value[:20]!r} is not a duration: write it like 3h, 90m or 1h30m (0 or null: never)"
        )
    hours, minutes = (int(part) if part else 0 for part in match.groups())
    seconds = hours * 3600 + minutes * 60
    if not MIN_IDLE_TIMEOUT_S <= seconds <= MAX_IDLE_TIMEOUT_S:
        raise ValueError(
            f"{value[:20]!r} is out of bounds: between 10m and 24h (Workbench's own bounds "
            "for idle shutdown), or 0 for never"
        )
    return seconds


def duration_text(seconds: int) -> str:
    """3h, 90m → 1h30m, 45s (shorter than a minute: only in tests)."""
    if seconds < 60:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes or not hours else "")


def idle_stop_text(seconds: int | None) -> str:
    """What `/nbenv instances` says of an instance's idle stop."""
    if seconds is None:
        return "never stops when idle"
    return f"stops after {duration_text(seconds)} idle"
