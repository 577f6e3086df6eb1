"""The durable job queue's worker: slow work (builds, instances) runs here, off the ack path.

Jobs are claimed with a conditional update, so two workers never run the same job. While
a job runs, its worker renews a short lease (a heartbeat); a job whose worker died (a
crash, a SIGKILL, a lost Cloud Run instance) stops being renewed and is taken up again
by any worker within LEASE, not after the longest a job may take. A heartbeat rather
than "retry what was running when a worker starts": several workers run at once (gunicorn
workers, Cloud Run instances, Pub/Sub pushes), and a starting one cannot tell a job whose
worker died from one a live sibling is running; nor would a crash be retried before some
worker happens to start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from bot.domain.errors import NbenvError
from bot.domain.notifications import PrivateAnswer
from bot.domain.text import escape
from bot.service.ports import Notifier
from bot.store.uow import Store, iso

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], None]
# A running job whose worker has not renewed it for this long is retried; its worker
# renews it every LEASE / HEARTBEATS_PER_LEASE, so a few slow or failed renewals in a
# row (a busy store) do not hand a live job to a second worker.
LEASE = timedelta(seconds=30)
HEARTBEATS_PER_LEASE = 6
MAX_ATTEMPTS = 3


class JobWorker:
    def __init__(
        self,
        store: Store,
        handlers: dict[str, Handler],
        *,
        notifier: Notifier,
        lease: timedelta = LEASE,
    ) -> None:
        self.store = store
        self.handlers = handlers
        self.notifier = notifier  # tells whoever asked when their job failed for good
        self.lease = lease

    def _claim(self) -> dict[str, Any] | None:
        now = self.store.clock()
        with self.store.write(audited=False) as tx:
            return tx.jobs.claim_due(iso(now), stale_before=iso(now - self.lease))

    def _finish(
        self,
        job_id: int,
        status: str,
        error: str | None = None,
        *,
        job: dict[str, Any] | None = None,
    ) -> None:
        with self.store.write(audited=False) as tx:
            tx.jobs.finish(job_id, status, error)
            # Whoever asked is told when their slow work failed for good, not left waiting.
            payload = (job or {}).get("payload", {})
            reply_to = payload.get("reply_to")
            if status == "failed" and isinstance(reply_to, str):
                actor = payload.get("actor")
                text = f"⚠️ {job['kind']} failed: {escape(error)}"  # type: ignore[index]
                answer = PrivateAnswer(reply_to, actor if isinstance(actor, str) else None, text)
                self.notifier.notify(tx, f"job-failed:{job_id}", answer)

    def run_once(self) -> bool:
        """Run one due job; False when there was none."""
        job = self._claim()
        if job is None:
            return False
        self._run(job)
        return True

    def _run(self, job: dict[str, Any]) -> str:
        """Run a claimed job; its status after: done | failed | queued (to be retried)."""
        handler = self.handlers.get(job["kind"])
        if handler is None:
            self._finish(job["id"], "failed", f"no handler for job kind {job['kind']!r}")
            return "failed"
        if job["attempts"] >= MAX_ATTEMPTS:
            # Every attempt so far ended with its worker gone (killed, out of memory):
            # running it again would likely take another worker down.
            error = f"its worker stopped while running it {job['attempts']} times"
            log.error("job %s (%s) parked: %s", job["id"], job["kind"], error)
            self._finish(job["id"], "failed", error, job=job)
            return "failed"
        stop = threading.Event()
        heartbeat = threading.Thread(
            target=self._heartbeat,
            args=(job["id"], job["attempts"] + 1, stop),
            name=f"nbenv-job-{job['id']}-lease",
            daemon=True,
        )
        heartbeat.start()
        try:
            return self._call(handler, job)
        finally:
            stop.set()
            heartbeat.join()

    def _heartbeat(self, job_id: int, attempt: int, stop: threading.Event) -> None:
        """Renew the lease of job JOB_ID (claimed as ATTEMPT) until STOP is set."""
        interval = self.lease.total_seconds() / HEARTBEATS_PER_LEASE
        while not stop.wait(interval):
            try:
                with self.store.write(audited=False) as tx:
                    tx.jobs.renew(job_id, attempt)
            except Exception:  # the store may be briefly unreachable: renew at the next beat
                log.warning("job %s: could not renew its lease", job_id, exc_info=True)

    def _call(self, handler: Handler, job: dict[str, Any]) -> str:
        try:
            handler(job["payload"])
        except NbenvError as error:
            log.warning("job %s (%s) refused: %s", job["id"], job["kind"], error.message)
            self._finish(job["id"], "failed", error.message, job=job)
            return "failed"
        except Exception as error:  # a crash in one job must not stop the worker
            log.exception("job %s (%s) failed", job["id"], job["kind"])
            status = "failed" if job["attempts"] + 1 >= MAX_ATTEMPTS else "queued"
            self._finish(job["id"], status, repr(error), job=job)
            return status
        self._finish(job["id"], "done")
        return "done"

    def run_key(self, dedupe_key: str) -> str:
        """Run the job queued under DEDUPE_KEY now (a Pub/Sub push names it).

        Returns its status: done | failed | queued (crashed, retry) | running (another
        delivery holds it) | missing. A job that already ran is not run again, so a
        redelivered message has one effect.
        """
        now = self.store.clock()
        with self.store.write(audited=False) as tx:
            job = tx.jobs.get(dedupe_key)
            if job is None:
                return "missing"
            stale = job["status"] == "running" and job["available_at"] <= iso(now - self.lease)
            if job["status"] != "queued" and not stale:
                return str(job["status"])
            if not tx.jobs.claim(job, iso(now)):
                return "running"
        return self._run(job)

    def run_until_idle(self, limit: int = 1000) -> int:
        count = 0
        while count < limit and self.run_once():
            count += 1
        return count
