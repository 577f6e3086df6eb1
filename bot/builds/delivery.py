"""Slack delivery for the relay function: one sender thread per process.

Each event is committed with its messages to the outbox before anything is sent, so
delivery can happen off the request path. When the outbox is quiet (the usual case:
a build's events are seconds apart) the request waits for the pass that sends its
messages, so the function has posted to Slack before Pub/Sub gets its ack. During a
burst the request is acknowledged as soon as it is stored; the thread keeps sending,
a pass every BUSY_INTERVAL_S at most, and a root update that a later one replaced by
then is never sent at all (the sender skips superseded updates). Whatever is still
queued when the instance stops is sent by the next instance or by the bot's own sender:
nothing is lost.
"""

from __future__ import annotations

import logging
import threading

from bot.service.ports import DeliversMessages

log = logging.getLogger(__name__)

BATCH = 100  # rows per pass (DeliversMessages.deliver_due's limit)
QUIET = 3  # a pass that sent at most one event's messages: the outbox keeps up
# During a burst, passes start at most this often: the root updates queued meanwhile
# collapse into the newest (fewer Slack calls, far below chat.update's rate limit).
BUSY_INTERVAL_S = 0.1


class Deliverer:
    def __init__(
        self,
        sender: DeliversMessages,
        *,
        poll_s: float = 0.5,
        busy_interval_s: float = BUSY_INTERVAL_S,
    ) -> None:
        self.sender = sender
        self.poll_s = poll_s  # also retries what Slack refused for a while
        self.busy_interval_s = busy_interval_s
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # requests wait on it for a pass to end
        # The sender thread waits on it for work. Requests wake it only while it waits for
        # work, not during a busy interval: a wake-up per request costs the instance CPU.
        self._wake = threading.Condition(lock)
        self._idle = False  # the sender thread waits for work
        self._due = False
        self._running = False
        self._stopping = False
        self._started = 0
        self._finished = 0
        self._last_sent = 0
        self._callers = 0  # requests waiting for a pass
        self._thread: threading.Thread | None = None

    def start(self) -> Deliverer:
        self._thread = threading.Thread(target=self._loop, name="nbenv-relay-slack", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            self._wake.notify_all()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def send(self, wait_s: float) -> bool:
        """Something was queued: have it sent; True when it was within WAIT_S.

        Waits only when the outbox is quiet: no other request of this process is between
        its commit and its answer, and the last pass had little to send. During a burst
        the request is answered at once (the others keep the instance busy meanwhile).
        """
        with self._cond:
            quiet = self._callers == 0 and self._last_sent <= QUIET
            target = self._started + 1  # the next pass starts after our commit
            self._due = True
            if self._idle:
                self._wake.notify()
            if not quiet:
                return False
            self._callers += 1
            try:
                return self._cond.wait_for(lambda: self._finished >= target, wait_s)
            finally:
                self._callers -= 1

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._last_sent > QUIET:
                    self._wake.wait_for(lambda: self._stopping, self.busy_interval_s)
                self._idle = True
                self._wake.wait_for(lambda: self._due or self._stopping, self.poll_s)
                self._idle = False
                if self._stopping:
                    return
                self._due = False
                self._running = True
                self._started += 1
            sent = 0
            try:
                sent = self.sender.deliver_due(limit=BATCH)
            except Exception:  # the store or Slack may be briefly away: the next pass retries
                log.exception("relay: delivering the outbox failed")
            with self._cond:
                self._running = False
                self._finished += 1
                self._last_sent = sent
                if sent >= BATCH:
                    self._due = True
                self._cond.notify_all()
