"""Benchmark of the notebook test runner: does running notebooks in parallel pay off?

Run: ``python benchmarks/bench_runner.py [--rounds N]``

Side by side in one run, each case through the real command line (a fresh
``python bot/runner/notebook_tests.py DIR --report ...``, as the Cloud Build step runs it):

* 4 notebooks with ``--jobs 1``;
* 4 notebooks with the default jobs (the usable CPUs);
* 1 notebook alone.

With 2 CPUs the default runs the 4 notebooks as two pairs, so it should take about
as long as two single notebooks: the target is default / (2 x single) <= 1.25.
The cases are interleaved over the rounds (so drift in machine load hits all of them)
and the median is reported.

Each case is also timed "warm": ``run_notebooks()`` called in this process, whose
worker pool's fork server has already imported Jupyter's packages. A command-line run
pays that import once (about 1.8 s here, most of it jsonschema building an IRI grammar
when ``rfc3987-syntax`` is installed); the warm figures show the parallel efficiency
without that fixed cost, which flatters the command-line ratio.

Kernel-shutdown stalls: the runner records, in each executed notebook's metadata, the
seconds spent starting the kernel, executing and shutting it down. A stall is a
notebook whose wall time exceeds kernel start plus execution by more than 2 s.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nbformat
from nbformat import v4

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from rows import Row, print_rows  # noqa: E402

RUNNER = REPO / "bot" / "runner" / "notebook_tests.py"
TARGET_RATIO = 1.25
STALL_S = 2.0

# Shaped like an image's test notebook: imports, a little CPU work, a little waiting
# (on files, a service, a model load).
CELLS = [
    "md:# Benchmark notebook",
    "import json, sqlite3, time\nstarted = time.perf_counter()",
    "total = sum(i * i for i in range(2_000_000))\nassert total > 0",
    "time.sleep(0.5)",
    "with sqlite3.connect(':memory:') as db:\n"
    "    db.execute('create table t (x)')\n"
    "    db.executemany('insert into t values (?)', [(i,) for i in range(10_000)])\n"
    "print(json.dumps({'seconds': time.perf_counter() - started}))",
]


def write_notebooks(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        nb = v4.new_notebook(
            cells=[
                v4.new_markdown_cell(c[3:]) if c.startswith("md:") else v4.new_code_cell(c)
                for c in CELLS
            ]
        )
        nbformat.write(nb, str(folder / f"nb{i}.ipynb"))


def run_case(folder: Path, out: Path, jobs: int | None) -> tuple[float, list[dict[str, float]]]:
    """Wall seconds of one CLI run, and each notebook's timing from its executed copy."""
    argv = [sys.executable, str(RUNNER), str(folder), "--report", str(out / "report.json")]
    if jobs is not None:
        argv += ["--jobs", str(jobs)]
    started = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"benchmark run failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    report = json.loads((out / "report.json").read_text())
    timings = []
    for entry in report["notebooks"]:
        executed = nbformat.read(out / "executed" / Path(entry["path"]).name, as_version=4)
        timings.append(executed.metadata["nbenv_runner"])
    return wall, timings


def run_case_warm(
    folder: Path, jobs: int | None, run_notebooks: Callable[..., dict[str, Any]]
) -> float:
    """Wall seconds of run_notebooks() in this process (fork server already warm)."""
    started = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):  # the per-notebook progress lines
        report = run_notebooks(folder, jobs=jobs)
    wall = time.perf_counter() - started
    if any(e["status"] != "passed" for e in report["notebooks"]):
        sys.exit(f"benchmark run failed: {report['notebooks']}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all cases (default 3)")
    args = parser.parse_args()
    return print_rows(measured_rows(args.rounds))


def rows(quick: bool = False) -> list[Row]:
    """The rows of `make bench` (benchmarks/run.py)."""
    return measured_rows(1 if quick else 2)  # within make bench's 10 minutes


def measured_rows(rounds: int) -> list[Row]:
    sys.path.insert(0, str(REPO))
    from bot.runner.notebook_tests import default_jobs, run_notebooks

    cpus = default_jobs()
    cases = [
        ("4 notebooks, --jobs 1", "four", 4, 1),
        (f"4 notebooks, default jobs ({cpus})", "four", 4, None),
        ("1 notebook alone", "one", 1, None),
    ]
    cli: dict[str, list[float]] = {label: [] for label, *_ in cases}
    warm: dict[str, list[float]] = {label: [] for label, *_ in cases}
    timings: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as tmp:
        root = Path(tmp)
        write_notebooks(root / "four", 4)
        write_notebooks(root / "one", 1)
        run_case_warm(root / "one", None, run_notebooks)  # start the fork server
        for round_no in range(rounds):
            # Rotate the order so no case always runs first (cold caches) or last.
            shift = round_no % len(cases)
            for label, folder, _, jobs in cases[shift:] + cases[:shift]:
                wall, notebook_timings = run_case(root / folder, root / "out" / folder, jobs)
                cli[label].append(wall)
                timings.extend(notebook_timings)
                warm[label].append(run_case_warm(root / folder, jobs, run_notebooks))

    serial, default, single = (label for label, *_ in cases)
    found = []
    for how, walls in (("command line", cli), ("in process, warm", warm)):
        four, one = statistics.median(walls[default]), statistics.median(walls[single])
        found.append(
            Row(
                f"4 test notebooks on {os.cpu_count()} cores, default jobs ({how}, "
                f"median of {rounds}; --jobs 1: {statistics.median(walls[serial]):.2f} s)",
                f"{four:.2f} s",
                f"{one:.2f} s (one notebook)",
                f"{four / (2 * one):.2f} (÷ 2 × one)",
                f"≤ {TARGET_RATIO} × 2 × one" if how == "command line" else "—",
                four <= TARGET_RATIO * 2 * one if how == "command line" else None,
            )
        )
    stalls = [
        t for t in timings if t["duration_s"] - t["kernel_start_s"] - t["execute_s"] > STALL_S
    ]
    shutdowns = [t["shutdown_s"] for t in timings]
    found.append(
        Row(
            f"kernel-shutdown stalls (wall > start + execution + {STALL_S:g} s), "
            f"{len(timings)} notebook runs; shutdown max {max(shutdowns):.2f} s",
            str(len(stalls)),
            target="0",
            met=not stalls,
        )
    )
    return found


if __name__ == "__main__":
    sys.exit(main())
