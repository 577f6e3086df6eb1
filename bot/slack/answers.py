"""The answers given right after an ack, computed in a process of their own.

An answer (a status, a plan to confirm) takes a few milliseconds of Python; in the
process that acks, it would hold the interpreter lock that the next ack is waiting for.
Each `nbenv serve` worker has this helper: it hands it plain `Later` records through a
multiprocessing queue (a feeder thread writes the pipe, so handing over never blocks the
ack), and the helper, with its own runtime, computes each answer and posts it to the
response_url. Nothing on this route changes state: if the helper dies, an answer is lost
and the person asks again; it is started anew.

The first worker's helper is started by the gunicorn master before anything else, so that
it loads the service and the store on the other core while the master loads Flask and Bolt;
the worker takes it over (`adopt`). Other workers fork their own before they start a thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bot import processes
from bot.slack.response_url import post_answer

if TYPE_CHECKING:  # this process is forked before the service is imported
    from bot.config import Config
    from bot.slack.interactions import Later

log = logging.getLogger(__name__)

POSTING_THREADS = 4  # posting waits on Slack; computing is quick


@dataclass(frozen=True)
class _Owner:
    """Queued by the process that takes the helper over: answer for it, end with it."""

    pid: int


class AnswerProcess:
    def __init__(
        self,
        config_path: str | None,
        *,
        first: Callable[[], Config] | None = None,
    ) -> None:
        """Fork the helper now. FIRST runs in it before anything else (`nbenv serve`: check
        the config and migrate, reporting to the master) and gives it its config."""
        self.config_path = config_path
        self._context = multiprocessing.get_context("fork")
        self._queue: Any = None
        self._ready: Any = None
        self._pid = 0
        self._parent = 0  # the process that forked the helper: only it can reap it
        self._start(first)

    def _start(self, first: Callable[[], Config] | None = None) -> None:
        self._queue = self._context.Queue()
        self._ready = self._context.Event()
        self._parent = os.getpid()
        # A plain fork, not multiprocessing.Process: the helper may be handed to a process
        # forked later (a gunicorn worker), which multiprocessing would try to join at exit.
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _serve(self._queue, self._ready, self.config_path, self._parent, first)
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except BaseException:
                log.exception("the answer process failed")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)  # never return into the forking process's code
        self._pid = pid

    @property
    def pid(self) -> int:
        return self._pid

    def ready(self) -> bool:
        """True once the helper has loaded everything and can answer at once."""
        return bool(self._ready.is_set())

    def adopt(self) -> AnswerProcess:
        """Called in a process forked after the helper (the first gunicorn worker): from now
        on the helper answers for this process and ends when it is gone."""
        self._queue.put(_Owner(os.getpid()))
        return self

    def alive(self) -> bool:
        if self._parent == os.getpid():
            try:
                done, _ = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                return False
            return done == 0
        return processes.alive(self._pid)  # the master reaps it: a zombie lives a moment at most

    def __call__(self, response_url: str, later: Later, replace: bool) -> None:
        if not self.alive():
            log.error("the answer process %s died: starting it again", self._pid)
            self._start()
        self._queue.put((response_url, later, replace))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        if not self._wait(timeout_s):
            try:
                os.kill(self._pid, signal.SIGTERM)
            except ProcessLookupError:
                return
            self._wait(timeout_s)

    def _wait(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.alive():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True


def _serve(
    tasks: Any,
    ready: Any,
    config_path: str | None,
    parent: int,
    first: Callable[[], Config] | None,
) -> None:
    # Ctrl-C reaches the whole process group: the owner decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    config = first() if first is not None else None
    # Everything an answer needs, loaded now rather than by the first answer.
    import slack_sdk.webhook  # noqa: F401

    from bot.bootstrap import build_runtime
    from bot.slack.interactions import Interactions

    interactions = Interactions(build_runtime(config_path, migrate=False, config=config).nbenv)
    ready.set()
    owner = parent

    def answer(response_url: str, later: Later, replace: bool) -> None:
        try:
            post_answer(response_url, interactions.compute(later), replace=replace)
        except Exception:
            log.exception("answering %s failed", response_url)

    def owner_gone() -> bool:
        if os.getppid() != parent:  # whoever started this process is gone
            return True
        return owner != parent and not processes.alive(owner)

    with ThreadPoolExecutor(POSTING_THREADS, thread_name_prefix="nbenv-answer") as pool:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if owner_gone():  # and so are its requests
                    return
                continue
            if task is None:
                return
            if isinstance(task, _Owner):
                owner = task.pid
                continue
            pool.submit(answer, *task)
