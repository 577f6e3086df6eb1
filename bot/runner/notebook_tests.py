"""Run every test notebook of a folder, each in its own kernel, and write a test report.

Usage::

    python notebook_tests.py DIR [--report FILE] [--jobs N] [--timeout S]

This file is deliberately self-contained: the staging pipeline copies it alone into the
image under test, which has Jupyter's packages (nbformat, nbclient, jupyter_client,
ipykernel) and nothing of ours. So it imports only the standard library and those
packages, never ``bot`` or papermill, and it must keep running on the oldest Python a
Deep Learning Containers image ships (3.10): hence ``from __future__ import annotations``
and no 3.11-only stdlib API.

Report (``--report FILE``, see DESIGN.md §5)::

    {"python": "3.10.13",
     "packages": [{"name": "numpy", "version": "1.26.4"}, ...],
     "notebooks": [{"path": "tests/2.ipynb", "status": "failed", "duration_s": 1.92,
                    "failure": {"cell": 3, "execution_count": 2, "line": 2,
                                "ename": "KeyError", "evalue": "'x'",
                                "traceback": "..."}}]}

Conventions:

* ``path`` is relative to the current working directory when DIR lies inside it (so it
  is the path a person typed, e.g. ``notebooks/nlp.keras-batch/tests/2.ipynb``);
  otherwise (or when the working directory is ``/``) it is relative to DIR's parent,
  e.g. ``tests/2.ipynb``. Always with ``/`` separators.
* ``status``: ``passed``; ``failed`` (a cell raised, or the kernel died); ``timeout`` (a
  cell ran longer than ``--timeout`` seconds; the limit is per cell, as in papermill);
  ``error`` (the notebook could not be read, or its kernel could not be started).
* ``failure.cell`` is the 1-based position of the failing cell among all cells of the
  notebook, markdown included; ``failure.line`` the 1-based line within that cell, taken
  from IPython's traceback. Either is ``null`` when it does not exist (an unreadable
  notebook has no cell; a dead kernel leaves no traceback). ``failure.execution_count``
  is the ``In [N]`` Jupyter shows beside that cell once the notebook is run from the top
  (code cells in order, empty ones skipped), ``null`` when no cell ran. A failure reads
  ``cell 3 (In [2]), line 2``: the position to count to, and the label to look for.
* Executed notebooks, with their outputs up to the failing cell, are written to
  ``REPORT_DIR/executed/NAME.ipynb``; their metadata ``nbenv_runner`` holds the status
  and the seconds spent starting the kernel, executing and shutting down. Without
  ``--report`` nothing is written (the report is also returned by ``run_notebooks``).
* Sizes are bounded, so the report fits one Pub/Sub message and a Slack thread: ``ename``,
  ``evalue`` and each traceback line are cut (``… [N characters cut]``), the traceback
  keeps its last 15 lines, and a report over 1 MB is cut further (long tracebacks, then
  all tracebacks, then the package manifest, then passing verdicts) with a top-level
  ``truncated`` saying what went. Executed notebooks keep their outputs whole.
* ``packages``: installed Python distributions (names normalised as in PEP 503), plus,
  when ``conda`` is on PATH and this interpreter lives in a conda environment, that
  environment's non-Python conda packages marked ``"source": "conda"``.

Exit status: 0 all passed, 1 any notebook failed/timed out/errored, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import inspect
import json
import multiprocessing
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbformat import NotebookNode

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "collect_packages",
    "main",
    "run_notebook",
    "run_notebooks",
    "sandbox_environment",
]

DEFAULT_TIMEOUT_S = 600.0
# After a cell overruns we interrupt the kernel and give it this long to unwind, so that
# the KeyboardInterrupt traceback tells on which line the cell was stuck.
INTERRUPT_GRACE_S = 5.0
KERNEL_START_TIMEOUT_S = 60.0
TRACEBACK_LINES = 15
STATUSES = ("passed", "failed", "timeout", "error")

# The report travels through Pub/Sub (10 MB per message, which base64 grows by a third)
# into the version record and a Slack thread. A notebook that raises with megabytes of
# message, or whose traceback quotes a huge line, must not make it undeliverable: each
# field is cut (visibly: CUT_MARK says how much went), and the whole report is capped.
ENAME_CHARS = 200
EVALUE_CHARS = 2000
TRACEBACK_LINE_CHARS = 1000
TRACEBACK_CHARS = 8000
MAX_REPORT_BYTES = 1_000_000
CUT_MARK = "… [{} characters cut]"


class UsageError(ValueError):
    """DIR is missing, is not a folder, or holds no notebooks."""


# ---------------------------------------------------------------------------
# What a notebook's process inherits


# Test notebooks come from a branch anyone with push access writes, and instances run
# whatever their user types: their processes get these variables and nothing else, so the
# tokens, signing secrets, database URLs and cloud credentials of whoever started them
# stay out of reach of `os.environ`. Kept here, in the self-contained runner, so that the
# bot (instances, the local pipeline) and the runner's kernels use one and the same list.
SANDBOX_ENV_NAMES = frozenset(
    {
        # the shell basics
        *("PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ"),
        *("TMPDIR", "TEMP", "TMP"),
        # where the interpreter finds its libraries: a venv, conda, the CUDA of GPU images
        *("VIRTUAL_ENV", "PYTHONPATH", "LD_LIBRARY_PATH", "JAVA_HOME"),
        # certificate stores (paths, not secrets)
        *("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
    }
)
SANDBOX_ENV_PREFIXES = ("LC_", "CONDA_", "CUDA_", "NVIDIA_")


def sandbox_environment(
    source: Mapping[str, str] | None = None, home: str | os.PathLike[str] | None = None
) -> dict[str, str]:
    """The environment for a process that runs user or repository code: the allowed
    variables of SOURCE (default: ours), with HOME set to HOME when given (a scratch
    folder, so that libraries do not pick up the credentials kept in the real one)."""
    source = os.environ if source is None else source
    env = {
        name: value
        for name, value in source.items()
        if name in SANDBOX_ENV_NAMES or name.startswith(SANDBOX_ENV_PREFIXES)
    }
    if home is not None:
        env["HOME"] = os.fspath(home)
    return env


# ---------------------------------------------------------------------------
# Tracebacks: where did the error happen?

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)")
# The frame header of code typed in a cell, across IPython versions:
#   8.6+:     "Cell In[3], line 2"  (also "Cell In[3], line 2, in f()")
#   8.0-8.5:  "Input In [3], in <cell line: 2>()"  or  "Input In [3], in f()"
#   <= 7:     "<ipython-input-3-5f1e...> in <module>"
_CELL_FRAME = re.compile(
    r"^\s*(?:Cell In\s*\[(?P<n1>\d+)\],\s*line (?P<l1>\d+)"
    r"|Input In\s*\[(?P<n2>\d+)\](?:,\s*in <cell line: (?P<l2>\d+)>)?"
    r"|<ipython-input-(?P<n3>\d+)-[0-9a-f]+>)"
)
# The "---->  2 d['x']" marker IPython puts on the current line of a frame.
_ARROW = re.compile(r"^-*>\s*(\d+)")


def strip_ansi(text: str) -> str:
    return _ANSI.sub("", text)


def _traceback_text(traceback: list[str] | str) -> str:
    if isinstance(traceback, str):
        return strip_ansi(traceback)
    return "\n".join(strip_ansi(part) for part in traceback)


def error_line(traceback: list[str] | str, execution_count: int | None = None) -> int | None:
    """The 1-based line of the failing cell on which the error was raised.

    The cell that was run is the outermost cell frame (``In[execution_count]``); when it
    appears several times (a function defined and called in the same cell) the innermost
    frame is the line that actually raised.
    """
    frames: list[list[int | None]] = []  # [execution count, line]
    current: list[int | None] | None = None
    for line in _traceback_text(traceback).splitlines():
        match = _CELL_FRAME.match(line)
        if match:
            count = match.group("n1") or match.group("n2") or match.group("n3")
            lineno = match.group("l1") or match.group("l2")
            current = [int(count), int(lineno) if lineno else None]
            frames.append(current)
            continue
        arrow = _ARROW.match(line)
        if arrow:
            if current is not None:
                current[1] = int(arrow.group(1))
            continue
        if line[:1] not in ("", " ", "\t"):
            current = None  # another frame (library code), the separator, or the error
    if not frames:
        return None
    counts = {frame[0] for frame in frames}
    wanted = execution_count if execution_count in counts else frames[0][0]
    lines = [frame[1] for frame in frames if frame[0] == wanted and frame[1] is not None]
    return lines[-1] if lines else None


def cut_text(text: str, limit: int) -> str:
    """TEXT with at most LIMIT characters of it kept, and a mark saying what was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + CUT_MARK.format(len(text) - limit)


def _short_traceback(traceback: list[str] | str, limit: int = TRACEBACK_CHARS) -> str:
    """The last TRACEBACK_LINES lines, each cut to TRACEBACK_LINE_CHARS, LIMIT in all
    (the end is kept: it names the error)."""
    lines = _traceback_text(traceback).rstrip("\n").splitlines()
    text = "\n".join(cut_text(line, TRACEBACK_LINE_CHARS) for line in lines[-TRACEBACK_LINES:])
    if len(text) <= limit:
        return text
    return CUT_MARK.format(len(text) - limit) + " …" + text[len(text) - limit :]


def _failure(
    cell: int | None,
    line: int | None,
    ename: str,
    evalue: str,
    traceback: list[str] | str = "",
    execution_count: int | None = None,
) -> dict[str, Any]:
    return {
        "cell": cell,
        "execution_count": execution_count,
        "line": line,
        "ename": cut_text(str(ename), ENAME_CHARS),
        "evalue": cut_text(str(evalue), EVALUE_CHARS),
        "traceback": _short_traceback(traceback),
    }


def _error_output(cell: NotebookNode) -> dict[str, Any] | None:
    for output in reversed(cell.get("outputs", [])):
        if output.get("output_type") == "error":
            return output
    return None


def _cell_failure(
    cell: NotebookNode, index: int, exc: BaseException | None, count: int
) -> dict[str, Any]:
    """Failure of the cell at 0-based ``index``, run as ``In [count]``, from its error
    output (or the exception)."""
    output = _error_output(cell)
    if output is not None:
        ename = output.get("ename", "")
        evalue = output.get("evalue", "")
        traceback: list[str] | str = output.get("traceback", [])
    else:
        # The error reply came without an error message on IOPub; nbclient's exception
        # still carries the essentials.
        ename = getattr(exc, "ename", type(exc).__name__)
        evalue = getattr(exc, "evalue", str(exc))
        traceback = getattr(exc, "traceback", "") or ""
    line = error_line(traceback, cell.get("execution_count"))
    if line is None and len(cell.source.splitlines()) == 1:
        line = 1
    return _failure(index + 1, line, ename, evalue, traceback, count)


# ---------------------------------------------------------------------------
# Running one notebook (in a worker process)


def _kernel_manager_class(runtime_dir: str) -> type:
    """An AsyncKernelManager whose "python3" kernel is always this interpreter's ipykernel.

    A ``python3`` kernelspec found in a Jupyter data dir could point at another Python
    (e.g. the user's), and then the tests would check a different environment from the
    one the manifest describes. This is the spec ipykernel installs for itself.

    On POSIX the kernel talks over Unix sockets in ``runtime_dir``: kernels started in
    parallel cannot race for the same TCP port, and ipykernel has no reason to warn
    about unencrypted TCP on every start.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class CurrentPythonSpecs(KernelSpecManager):
        def get_kernel_spec(self, kernel_name: str, *args: Any, **kwargs: Any) -> KernelSpec:
            if kernel_name != "python3":
                return super().get_kernel_spec(kernel_name, *args, **kwargs)
            return KernelSpec(
                argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                display_name="Python 3 (ipykernel)",
                language="python",
                resource_dir="",
            )

    class CurrentPythonKernelManager(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self) -> KernelSpecManager:
            return CurrentPythonSpecs()

        @default("transport")
        def _transport_default(self) -> str:
            return "ipc" if os.name == "posix" else "tcp"

        @default("connection_file")
        def _connection_file_default(self) -> str:
            # Absolute, so that the IPC socket paths derived from it are the same for the
            # kernel (whose cwd is the notebook's folder) and for us.
            return os.path.join(runtime_dir, f"kernel-{uuid.uuid4().hex[:12]}.json")

    return CurrentPythonKernelManager


async def _maybe_await(value: Any) -> Any:
    if inspect.isawaitable(value):
        return await value
    return value


async def _run_cell(
    client: Any, cell: NotebookNode, index: int, timeout: float | None
) -> dict[str, Any] | None:
    """Run one cell; return None if it passed, else ``{"status", "failure"}``."""
    from nbclient.exceptions import CellExecutionError, DeadKernelError

    count = client.code_cells_executed + 1  # the In [N] this cell runs as
    task = asyncio.ensure_future(client.async_execute_cell(cell, index, execution_count=count))
    done, _ = await asyncio.wait({task}, timeout=timeout)
    if not done:
        # nbclient's own timeout would re-interrupt forever a kernel that ignores SIGINT,
        # so the deadline is ours: interrupt once, then give up on the cell.
        # A kernel we cannot interrupt is still a timeout.
        with contextlib.suppress(Exception):
            await _maybe_await(client.km.interrupt_kernel())
        done, _ = await asyncio.wait({task}, timeout=INTERRUPT_GRACE_S)
        if not done:
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it
        stuck = _error_output(cell)
        traceback = stuck.get("traceback", []) if stuck else ""
        return {
            "status": "timeout",
            "failure": _failure(
                index + 1,
                error_line(traceback, cell.get("execution_count")),
                "TimeoutError",
                f"Cell execution timed out after {timeout:g} s",
                traceback,
                count,
            ),
        }
    exc = task.exception()
    if exc is None:
        return None
    if isinstance(exc, CellExecutionError):
        return {"status": "failed", "failure": _cell_failure(cell, index, exc, count)}
    if isinstance(exc, DeadKernelError):
        return {
            "status": "failed",
            "failure": _failure(
                index + 1,
                None,
                "DeadKernelError",
                "The kernel died while running this cell (crash, os._exit or out of memory)",
                execution_count=count,
            ),
        }
    return {
        "status": "error",
        "failure": _failure(index + 1, None, type(exc).__name__, str(exc), _format_exc(exc), count),
    }


def _format_exc(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


async def _execute(
    nb: NotebookNode, cwd: Path, timeout: float | None, runtime_dir: str
) -> dict[str, Any]:
    """Execute ``nb`` in place; return ``{"status", "failure", "timing"}``."""
    from nbclient import NotebookClient

    client = NotebookClient(
        nb,
        kernel_name="python3",
        kernel_manager_class=_kernel_manager_class(runtime_dir),
        # Graceful shutdown stalled ~3 s in 4 of 45 measured runs; the notebook is done
        # with its kernel, so nothing is lost by killing it.
        shutdown_kernel="immediate",
        startup_timeout=int(KERNEL_START_TIMEOUT_S),
        # The kernel's working directory is the notebook's folder, as in Jupyter.
        resources={"metadata": {"path": str(cwd)}},
    )
    client.reset_execution_trackers()
    outcome: dict[str, Any] = {"status": "passed", "failure": None}
    timing: dict[str, float] = {}
    started = time.monotonic()
    ready = finished = started
    in_kernel = False
    try:
        # The kernel runs the notebook's code: it gets the allowed variables only.
        async with client.async_setup_kernel(env=sandbox_environment()):
            in_kernel = True
            ready = time.monotonic()
            await _record_language_info(client)
            for index, cell in enumerate(nb.cells):
                result = await _run_cell(client, cell, index, timeout)
                if result is not None:
                    outcome = result
                    break
            client.set_widgets_metadata()
            finished = time.monotonic()
            # Pollers nbclient leaves behind after a cancelled cell would otherwise
            # outlive the kernel and complain about it.
            await _cancel_other_tasks()
    except Exception as exc:  # every notebook gets an entry in the report, whatever broke
        if not in_kernel:
            outcome = {
                "status": "error",
                "failure": _failure(
                    None,
                    None,
                    "KernelStartError",
                    f"{type(exc).__name__}: {exc}",
                    _format_exc(exc),
                ),
            }
        elif outcome["status"] == "passed":
            outcome = {
                "status": "error",
                "failure": _failure(None, None, type(exc).__name__, str(exc), _format_exc(exc)),
            }
        # else: shutting the kernel down failed after the notebook had already failed;
        # the notebook's own failure is the useful news.
    stopped = time.monotonic()
    if in_kernel:
        finished = finished if finished > ready else stopped
        timing = {
            "kernel_start_s": round(ready - started, 3),
            "execute_s": round(finished - ready, 3),
            "shutdown_s": round(stopped - finished, 3),
        }
    outcome["timing"] = timing
    return outcome


async def _record_language_info(client: Any) -> None:
    # What NotebookClient.execute() records, so executed notebooks look like Jupyter's.
    msg_id = await _maybe_await(client.kc.kernel_info())
    task = asyncio.ensure_future(client.async_wait_for_reply(msg_id))
    done, _ = await asyncio.wait({task}, timeout=KERNEL_START_TIMEOUT_S)
    if not done:
        task.cancel()
        raise TimeoutError("the kernel did not answer kernel_info")
    reply = task.result()
    if reply and "language_info" in reply.get("content", {}):
        client.nb.metadata["language_info"] = reply["content"]["language_info"]


async def _cancel_other_tasks() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others)


def run_notebook(
    path: str | os.PathLike[str],
    display_path: str | None = None,
    executed_path: str | os.PathLike[str] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Run one notebook in a fresh kernel; return its report entry.

    The entry has the report's keys plus ``timing`` (kernel start, execution and
    shutdown seconds), which the report leaves out; with ``executed_path`` the executed
    notebook is written there with that timing in its metadata.
    """
    started = time.monotonic()
    nb_path = Path(path)
    entry: dict[str, Any] = {"path": display_path or nb_path.name}
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
        nbformat.validate(nb)
    except Exception as exc:  # nbformat raises several types for a broken file
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        entry.update(
            status="error",
            duration_s=round(time.monotonic() - started, 3),
            failure=_failure(None, None, "NotebookReadError", f"{type(exc).__name__}: {message}"),
            timing={},
        )
        return entry

    # Short, private and ours alone: Unix socket paths are limited to ~100 bytes.
    runtime_dir = tempfile.mkdtemp(prefix="nbk-")
    try:
        outcome = asyncio.run(_execute(nb, nb_path.parent.resolve(), timeout, runtime_dir))
    finally:
        shutil.rmtree(runtime_dir, ignore_errors=True)
    entry.update(
        status=outcome["status"],
        duration_s=round(time.monotonic() - started, 3),
        failure=outcome["failure"],
        timing=outcome["timing"],
    )
    if executed_path is not None:
        nb.metadata["nbenv_runner"] = {
            "status": entry["status"],
            "duration_s": entry["duration_s"],
            **outcome["timing"],
        }
        executed = Path(executed_path)
        executed.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, str(executed))
    return entry


# ---------------------------------------------------------------------------
# Manifest


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def collect_packages() -> list[dict[str, str]]:
    """The installed Python distributions, plus conda's own packages when in a conda env."""
    packages: dict[str, dict[str, str]] = {}
    # distributions() follows sys.path, so the first of duplicates is the importable one.
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"] if dist.metadata else None
        if name:
            key = _normalise(name)
            packages.setdefault(key, {"name": key, "version": dist.version})
    for pkg in _conda_packages():
        packages.setdefault(pkg["name"], pkg)
    return [packages[key] for key in sorted(packages)]


def _conda_packages() -> list[dict[str, str]]:
    conda = shutil.which("conda")
    if conda is None:
        return []
    try:
        # --prefix: the environment of this interpreter, not whichever one is active.
        proc = subprocess.run(
            [conda, "list", "--json", "--prefix", sys.prefix],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        listed = json.loads(proc.stdout)
        found = []
        for item in listed:
            # pip-installed packages are listed by conda too; importlib has them already.
            if item.get("channel") == "pypi":
                continue
            found.append(
                {
                    "name": _normalise(item["name"]),
                    "version": str(item["version"]),
                    "source": "conda",
                }
            )
        return found
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError, AttributeError):
        # Not a conda environment, or a conda we cannot read: the pip manifest still stands.
        return []


# ---------------------------------------------------------------------------
# Running a folder


def find_notebooks(directory: Path) -> list[Path]:
    # Top level only, as the image folder convention is tests/*.ipynb; dotfiles are
    # editor and checkpoint leftovers.
    return sorted(
        p for p in directory.glob("*.ipynb") if p.is_file() and not p.name.startswith(".")
    )


def _report_root(directory: Path, cwd: Path) -> Path:
    if cwd != Path(cwd.anchor):
        try:
            directory.relative_to(cwd)
            return cwd
        except ValueError:
            pass
    return directory.parent


def default_jobs() -> int:
    # The CPUs this process may use (a container's cpuset), which os.cpu_count() ignores.
    counter = getattr(os, "process_cpu_count", None)
    if counter is not None:
        return counter() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _pool_context() -> multiprocessing.context.BaseContext:
    # Not "fork": the caller may be a multi-threaded service. The fork server starts
    # once, imports Jupyter's packages once, then forks cheap workers.
    if "forkserver" in multiprocessing.get_all_start_methods():
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["nbformat", "nbclient", "jupyter_client"])
        return ctx
    return multiprocessing.get_context("spawn")


def _progress(done: int, total: int, entry: dict[str, Any]) -> None:
    print(
        f"[{done}/{total}] {entry['status']:<7} {entry['path']} ({entry['duration_s']:.1f} s)",
        file=sys.stderr,
        flush=True,
    )


def run_notebooks(
    directory: str | os.PathLike[str],
    report_path: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    timeout: float | None = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Run every ``*.ipynb`` of ``directory``, in parallel, and return the report.

    ``jobs`` notebooks run at once (default: the usable CPUs), each in its own kernel;
    ``timeout`` is per cell, in seconds (None or <= 0: no limit). With ``report_path``
    the report is written there (atomically) and executed notebooks go to
    ``REPORT_DIR/executed/``. Raises UsageError for a missing folder or no notebooks.
    """
    folder = Path(os.path.abspath(directory))
    if not folder.is_dir():
        raise UsageError(f"not a folder: {directory}")
    notebooks = find_notebooks(folder)
    if not notebooks:
        raise UsageError(f"no notebooks (*.ipynb) in {directory}")
    if jobs is not None and jobs < 1:
        raise UsageError(f"--jobs must be at least 1, not {jobs}")
    if timeout is not None and timeout <= 0:
        timeout = None

    root = _report_root(folder, Path(os.path.abspath(os.getcwd())))
    report_file = Path(os.path.abspath(report_path)) if report_path is not None else None
    executed_dir = report_file.parent / "executed" if report_file is not None else None
    names = [nb.relative_to(root).as_posix() for nb in notebooks]

    workers = min(jobs or default_jobs(), len(notebooks))
    entries: dict[int, dict[str, Any]] = {}
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=_pool_context()) as pool:
        futures = {
            pool.submit(
                run_notebook,
                str(nb),
                names[i],
                str(executed_dir / nb.name) if executed_dir is not None else None,
                timeout,
            ): i
            for i, nb in enumerate(notebooks)
        }
        for future in concurrent.futures.as_completed(futures):
            i = futures[future]
            try:
                entry = future.result()
            except Exception as exc:  # a dead worker fails its notebook, not the run
                entry = {
                    "path": names[i],
                    "status": "error",
                    "duration_s": 0.0,
                    "failure": _failure(None, None, type(exc).__name__, str(exc)),
                }
            entry.pop("timing", None)
            entries[i] = entry
            _progress(len(entries), len(notebooks), entry)

    report = {
        "python": platform.python_version(),
        "packages": collect_packages(),
        "notebooks": [
            {key: entries[i][key] for key in ("path", "status", "duration_s", "failure")}
            for i in range(len(notebooks))
        ],
    }
    report = bound_report(report)
    if report_file is not None:
        _write_json(report_file, report)
    return report


def _json_size(value: Any) -> int:
    return len(json.dumps(value).encode())


def bound_report(report: dict[str, Any], limit: int = MAX_REPORT_BYTES) -> dict[str, Any]:
    """REPORT cut to at most LIMIT bytes of JSON, marked with `truncated` when cut.

    What goes first is what a person needs least: long tracebacks, then tracebacks and
    long messages altogether, then the package manifest; the verdict of every notebook
    (path and status) stays as long as it fits at all. Works on any report shape
    (`config/cloudbuild/publish_report.py` applies it to what it is given)."""
    size = _json_size(report)
    if size <= limit:
        return report
    bounded = dict(report)
    notebooks = [dict(n) for n in report.get("notebooks") or [] if isinstance(n, dict)]
    bounded["notebooks"] = notebooks
    marker = f"the report was {size} bytes: cut to fit {limit}"
    bounded["truncated"] = marker

    def shorten(traceback_chars: int | None, evalue_chars: int) -> None:
        for entry in notebooks:
            failure = entry.get("failure")
            if not isinstance(failure, dict):
                continue
            failure = entry["failure"] = dict(failure)
            for key, chars in (("traceback", traceback_chars), ("evalue", evalue_chars)):
                value = failure.get(key)
                if not isinstance(value, str):
                    continue
                if chars is None:
                    failure[key] = CUT_MARK.format(len(value)) if value else ""
                elif key == "traceback":
                    failure[key] = _short_traceback(value, chars)
                else:
                    failure[key] = cut_text(value, chars)
            if isinstance(failure.get("ename"), str):
                failure["ename"] = cut_text(failure["ename"], ENAME_CHARS)
        for entry in notebooks:
            if isinstance(entry.get("path"), str):
                entry["path"] = cut_text(entry["path"], 1000)

    steps = (
        ("long tracebacks shortened", lambda: shorten(1000, 500)),
        ("tracebacks left out", lambda: shorten(None, 200)),
        ("package manifest left out", lambda: bounded.pop("packages", None)),
    )
    for what, step in steps:
        step()
        bounded["truncated"] = marker = f"{marker}; {what}"
        if _json_size(bounded) <= limit:
            return bounded
    # Still too big: only so many verdicts fit. Keep the failures first, then the rest.
    order = sorted(range(len(notebooks)), key=lambda i: notebooks[i].get("status") == "passed")
    kept: list[int] = []
    budget = limit - _json_size({**bounded, "notebooks": []}) - 200
    for index in order:
        cost = _json_size(notebooks[index]) + 2
        if cost > budget:
            break
        budget -= cost
        kept.append(index)
    left_out = len(notebooks) - len(kept)
    bounded["notebooks"] = [notebooks[i] for i in sorted(kept)]
    bounded["truncated"] = f"{marker}; {left_out} notebook(s) left out"
    return bounded


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Readers (the pipeline, `nbenv publish`) must never see half a report.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# ---------------------------------------------------------------------------
# Command line


def cell_position(failure: dict[str, Any]) -> str:
    """``cell 3 (In [2]), line 2`` as far as FAILURE knows it; "" when it names no cell.

    Both numbers, because a person finds a cell either way: counting cells (markdown
    included), or by the ``In [N]`` label Jupyter shows once the notebook has run. The
    build thread, the CLI and the demo all say it this way (bot.builds.report too).
    """
    cell, count, line = (failure.get(key) for key in ("cell", "execution_count", "line"))
    if not _is_count(cell):
        return ""
    where = f"cell {cell}" + (f" (In [{count}])" if _is_count(count) else "")
    return where + (f", line {line}" if _is_count(line) else "")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def format_failure(entry: dict[str, Any]) -> str | None:
    """``tests/2.ipynb cell 3 (In [2]), line 2: KeyError: 'x'``, or None for a passed
    notebook."""
    failure = entry.get("failure")
    if entry.get("status") == "passed" or not failure:
        return None
    where = entry["path"]
    position = cell_position(failure)
    if position:
        where += f" {position}"
    evalue = str(failure.get("evalue") or "").strip()
    evalue = evalue.splitlines()[0] if evalue else ""
    if len(evalue) > 200:
        evalue = evalue[:197] + "..."
    message = f"{failure.get('ename')}: {evalue}" if evalue else str(failure.get("ename"))
    # One line, whatever the names contain: CI logs and Slack quote it as such.
    return " ".join(f"{where}: {message}".splitlines())


def summary_line(report: dict[str, Any], elapsed_s: float) -> str:
    counts = dict.fromkeys(STATUSES, 0)
    for entry in report["notebooks"]:
        counts[entry["status"]] += 1
    total = len(report["notebooks"])
    verdict = "PASSED" if counts["passed"] == total else "FAILED"
    return (
        f"{verdict}: {total} notebook{'s' if total != 1 else ''}: {counts['passed']} passed, "
        f"{counts['failed']} failed, {counts['timeout']} timed out, {counts['error']} errors "
        f"in {elapsed_s:.1f} s"
    )


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, not {text}")
    return value


def _parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run every test notebook in DIR, each in its own kernel, in parallel.",
    )
    parser.add_argument("directory", metavar="DIR", help="folder of *.ipynb test notebooks")
    parser.add_argument(
        "--report",
        metavar="FILE",
        help="write the JSON test report here, executed notebooks to FILE's folder/executed/",
    )
    parser.add_argument(
        "--jobs",
        metavar="N",
        type=_positive_int,
        help=f"notebooks run at once (default: usable CPUs, here {default_jobs()})",
    )
    parser.add_argument(
        "--timeout",
        metavar="S",
        type=_positive_float,
        default=DEFAULT_TIMEOUT_S,
        help=f"seconds a cell may run (default {DEFAULT_TIMEOUT_S:g}; 0 = no limit)",
    )
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Command line entry; returns the exit status instead of exiting.

    ``prog`` names the command in usage messages (e.g. ``"nbenv test-notebooks"``).
    """
    try:
        args = _parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse exits; callers such as `nbenv` want a status
        return exc.code if isinstance(exc.code, int) else 2
    started = time.monotonic()
    try:
        report = run_notebooks(args.directory, args.report, args.jobs, args.timeout)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for entry in report["notebooks"]:
        line = format_failure(entry)
        if line is not None:
            print(line)
    summary = summary_line(report, time.monotonic() - started)
    if args.report:
        summary += f"; report: {args.report}"
    print(summary, flush=True)
    return 0 if all(e["status"] == "passed" for e in report["notebooks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
