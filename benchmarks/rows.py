"""One row of `make bench`'s table, and the table.

Each benchmark module has `rows(quick: bool) -> list[Row]` (what benchmarks/run.py
collects) and stays runnable on its own, printing its own rows the same way.
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Row:
    figure: str
    measured: str
    baseline: str = "—"
    ratio: str = "—"
    target: str = "—"
    met: bool | None = None  # None: reported, no target


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def ratio(measured: float, baseline: float) -> str:
    if baseline <= 0:
        return "—"
    value = measured / baseline
    return f"{value:.2f}×" if value >= 0.1 else f"{value:.2g}×"


def p50(samples: Sequence[float]) -> float:
    return statistics.median(samples)


def p99(samples: Sequence[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            names = [
                line.split(":", 1)[1].strip() for line in info if line.startswith("model name")
            ]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    memory = ""
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages / 2**30:.1f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    load = ""
    if hasattr(os, "getloadavg"):
        load = f", load {os.getloadavg()[0]:.1f}"
    return (
        f"{cpu}, {os.cpu_count()} cores{memory}{load}; "
        f"{platform.system()} {platform.release()}; Python {platform.python_version()}"
    )


def table(rows: Sequence[Row]) -> str:
    """ROWS as a Markdown table (figure | measured | baseline | ratio | target)."""
    header = ("figure", "measured", "baseline", "ratio", "target")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        mark = "" if row.met is None else (" ✓" if row.met else " ✗ MISSED")
        lines.append(
            f"| {row.figure} | {row.measured} | {row.baseline} | {row.ratio} | {row.target}{mark} |"
        )
    return "\n".join(lines)


def print_rows(rows: Sequence[Row]) -> int:
    """Print ROWS and the machine; exit status 1 when a target was missed."""
    print(table(rows))
    print(f"\nmachine: {machine()}")
    missed = [row.figure for row in rows if row.met is False]
    for figure in missed:
        print(f"MISSED: {figure}")
    return 1 if missed else 0


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process PID and every process it started that is still
    running, plus those it has waited for (Linux /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total, pending = 0, [str(pid)]
    while pending:
        current = pending.pop()
        try:
            # Fields after the command name (which may hold spaces): utime is 14th overall.
            stat = Path(f"/proc/{current}/stat").read_text(encoding="ascii")
            fields = stat.rsplit(")", 1)[1].split()
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children", encoding="ascii") as children:
                    pending += children.read().split()
        except (OSError, IndexError, ValueError):  # it ended meanwhile
            continue
    return total / ticks
