"""Background threads of a running bot: outbox delivery, and the job queue's step —
running jobs here, or handing them to Pub/Sub when a push subscription runs them.

Both poll the store (so work queued by another process or before a restart is found) and
are woken at once when this process queues something, so an answer does not wait for
the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from bot.service.ports import DispatchesJobs
from bot.service.runtime import Runtime
from bot.slack.outbox import REVIVE_EVERY, OutboxSender

log = logging.getLogger(__name__)


class Background:
    def __init__(
        self,
        runtime: Runtime,
        sender: OutboxSender | None,
        *,
        jobs: Callable[[], bool] | None,
        poll_s: float = 0.5,
    ) -> None:
        """JOBS: one step of the job queue (True when it did something), or None."""
        self.runtime = runtime
        self.sender = sender
        self.jobs = jobs
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._jobs_due = threading.Event()
        self._outbox_due = threading.Event()
        self._threads: list[threading.Thread] = []
        # Messages refused because the bot was not in their channel are tried again now
        # and then, in case Slack's member_joined_channel event never reached us.
        self._next_revive = time.monotonic()

    def start(self) -> Background:
        loops: list[tuple[str, Callable[[], bool], threading.Event]] = []
        if self.sender is not None:
            loops.append(("nbenv-outbox", self._deliver, self._outbox_due))
        if self.jobs is not None:
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
        if time.monotonic() >= self._next_revive:
            self._next_revive = time.monotonic() + REVIVE_EVERY.total_seconds()
            self.sender.revive_missing_channel()
        return self.sender.deliver_due() > 0

    def _job(self) -> bool:
        assert self.jobs is not None
        ran = self.jobs()
        if ran:
            self._outbox_due.set()  # a job usually queues an answer
        return ran


def job_step(runtime: Runtime, *, pushed: bool) -> Callable[[], bool] | None:
    """What this process does with queued jobs.

    PUSHED (a Pub/Sub push subscription runs them through /pubsub/jobs): hand them to
    Pub/Sub when the backend can; otherwise run them here.
    """
    if not pushed:
        return runtime.worker.run_once
    backend = runtime.nbenv.backend
    if not isinstance(backend, DispatchesJobs):
        return None  # something else publishes them
    dispatcher = backend.job_dispatcher(runtime.store)
    return lambda: dispatcher.dispatch_due() > 0
