"""The durable job queue: slow work runs once, failures reach whoever asked."""

from __future__ import annotations

from sqlalchemy import select

from bot.domain.commands import parse
from bot.service.jobs import MAX_ATTEMPTS, JobWorker
from bot.store import tables as t
from tests.conftest import IMAGE, OWNER


def _jobs(runtime) -> list:
    with runtime.store.read() as tx:
        return list(tx.connection.execute(select(t.jobs).order_by(t.jobs.c.id)))


def _outbox(runtime) -> list:
    with runtime.store.read() as tx:
        return list(tx.connection.execute(select(t.outbox).order_by(t.outbox.c.id)))


def test_a_failed_build_is_answered_where_it_was_asked(runtime):
    url = "http://127.0.0.1:9/response/build"
    reply = runtime.app.execute(OWNER, parse(f"build {IMAGE} no-such-branch"), reply_to=url)
    assert "queued" in reply.text
    assert runtime.worker.run_until_idle() == 1
    (job,) = _jobs(runtime)
    assert job.status == "failed"
    assert "no-such-branch" in job.error or "repositor" in job.error
    answers = [row for row in _outbox(runtime) if row.method == "response_url"]
    assert len(answers) == 1
    assert answers[0].payload["url"] == url
    assert answers[0].payload["text"].startswith("⚠️ build failed: ")
    assert runtime.worker.run_once() is False  # nothing runs twice


def test_a_crashing_job_is_retried_then_parked(runtime):
    crashes: list[dict] = []

    def crash(payload: dict) -> None:
        crashes.append(payload)
        raise RuntimeError("disk full")

    worker = JobWorker(runtime.store, {"flaky": crash})
    with runtime.store.write(audited=False) as tx:
        assert tx.enqueue_job("flaky:1", "flaky", {"n": 1}) is True
        assert tx.enqueue_job("flaky:1", "flaky", {"n": 1}) is False  # same key: one job
    assert worker.run_until_idle() == MAX_ATTEMPTS
    (job,) = _jobs(runtime)
    assert (job.status, job.attempts) == ("failed", MAX_ATTEMPTS)
    assert "disk full" in job.error
    assert len(crashes) == MAX_ATTEMPTS


def test_an_unknown_job_kind_fails_with_a_reason(runtime):
    with runtime.store.write(audited=False) as tx:
        tx.enqueue_job("odd:1", "odd", {})
    assert JobWorker(runtime.store, {}).run_once() is True
    (job,) = _jobs(runtime)
    assert job.status == "failed" and "no handler for job kind 'odd'" in job.error
