"""The answers given right after an ack, computed in a process of their own.

An answer (a status, a plan to confirm) takes a few milliseconds of Python; in the
process that acks, it would hold the interpreter lock that the next ack is waiting for.
`nbenv serve` forks this helper per worker before it starts any thread, hands it plain
`Later` records through a multiprocessing queue (a feeder thread writes the pipe, so
handing over never blocks the ack), and the helper, with its own runtime, computes each
answer and posts it to the response_url. Nothing on this route changes state: if the
helper dies, an answer is lost and the person asks again; it is started anew.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

if TYPE_CHECKING:  # the worker forks this process before it imports the service
    from bot.slack.interactions import Later

log = logging.getLogger(__name__)

POSTING_THREADS = 4  # posting waits on Slack; computing is quick


def post_answer(url: str, message: dict[str, Any], *, replace: bool = False) -> None:
    """Post a private answer to a response_url, retrying rate limits and outages."""
    if not url:
        log.warning("no response_url to answer: %s", message.get("text"))
        return
    client = WebhookClient(
        url,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=5),
            ServerErrorRetryHandler(max_retry_count=3),
        ],
    )
    response = client.send_dict(
        {**message, "response_type": "ephemeral", "replace_original": replace}
    )
    if response.status_code != 200:
        log.warning("response_url answered %s: %s", response.status_code, response.body)


class AnswerProcess:
    def __init__(self, config_path: str | None) -> None:
        self.config_path = config_path
        self._context = multiprocessing.get_context("fork")
        self._queue: Any = None
        self._process: Any = None
        self._start()

    def _start(self) -> None:
        self._queue = self._context.Queue()
        self._process = self._context.Process(
            target=_serve,
            args=(self._queue, self.config_path, os.getpid()),
            name="nbenv-answers",
            daemon=True,
        )
        self._process.start()

    def __call__(self, response_url: str, later: Later, replace: bool) -> None:
        if not self._process.is_alive():
            log.error(
                "the answer process died (exit %s): starting it again", self._process.exitcode
            )
            self._start()
        self._queue.put((response_url, later, replace))

    def stop(self, timeout_s: float = 5.0) -> None:
        self._queue.put(None)
        self._process.join(timeout_s)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(timeout_s)


def _serve(tasks: Any, config_path: str | None, parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when this one stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from bot.bootstrap import build_runtime
    from bot.slack.interactions import Interactions

    interactions = Interactions(build_runtime(config_path, migrate=False).app)

    def answer(response_url: str, later: Later, replace: bool) -> None:
        try:
            post_answer(response_url, interactions.compute(later), replace=replace)
        except Exception:
            log.exception("answering %s failed", response_url)

    with ThreadPoolExecutor(POSTING_THREADS, thread_name_prefix="nbenv-answer") as pool:
        while True:
            try:
                task = tasks.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:  # the worker is gone: so are its requests
                    return
                continue
            if task is None:
                return
            pool.submit(answer, *task)
