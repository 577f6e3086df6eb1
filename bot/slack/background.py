"""Background threads of a running bot: outbox delivery and, on the local backend, the jobs.

Both poll the store (so work queued by another process or before a restart is found) and
are woken at once when this process queues something, so an answer does not wait for
the next poll.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bot.bootstrap import Runtime
from bot.slack.outbox import OutboxSender

log = logging.getLogger(__name__)


class Background:
    def __init__(
        self,
        runtime: Runtime,
        sender: OutboxSender | None,
        *,
        run_jobs: bool,
        poll_s: float = 0.5,
    ) -> None:
        self.runtime = runtime
        self.sender = sender
        self.run_jobs = run_jobs
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._jobs_due = threading.Event()
        self._outbox_due = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> Background:
        loops: list[tuple[str, Callable[[], bool], threading.Event]] = []
        if self.sender is not None:
            loops.append(("nbenv-outbox", self._deliver, self._outbox_due))
        if self.run_jobs:
            loops.append(("nbenv-jobs", self._job, self._jobs_due))
        for name, step, due in loops:
            thread = threading.Thread(target=self._loop, args=(step, due), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wake(self) -> None:
        """Something was queued: look now rather than at the next poll."""
        self._jobs_due.set()
        self._outbox_due.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the step in progress and stop; a job cut short is resumed after its lease."""
        self._stop.set()
        self.wake()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads.clear()

    @property
    def running(self) -> bool:
        return any(thread.is_alive() for thread in self._threads)

    def _loop(self, step: Callable[[], bool], due: threading.Event) -> None:
        while not self._stop.is_set():
            try:
                busy = step()
            except Exception:  # the store may be briefly unreachable: keep going
                log.exception("background step failed")
                busy = False
            if not busy:
                due.wait(self.poll_s)
                due.clear()

    def _deliver(self) -> bool:
        assert self.sender is not None
        return self.sender.deliver_due() > 0

    def _job(self) -> bool:
        ran = self.runtime.worker.run_once()
        if ran:
            self._outbox_due.set()  # a job usually queues an answer
        return ran
