"""The durable job queue: slow work runs once, failures reach whoever asked."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from bot.domain.command_table import parse
from bot.service.jobs import LEASE, MAX_ATTEMPTS, JobWorker
from bot.slack.interactions import Interactions
from bot.slack.notifications import SlackNotifier
from bot.store import tables as t
from bot.store.uow import Store, utcnow
from tests.conftest import IMAGE, OWNER, TESTER, sha_of


def _jobs(runtime) -> list:
    with runtime.store.read() as tx:
        return list(tx.connection.execute(select(t.jobs).order_by(t.jobs.c.id)))


def _outbox(runtime) -> list:
    with runtime.store.read() as tx:
        return list(tx.connection.execute(select(t.outbox).order_by(t.outbox.c.id)))


def test_a_failed_build_is_answered_where_it_was_asked(runtime):
    url = "http://127.0.0.1:9/response/build"
    reply = runtime.nbenv.execute(OWNER, parse(f"build {IMAGE} no-such-branch"), reply_to=url)
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


def test_a_job_queued_by_the_previous_version_reads_where_to_answer(runtime):
    """Before, a job named where to answer by Slack's word for it (`response_url`); such
    jobs may still be queued after an upgrade, and still answer there."""
    url = "http://127.0.0.1:9/response/old"
    with runtime.store.write(audited=False) as tx:
        tx.jobs.enqueue("old:1", "doomed", {"actor": OWNER, "response_url": url})
        tx.jobs.enqueue("new:1", "doomed", {"actor": OWNER, "reply_to": url})
    with runtime.store.read() as tx:
        old, new = tx.jobs.get("old:1"), tx.jobs.get("new:1")
    assert old["payload"] == new["payload"] == {"actor": OWNER, "reply_to": url}

    def fails(payload: dict) -> None:
        raise RuntimeError(f"no answer for {payload['reply_to']}")

    worker = JobWorker(runtime.store, {"doomed": fails}, notifier=SlackNotifier())
    assert worker.run_until_idle() == 2 * MAX_ATTEMPTS
    answers = [row for row in _outbox(runtime) if row.method == "response_url"]
    assert [(row.dedupe_key, row.payload["url"]) for row in answers] == [
        (f"job-failed:{job.id}", url) for job in _jobs(runtime)
    ]
    assert all(job.status == "failed" and url in job.error for job in _jobs(runtime))


def test_a_crashing_job_is_retried_then_parked(runtime):
    crashes: list[dict] = []

    def crash(payload: dict) -> None:
        crashes.append(payload)
        raise RuntimeError("disk full")

    worker = JobWorker(runtime.store, {"flaky": crash}, notifier=SlackNotifier())
    with runtime.store.write(audited=False) as tx:
        assert tx.jobs.enqueue("flaky:1", "flaky", {"n": 1}) is True
        assert tx.jobs.enqueue("flaky:1", "flaky", {"n": 1}) is False  # same key: one job
    assert worker.run_until_idle() == MAX_ATTEMPTS
    (job,) = _jobs(runtime)
    assert (job.status, job.attempts) == ("failed", MAX_ATTEMPTS)
    assert "disk full" in job.error
    assert len(crashes) == MAX_ATTEMPTS


def test_an_unknown_job_kind_fails_with_a_reason(runtime):
    with runtime.store.write(audited=False) as tx:
        tx.jobs.enqueue("odd:1", "odd", {})
    assert JobWorker(runtime.store, {}, notifier=SlackNotifier()).run_once() is True
    (job,) = _jobs(runtime)
    assert job.status == "failed" and "no handler for job kind 'odd'" in job.error


def test_a_running_job_keeps_its_lease_while_its_worker_lives(runtime):
    """A short lease is renewed while the job runs: another worker never takes a live
    job, however long it runs."""
    lease = timedelta(seconds=1.2)
    started, finish = threading.Event(), threading.Event()
    runs: list[dict] = []
    stolen: list[dict] = []

    def slow(payload: dict) -> None:
        runs.append(payload)
        started.set()
        finish.wait(10)

    live = JobWorker(runtime.store, {"slow": slow}, lease=lease, notifier=SlackNotifier())
    rival = JobWorker(runtime.store, {"slow": stolen.append}, lease=lease, notifier=SlackNotifier())
    with runtime.store.write(audited=False) as tx:
        tx.jobs.enqueue("slow:1", "slow", {"n": 1})
    running = threading.Thread(target=live.run_once)
    running.start()
    try:
        assert started.wait(10)
        deadline = time.monotonic() + 2 * lease.total_seconds()
        while time.monotonic() < deadline:
            assert rival.run_once() is False
            assert rival.run_key("slow:1") == "running"
            time.sleep(0.05)
    finally:
        finish.set()
        running.join(10)
    assert (len(runs), stolen) == (1, [])
    (job,) = _jobs(runtime)
    assert (job.status, job.attempts) == ("done", 1)


def test_a_job_whose_worker_keeps_dying_is_parked_and_its_asker_told(runtime):
    """A job that took its worker down MAX_ATTEMPTS times is not run again (it would
    likely take the next worker down too): failed, and whoever asked hears it."""
    url = "http://127.0.0.1:9/response/doomed"
    runs: list[dict] = []

    def fatal(payload: dict) -> None:
        runs.append(payload)
        raise SystemExit("the worker process goes down with the job")

    with runtime.store.write(audited=False) as tx:
        tx.jobs.enqueue("doomed:1", "doomed", {"actor": OWNER, "response_url": url})
    for attempt in range(1, MAX_ATTEMPTS + 2):
        # Each worker comes after the previous one's lease ran out.
        at = utcnow() + attempt * 2 * LEASE
        worker = JobWorker(
            Store(runtime.store.engine, clock=lambda at=at: at),
            {"doomed": fatal},
            notifier=SlackNotifier(),
        )
        if attempt <= MAX_ATTEMPTS:
            with pytest.raises(SystemExit):
                worker.run_once()
        else:
            assert worker.run_once() is True
    assert len(runs) == MAX_ATTEMPTS
    (job,) = _jobs(runtime)
    assert job.status == "failed"
    assert f"stopped while running it {MAX_ATTEMPTS} times" in job.error
    (answer,) = [row for row in _outbox(runtime) if row.method == "response_url"]
    assert answer.payload["url"] == url and answer.payload["user"] == OWNER


def test_a_yes_rollback_racing_a_promote_rolls_back_what_its_owner_saw_or_nothing(runtime):
    """`/nbenv rollback IMAGE --yes` is queued; before it runs, a newer version is
    promoted. Rolling back now would revoke a SHA the owner never saw: nothing changes,
    the owner is told why, and the refusal is on record."""
    a, b, c = sha_of("race a"), sha_of("race b"), sha_of("race c")
    for sha in (a, b):
        runtime.nbenv.publish(OWNER, IMAGE, sha)
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    url = "http://127.0.0.1:9/response/race"
    outcome = Interactions(runtime.nbenv).slash(
        OWNER, f"rollback {IMAGE} --yes --reason broken", key="slash:race", response_url=url
    )
    assert outcome.queued
    # Meanwhile c arrives and is promoted from elsewhere: production c, fallback b.
    runtime.nbenv.publish(OWNER, IMAGE, c)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert runtime.worker.run_until_idle() == 1

    status = runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    envs = {env: (p["sha"] if p else None) for env, p in status["environments"].items()}
    assert envs == {"staging": c, "production": c, "fallback": b}
    assert not status["environments"]["production"]["revoked"]
    (answer,) = [r for r in _outbox(runtime) if r.dedupe_key == "answer:slash:race"]
    text = answer.payload["text"]
    assert "changed since you asked" in text and "Nothing was changed" in text
    assert f"you saw staging `{b[:7]}`, production `{b[:7]}`, fallback `{a[:7]}`" in text
    assert answer.payload["user"] == OWNER
    with runtime.store.read() as tx:
        entry = tx.audit.entries(image=IMAGE)[-1]
    assert (entry.actor, entry.action, entry.outcome) == (OWNER, "rollback", "refused")
    assert "changed since you asked" in entry.details["reason"]


def test_a_yes_rollback_nobody_raced_still_rolls_back(runtime):
    a, b = sha_of("calm a"), sha_of("calm b")
    for sha in (a, b):
        runtime.nbenv.publish(OWNER, IMAGE, sha)
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    url = "http://127.0.0.1:9/response/calm"
    Interactions(runtime.nbenv).slash(
        OWNER, f"rollback {IMAGE} --yes --reason broken", key="slash:calm", response_url=url
    )
    assert runtime.worker.run_until_idle() == 1
    status = runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    assert status["environments"]["production"]["sha"] == a
    (answer,) = [r for r in _outbox(runtime) if r.dedupe_key == "answer:slash:calm"]
    assert "rolled back production" in answer.payload["text"]
