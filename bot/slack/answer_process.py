"""The answers given right after an ack, computed in a process of the worker's own.

An answer (a status, a plan to confirm) takes one or two milliseconds of Python. In the
process that acks, it would hold the interpreter lock that the next ack waits for:
measured side by side with a bare Bolt app, `/nbenv status` acks went from 2× to 4-6×
its time when the answers were computed beside them (`make bench`). So each `nbenv
serve` worker hands its answers to a helper process, which computes them on the other
core and posts them to the response_url.

The helper is forked when the worker starts, before the worker has a thread (a fork
copies only the thread that calls it, and a lock another thread held would stay locked
in the copy); it builds its own runtime from the config the worker was given. Nothing on
this route changes state: if the helper dies, the answers it held are lost (the person
asks again) and the worker computes the next ones itself. It ends with its worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
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


class AnswerProcess:
    def __init__(self, config: Config) -> None:
        context = multiprocessing.get_context("fork")
        # A feeder thread writes to the pipe: handing an answer over never blocks an ack.
        self._queue: Any = context.Queue()
        self._process = context.Process(
            target=_serve, args=(self._queue, config, os.getpid()), name="nbenv-answers"
        )
        self._process.start()

    def __call__(self, response_url: str, later: Later, replace: bool) -> bool:
        """Hand an answer over; False when the helper is gone (the caller answers)."""
        if not self._process.is_alive():
            log.error(
                "the answer process is gone (exit %s): answering in the worker",
                self._process.exitcode,
            )
            return False
        self._queue.put((response_url, later, replace))
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._process.is_alive():
            self._queue.put(None)
            self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)


def _serve(tasks: Any, config: Config, worker: int) -> None:
    """The helper: its own runtime, then every answer it is handed, until told to stop."""
    # Ctrl-C and gunicorn's signals are for the worker, which stops the helper itself.
    for signum in (signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1, signal.SIGWINCH):
        signal.signal(signum, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
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
