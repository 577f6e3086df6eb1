"""An image's recurring freeze windows as of now: the one it is in, or the next."""

from __future__ import annotations

from typing import Any

from bot.domain.freeze_windows import WindowTime, next_window, window_on
from bot.service.context import Context


def window_now(ctx: Context, image: str) -> WindowTime | None:
    """The recurring freeze window IMAGE is in now, if any."""
    return window_on(ctx.config.freeze_windows(image), ctx.store.clock())


def window_data(ctx: Context, image: str) -> dict[str, Any] | None:
    """The window IMAGE is in now ("on": true), else the next one; None without windows."""
    windows = ctx.config.freeze_windows(image)
    now = ctx.store.clock()
    current = window_on(windows, now)
    shown = current or next_window(windows, now)
    if shown is None:
        return None
    return {
        "on": current is not None,
        "reason": shown.window.reason,
        "from": shown.window.starts,
        "to": shown.window.ends,
        "timezone": shown.window.timezone,
        "starts_at": shown.starts_at.isoformat(timespec="seconds"),
        "ends_at": shown.ends_at.isoformat(timespec="seconds"),
        "text": shown.describe() if current else shown.describe_next(),
    }
