"""The notebook runner's test report (DESIGN.md §5): checked, and summed up for a thread.

Pure: no I/O. The summary is what a build thread needs (counts and the failures with
a short traceback); the full report, with its package manifest, goes to the version.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from bot.builds.events import BadEvent

STATUSES = ("passed", "failed", "timeout", "error")
MAX_FAILURES = 5
TRACEBACK_LINES = 8
TRACEBACK_CHARS = 900
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def check_report(report: Any) -> dict[str, Any]:
    """The report when it has the documented shape; BadEvent naming the first problem."""
    if not isinstance(report, Mapping):
        raise BadEvent("the test report is not a JSON object")
    notebooks = report.get("notebooks")
    if not isinstance(notebooks, list):
        raise BadEvent("the test report has no `notebooks` list")
    for index, item in enumerate(notebooks, start=1):
        if not isinstance(item, Mapping):
            raise BadEvent(f"test report notebook {index} is not an object")
        if not isinstance(item.get("path"), str):
            raise BadEvent(f"test report notebook {index} has no path")
        if item.get("status") not in STATUSES:
            raise BadEvent(
                f"test report notebook {_shown(item['path'])}: unknown status "
                f"{_shown(item.get('status'))}"
            )
        failure = item.get("failure")
        if failure is not None and not isinstance(failure, Mapping):
            raise BadEvent(f"test report notebook {_shown(item['path'])}: failure is not an object")
    packages = report.get("packages", [])
    if not isinstance(packages, list):
        raise BadEvent("the test report's `packages` is not a list")
    checked = dict(report)
    # Descriptive: what is malformed is left out, so that `diff` can read what is stored.
    if "packages" in report:  # absent means unknown, not none: keep it absent
        checked["packages"] = [item for item in packages if _is_package(item)]
    if not isinstance(report.get("python"), str | None):
        del checked["python"]
    return checked


def _shown(value: Any, limit: int = 80) -> str:
    """VALUE quoted for a one-line message: control characters escaped, cut to LIMIT."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _is_package(item: Any) -> bool:
    return (
        isinstance(item, Mapping)
        and isinstance(item.get("name"), str)
        and isinstance(item.get("version"), str)
        and isinstance(item.get("source"), str | None)
    )


def summarize(report: Mapping[str, Any], build_id: str | None) -> dict[str, Any]:
    notebooks = report.get("notebooks") or []
    failed = [item for item in notebooks if item.get("status") != "passed"]
    return {
        "build_id": build_id,
        "total": len(notebooks),
        "passed": len(notebooks) - len(failed),
        "failures": [_failure(item) for item in failed[:MAX_FAILURES]],
        "more": max(len(failed) - MAX_FAILURES, 0),
    }


def _failure(item: Mapping[str, Any]) -> dict[str, Any]:
    failure = item.get("failure") or {}
    return {
        "path": str(item.get("path")),
        "status": item.get("status"),
        "cell": _int(failure.get("cell")),
        "execution_count": _int(failure.get("execution_count")),
        "line": _int(failure.get("line")),
        "ename": _short(failure.get("ename"), 120),
        "evalue": _short(failure.get("evalue"), 300),
        "traceback": short_traceback(failure.get("traceback")),
    }


def short_traceback(traceback: Any) -> str | None:
    """The last lines of a traceback, colour codes removed."""
    if isinstance(traceback, list):
        traceback = "\n".join(str(line) for line in traceback)
    if not isinstance(traceback, str) or not traceback.strip():
        return None
    lines = [line.rstrip() for line in _ANSI.sub("", traceback).strip().splitlines()]
    text = "\n".join(line for line in lines[-TRACEBACK_LINES:])
    return text[-TRACEBACK_CHARS:]


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _short(value: Any, limit: int) -> str | None:
    if value is None:
        return None
    text = _ANSI.sub("", str(value)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
