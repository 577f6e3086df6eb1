"""The notebook test runner, driven the way its users drive it: a folder of real notebooks,
real kernels; then the report, the printed lines and the exit status are checked."""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.runner.notebook_tests import collect_packages, error_line, format_failure, main

from .conftest import NotebookFactory, write_notebook

REPO = Path(__file__).resolve().parents[2]
RUNNER_FILE = REPO / "bot" / "runner" / "notebook_tests.py"
TIMEOUT_S = 2

# --------------------------------------------------------------------------------------
# One mixed folder, run once through main() (what `nbenv test-notebooks` calls); most
# tests below look at a different aspect of that single run.

MIXED = {
    "1_pass.ipynb": [
        "md:# Checks the kernel's environment",
        "import os, sys\nprint(os.getcwd())\nprint(sys.executable)",
        "open('written-by-kernel.txt', 'w').write('hello')",
    ],
    "2_fail.ipynb": [
        "md:# A markdown cell first: cells are counted as a person counts them",
        "x = 1",
        "d = {'y': x}\nd['x']",
        "open('must-not-exist.txt', 'w').write('cells after a failure do not run')",
    ],
    "3_nested.ipynb": [
        "def helper():\n    return 1 / 0",
        "md:The error is raised in cell 1's function but the failing cell is 3",
        "value = 2\nhelper()",
    ],
    "4_timeout.ipynb": [
        "import time",
        "md:Sleeps far past the per-cell timeout",
        "x = 1\ntime.sleep(60)",
    ],
    "5_stuck.ipynb": [
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)",
    ],
    "7_dies.ipynb": ["md:The kernel process exits under us", "import os\nos._exit(3)"],
}


class Run:
    """What a user sees after one run: exit status, printed output, report, files."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.folder = cwd / "tests"
        self.out = cwd / "out"
        self.status = -1
        self.stdout = self.stderr = ""
        self.elapsed_s = 0.0
        self.report: dict[str, Any] = {}

    def entry(self, name: str) -> dict[str, Any]:
        [found] = [e for e in self.report["notebooks"] if e["path"] == f"tests/{name}"]
        return found


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    run = Run(tmp_path_factory.mktemp("mixed"))
    for name, cells in MIXED.items():
        write_notebook(run.folder / name, cells)
    (run.folder / "6_malformed.ipynb").write_text('{"cells": [', encoding="utf-8")
    (run.folder / "README.md").write_text("not a notebook", encoding="utf-8")

    stdout, stderr = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    os.chdir(run.cwd)
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            run.status = main(
                ["tests", "--report", "out/report.json", "--timeout", str(TIMEOUT_S), "--jobs", "2"]
            )
    finally:
        run.elapsed_s = time.monotonic() - started
        os.chdir(old_cwd)
    run.stdout, run.stderr = stdout.getvalue(), stderr.getvalue()
    run.report = json.loads((run.out / "report.json").read_text(encoding="utf-8"))
    return run


def test_any_failure_makes_the_exit_status_1(mixed: Run) -> None:
    assert mixed.status == 1


def test_report_has_exactly_the_contract_schema(mixed: Run) -> None:
    report = mixed.report
    assert set(report) == {"python", "packages", "notebooks"}
    assert report["python"] == platform.python_version()
    for entry in report["notebooks"]:
        assert set(entry) == {"path", "status", "duration_s", "failure"}
        assert entry["status"] in {"passed", "failed", "timeout", "error"}
        assert isinstance(entry["duration_s"], float) and entry["duration_s"] >= 0
        if entry["status"] == "passed":
            assert entry["failure"] is None
        else:
            # The contract's keys, plus the In [N] a person finds the cell by in Jupyter.
            assert set(entry["failure"]) == {
                "cell",
                "execution_count",
                "line",
                "ename",
                "evalue",
                "traceback",
            }


def test_manifest_lists_installed_packages_normalised_and_sorted(mixed: Run) -> None:
    packages = mixed.report["packages"]
    names = [p["name"] for p in packages]
    assert names == sorted(set(names)), "sorted, one entry per package"
    assert all(re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", n) for n in names), names
    by_name = {p["name"]: p["version"] for p in packages}
    assert by_name["nbclient"] == importlib.metadata.version("nbclient")
    assert by_name["jupyter-client"] == importlib.metadata.version("jupyter_client")


def test_every_notebook_is_reported_in_order_with_paths_relative_to_cwd(mixed: Run) -> None:
    assert [e["path"] for e in mixed.report["notebooks"]] == [
        "tests/1_pass.ipynb",
        "tests/2_fail.ipynb",
        "tests/3_nested.ipynb",
        "tests/4_timeout.ipynb",
        "tests/5_stuck.ipynb",
        "tests/6_malformed.ipynb",
        "tests/7_dies.ipynb",
    ]


def test_passing_notebook_runs_in_its_folder_with_this_interpreter(mixed: Run) -> None:
    assert mixed.entry("1_pass.ipynb")["status"] == "passed"
    assert (mixed.folder / "written-by-kernel.txt").read_text() == "hello"
    executed = nbformat.read(mixed.out / "executed" / "1_pass.ipynb", as_version=4)
    printed = executed.cells[1].outputs[0]["text"].splitlines()
    assert printed == [str(mixed.folder.resolve()), sys.executable]


def test_failure_names_cell_counting_markdown_and_line_in_cell(mixed: Run) -> None:
    entry = mixed.entry("2_fail.ipynb")
    assert entry["status"] == "failed"
    failure = entry["failure"]
    assert (failure["cell"], failure["line"], failure["ename"], failure["evalue"]) == (
        3,
        2,
        "KeyError",
        "'x'",
    )
    # Jupyter labels it In [2]: the markdown cell before it has no execution count.
    assert failure["execution_count"] == 2
    assert "\x1b" not in failure["traceback"], "ANSI colours are stripped"
    assert "----> 2 d['x']" in failure["traceback"]
    assert failure["traceback"].splitlines()[-1] == "KeyError: 'x'"
    assert len(failure["traceback"].splitlines()) <= 15
    assert not (mixed.folder / "must-not-exist.txt").exists(), "cells after a failure ran"


def test_error_raised_in_another_cells_function_points_at_the_calling_line(mixed: Run) -> None:
    failure = mixed.entry("3_nested.ipynb")["failure"]
    assert (failure["cell"], failure["line"], failure["ename"], failure["evalue"]) == (
        3,
        2,
        "ZeroDivisionError",
        "division by zero",
    )
    assert "1 / 0" in failure["traceback"], "the traceback still shows where it was raised"


def test_timeout_names_the_running_cell_and_the_line_it_was_stuck_on(mixed: Run) -> None:
    entry = mixed.entry("4_timeout.ipynb")
    assert entry["status"] == "timeout"
    failure = entry["failure"]
    assert (failure["cell"], failure["line"], failure["ename"]) == (3, 2, "TimeoutError")
    assert failure["evalue"] == f"Cell execution timed out after {TIMEOUT_S} s"
    assert entry["duration_s"] < TIMEOUT_S + 10


def test_cell_ignoring_interrupts_still_times_out(mixed: Run) -> None:
    entry = mixed.entry("5_stuck.ipynb")
    assert entry["status"] == "timeout"
    assert (entry["failure"]["cell"], entry["failure"]["line"]) == (1, None)
    assert mixed.elapsed_s < 40, "a stuck kernel must not hold the run"


def test_malformed_notebook_is_an_error_not_a_crash(mixed: Run) -> None:
    entry = mixed.entry("6_malformed.ipynb")
    assert entry["status"] == "error"
    assert entry["failure"]["ename"] == "NotebookReadError"
    assert (entry["failure"]["cell"], entry["failure"]["line"]) == (None, None)
    assert "JSON" in entry["failure"]["evalue"]
    assert not (mixed.out / "executed" / "6_malformed.ipynb").exists()


def test_kernel_death_fails_the_cell_that_killed_it(mixed: Run) -> None:
    entry = mixed.entry("7_dies.ipynb")
    assert entry["status"] == "failed"
    assert (entry["failure"]["cell"], entry["failure"]["ename"]) == (2, "DeadKernelError")


def test_prints_one_line_per_failure_then_a_summary(mixed: Run) -> None:
    assert mixed.stdout.splitlines() == [
        "tests/2_fail.ipynb cell 3 (In [2]), line 2: KeyError: 'x'",
        "tests/3_nested.ipynb cell 3 (In [2]), line 2: ZeroDivisionError: division by zero",
        f"tests/4_timeout.ipynb cell 3 (In [2]), line 2: TimeoutError: Cell execution timed "
        f"out after {TIMEOUT_S} s",
        f"tests/5_stuck.ipynb cell 1 (In [1]): TimeoutError: Cell execution timed out after "
        f"{TIMEOUT_S} s",
        "tests/6_malformed.ipynb: NotebookReadError: "
        + mixed.entry("6_malformed.ipynb")["failure"]["evalue"],
        "tests/7_dies.ipynb cell 2 (In [1]): DeadKernelError: "
        + mixed.entry("7_dies.ipynb")["failure"]["evalue"],
        mixed.stdout.splitlines()[-1],
    ]
    assert re.fullmatch(
        r"FAILED: 7 notebooks: 1 passed, 3 failed, 2 timed out, 1 errors in [\d.]+ s; "
        r"report: out/report\.json",
        mixed.stdout.splitlines()[-1],
    )


def test_executed_notebooks_keep_outputs_up_to_the_failure(mixed: Run) -> None:
    executed = sorted(p.name for p in (mixed.out / "executed").iterdir())
    assert executed == sorted(MIXED), "every notebook that was run is kept"
    failed = nbformat.read(mixed.out / "executed" / "2_fail.ipynb", as_version=4)
    error = failed.cells[2].outputs[-1]
    assert (error["output_type"], error["ename"]) == ("error", "KeyError")
    assert failed.cells[3].outputs == [], "the cell after the failure was not run"
    assert failed.metadata["language_info"]["name"] == "python"


def test_runs_notebooks_in_parallel(mixed: Run) -> None:
    # Sequentially the two timeouts alone (2 s + 2 s, then 5 s of grace) exceed this.
    durations = sum(e["duration_s"] for e in mixed.report["notebooks"])
    assert mixed.elapsed_s < durations


# --------------------------------------------------------------------------------------
# Other runs: all passing, the stand-alone file, bad usage.


def test_all_passing_via_module_exits_0_with_dir_relative_paths(
    tmp_path: Path, notebook: NotebookFactory
) -> None:
    folder = tmp_path / "image" / "tests"
    notebook(folder / "a.ipynb", ["md:# fine", "assert 1 + 1 == 2"])
    notebook(folder / "b.ipynb", ["import json\nprint(json.dumps({'ok': True}))"])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bot.runner", str(folder), "--jobs", "1"],
        cwd=elsewhere,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("PASSED: 2 notebooks: 2 passed, 0 failed")
    assert "tests/a.ipynb" in proc.stderr and "tests/b.ipynb" in proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.ipynb", "b.ipynb"], "no report asked"
    assert list(elsewhere.iterdir()) == []


def test_single_file_runs_alone_outside_the_package(
    tmp_path: Path, notebook: NotebookFactory
) -> None:
    # What the Cloud Build step does: copy the file into the image and run it by path.
    isolated = tmp_path / "workspace"
    isolated.mkdir()
    script = shutil.copy(RUNNER_FILE, isolated / "notebook_tests.py")
    folder = tmp_path / "checkout" / "tests"
    notebook(folder / "ok.ipynb", ["import sqlite3\nsqlite3.connect(':memory:').close()"])
    notebook(folder / "bad.ipynb", ["md:intro", "md:more", "raise ValueError('nope')"])
    proc = subprocess.run(
        # -I: no PYTHONPATH, no user site, no script dir; `bot` cannot be imported.
        [sys.executable, "-I", script, str(folder), "--report", "report.json"],
        cwd=isolated,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert (
        proc.stdout.splitlines()[0] == "tests/bad.ipynb cell 3 (In [1]), line 1: ValueError: nope"
    )
    report = json.loads((isolated / "report.json").read_text())
    assert [(e["path"], e["status"]) for e in report["notebooks"]] == [
        ("tests/bad.ipynb", "failed"),
        ("tests/ok.ipynb", "passed"),
    ]
    assert sorted(p.name for p in (isolated / "executed").iterdir()) == ["bad.ipynb", "ok.ipynb"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing-dir"], "error: not a folder: missing-dir"),
        (["empty"], "error: no notebooks (*.ipynb) in empty"),
    ],
)
def test_bad_folder_is_a_usage_error(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no notebooks here")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == message
    assert captured.out == ""


def test_bad_option_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], notebook: NotebookFactory
) -> None:
    notebook(tmp_path / "a.ipynb", ["1"])
    assert main([str(tmp_path), "--jobs", "0"]) == 2
    assert "--jobs: must be >= 1" in capsys.readouterr().err


def test_conda_packages_join_the_manifest_when_conda_is_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conda = tmp_path / "bin" / "conda"
    conda.parent.mkdir()
    listing = [
        {"name": "openssl", "version": "3.0.13", "channel": "conda-forge"},
        {"name": "Python_Abi", "version": "3.11", "channel": "conda-forge"},
        {"name": "nbclient", "version": "0.0.1", "channel": "conda-forge"},
        {"name": "some-wheel", "version": "1.0", "channel": "pypi"},
    ]
    conda.write_text(f"#!/bin/sh\ncat <<'JSON'\n{json.dumps(listing)}\nJSON\n")
    conda.chmod(0o755)
    monkeypatch.setenv("PATH", f"{conda.parent}{os.pathsep}{os.environ['PATH']}")

    packages = collect_packages()

    assert {"name": "openssl", "version": "3.0.13", "source": "conda"} in packages
    assert {"name": "python-abi", "version": "3.11", "source": "conda"} in packages
    nbclient = [p for p in packages if p["name"] == "nbclient"]
    assert nbclient == [{"name": "nbclient", "version": importlib.metadata.version("nbclient")}]
    assert not [p for p in packages if p["name"] == "some-wheel"], "pip packages come from pip"


# --------------------------------------------------------------------------------------
# Tracebacks of IPython versions other than the one installed here: the image under
# test may ship any of them, and the reported line must still be right.

IPYTHON_7 = """\
---------------------------------------------------------------------------
KeyError                                  Traceback (most recent call last)
<ipython-input-5-8f3a2b1c9d0e> in <module>
      1 x = 1
----> 2 f(x)

<ipython-input-4-77aa00bb11cc> in f(x)
      1 def f(x):
----> 2     return {}['k']

KeyError: 'k'"""

IPYTHON_8_0 = """\
---------------------------------------------------------------------------
KeyError                                  Traceback (most recent call last)
Input In [5], in <cell line: 3>()
      1 x = 1
      2 # comment
----> 3 f(x)

Input In [4], in f(x)
      1 def f(x):
----> 2     return {}['k']

KeyError: 'k'"""

IPYTHON_8_COLOURED = (
    "\x1b[0;31m---------------------------------------------------------------------------\x1b[0m\n"
    "\x1b[0;31mKeyError\x1b[0m          Traceback (most recent call last)\n"
    "Cell \x1b[0;32mIn[5], line 4\x1b[0m\n"
    "\x1b[1;32m      1\x1b[0m x \x1b[38;5;241m=\x1b[39m \x1b[38;5;241m1\x1b[39m\n"
    "\x1b[0;32m----> 4\x1b[0m f(x)\n"
    "\n"
    "File \x1b[0;32m/usr/lib/python3/lib.py:10\x1b[0m, in \x1b[0;36mf\x1b[0;34m(x)\x1b[0m\n"
    "\x1b[0;32m---> 10\x1b[0m \x1b[38;5;28;01mreturn\x1b[39;00m {}[\x1b[38;5;124m'k'\x1b[39m]\n"
    "\n"
    "\x1b[0;31mKeyError\x1b[0m: 'k'"
)


@pytest.mark.parametrize(
    ("traceback", "line"),
    [(IPYTHON_7, 2), (IPYTHON_8_0, 3), (IPYTHON_8_COLOURED, 4)],
    ids=["ipython-7", "ipython-8.0", "ipython-8.6+-ansi"],
)
def test_error_line_reads_every_ipython_traceback_format(traceback: str, line: int) -> None:
    # Given as the kernel sends it: a list of lines; In[5] is the cell that was run.
    assert error_line(traceback.split("\n"), execution_count=5) == line


@given(
    ename=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30),
    evalue=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=500),
)
def test_a_failure_is_always_printed_on_one_line(ename: str, evalue: str) -> None:
    entry = {
        "path": "tests/2.ipynb",
        "status": "failed",
        "duration_s": 1.0,
        "failure": {
            "cell": 3,
            "execution_count": 2,
            "line": 2,
            "ename": ename,
            "evalue": evalue,
            "traceback": "",
        },
    }
    printed = format_failure(entry)
    assert printed is not None
    assert len(printed.splitlines()) == 1
    assert printed.startswith("tests/2.ipynb cell 3 (In [2]), line 2: ")


def test_a_notebook_that_prints_and_raises_megabytes_still_gives_a_small_report(
    tmp_path: Path, notebook: NotebookFactory
) -> None:
    """The report goes through Pub/Sub (10 MB) into Slack: megabytes printed, raised
    and quoted in the traceback are cut, visibly, and the failure is still located."""
    tests = tmp_path / "tests"
    notebook(
        tests / "loud.ipynb",
        [
            "print('x' * 6_000_000)",
            "message = 'y' * 4_000_000\nraise ValueError(message)",
        ],
    )
    report_file = tmp_path / "out" / "report.json"

    assert main([str(tests), "--report", str(report_file), "--jobs", "1"]) == 1

    written = report_file.read_bytes()
    assert len(written) < 100_000
    (entry,) = json.loads(written)["notebooks"]
    failure = entry["failure"]
    assert (entry["status"], failure["cell"], failure["line"]) == ("failed", 2, 2)
    assert failure["ename"] == "ValueError"
    assert failure["evalue"].startswith("y" * 100)
    assert failure["evalue"].endswith("… [3998000 characters cut]")
    assert "characters cut]" in failure["traceback"]
    assert "ValueError" in failure["traceback"]
    # The executed notebook keeps what was printed: only the report is cut.
    executed = nbformat.read(report_file.parent / "executed" / "loud.ipynb", as_version=4)
    assert len(executed.cells[0].outputs[0]["text"]) > 6_000_000


def test_the_whole_report_is_capped_and_says_so() -> None:
    from bot.runner.notebook_tests import bound_report

    def failing(number: int) -> dict[str, Any]:
        failure = {"cell": 1, "line": 1, "ename": "E", "evalue": "v" * 5000}
        return {
            "path": f"tests/{number}.ipynb",
            "status": "failed",
            "duration_s": 1.0,
            "failure": {**failure, "traceback": "t" * 20_000},
        }

    big = {
        "python": "3.11.9",
        "packages": [{"name": f"p{n}", "version": "1.0"} for n in range(20_000)],
        "notebooks": [failing(n) for n in range(100)]
        + [{"path": "tests/ok.ipynb", "status": "passed", "duration_s": 1.0, "failure": None}],
    }

    for limit, kept in ((1_000_000, 101), (200_000, 101), (5_000, None)):
        bounded = bound_report(big, limit)
        assert len(json.dumps(bounded).encode()) <= limit
        assert bounded["truncated"].startswith(f"the report was {len(json.dumps(big))} bytes")
        if kept is not None:
            assert len(bounded["notebooks"]) == kept
        else:  # only so many verdicts fit: the failures come first, the count is said
            assert bounded["truncated"].endswith("notebook(s) left out")
            assert all(n["status"] == "failed" for n in bounded["notebooks"])
    assert bound_report({"notebooks": []}) == {"notebooks": []}  # small: untouched
    assert len(big["notebooks"][0]["failure"]["traceback"]) == 20_000  # not modified
