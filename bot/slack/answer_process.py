"""The answers given right after an ack, computed in a process of the worker's own.

An answer (a status, a plan to confirm) takes one or two milliseconds of Python. In the
process that acks, it would hold the interpreter lock that the next ack waits for:
measured side by side with a bare Bolt app, `/nbenv status` acks went from 2× to 4-6×
its time when the answers were computed beside them (`make bench`). So each `nbenv
serve` worker hands its answers to a helper process, which computes them (on another
core, when there is one; else the kernel shares the core fairly, which the interpreter
lock does not) and posts them to the response_url.

The helper is forked when the worker starts, before the worker has a thread (a fork
copies only the thread that calls it, and a lock another thread held would stay locked
in the copy); it builds its own runtime from the config the worker was given. Nothing on
this route changes state: if the helper dies or falls behind, the answers it held are
lost (the person asks again) and the worker computes the next ones itself. It ends with
its worker.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from bot.slack.response_url import post_answer

if TYPE_CHECKING:
    from bot.config import Config
    from bot.slack.interactions import Interactions, Later

log = logging.getLogger(__name__)

POSTING_THREADS = 4  # posting waits on Slack; computing is quick
WAITING_AT_MOST = 1000  # answers handed over and not yet taken: more means it is stuck


class AnswerProcess:
    """A worker's answer process, forked when this is made; call it with an answer to
    give, `stop` it with the worker."""

    def __init__(self, config: Config) -> None:
        context = multiprocessing.get_context("fork")
        # A feeder thread writes to the pipe: handing an answer over never blocks an ack.
        self._queue: Any = context.Queue(WAITING_AT_MOST)
        # Daemonic: a worker that exits, even one that failed to start, takes it along.
        self._process = context.Process(
            target=_serve,
            args=(self._queue, config, os.getpid()),
            name="nbenv-answers",
            daemon=True,
        )
        self._process.start()
        self._lock = threading.Lock()  # request threads ask at once; one reaps it
        self._gone = False

    def __call__(self, response_url: str, later: Later, replace: bool) -> bool:
        """Hand an answer over; False when the helper is gone or stuck (the caller
        answers it)."""
        with self._lock:
            if not self._gone and not self._process.is_alive():
                self._gone = True
                log.error(
                    "the answer process is gone (exit %s): the worker answers from now on",
                    self._process.exitcode,
                )
            if self._gone:
                return False
        try:
            self._queue.put_nowait((response_url, later, replace))
        except queue.Full:
            log.warning("the answer process is %d answers behind: answering here", WAITING_AT_MOST)
            return False
        return True

    def stop(self, timeout_s: float = 2.0) -> None:
        """Let it finish what it holds, TIMEOUT_S at most (gunicorn's graceful timeout is
        10 s for the whole worker)."""
        if self._process.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(None)
            self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)


def _serve(tasks: Any, config: Config, worker: int) -> None:
    """The helper: its own runtime, then every answer it is handed, until told to stop."""
    # Ctrl-C and gunicorn's signals are for the worker, which stops the helper itself;
    # and a signal here must not wake the worker's loop (gunicorn's wake-up pipe).
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_IGN)
    for signum in (signal.SIGTERM, signal.SIGABRT):
        signal.signal(signum, signal.SIG_DFL)
    threading.Thread(target=_end_with, args=(worker,), name="nbenv-watch", daemon=True).start()
    from bot.bootstrap import build_runtime
    from bot.slack.interactions import Interactions

    interactions = Interactions(build_runtime(config=config, migrate=False).nbenv)
    with ThreadPoolExecutor(POSTING_THREADS, thread_name_prefix="nbenv-answer") as pool:
        while (task := tasks.get()) is not None:
            pool.submit(_answer, interactions, *task)


def _end_with(worker: int) -> None:
    """A worker killed outright (gunicorn's timeout, the OOM killer) cannot stop its
    helper: the helper sees it is gone and ends within a second."""
    while os.getppid() == worker:
        time.sleep(1.0)
    os._exit(0)


def _answer(interactions: Interactions, response_url: str, later: Later, replace: bool) -> None:
    try:
        post_answer(response_url, interactions.compute(later), replace=replace)
    except Exception:  # in a thread pool nobody would hear of it
        log.exception("answering %s failed", response_url)
