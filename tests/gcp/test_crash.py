"""Saga crash-safety: `nbenv promote`/`rollback` killed (SIGKILL) around each registry write,
then `nbenv recover` in a fresh process: the registry converges on the store, production
is never missing, and the audit log is complete and intact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.conftest import IMAGE, OWNER
from tests.gcp.conftest import release
from tests.support.fake_google import Drop, FakeGoogleApis, Request


def _nbenv(config: Path, *words: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bot", "--config", str(config), *words],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ),  # NBENV_GCP_ENDPOINT, NBENV_DATABASE_URL, metadata on loopback
    )


def _kill_at(google: FakeGoogleApis, nth: int, when: str, victim: dict[str, int]) -> None:
    """SIGKILL the process in VICTIM on the NTH registry write, before or after it is done."""
    seen = {"writes": 0}

    def hook(request: Request) -> None:
        seen["writes"] += 1
        if seen["writes"] != nth:
            return
        os.kill(victim["pid"], signal.SIGKILL)
        if when == "before":
            raise Drop  # the write never reaches the registry

    google.on(hook, when=when, times=None, method="POST|PATCH|DELETE", path="/tags")


@pytest.mark.parametrize(
    ("action", "nth", "when"),
    [
        ("promote", 1, "before"),  # fallback not yet written
        ("promote", 1, "after"),  # fallback written, production not
        ("promote", 2, "before"),
        ("promote", 2, "after"),  # both written, the journal not yet told
        ("rollback", 1, "before"),
        ("rollback", 1, "after"),
    ],
)
def test_killed_after_each_registry_step_then_recovered(
    tmp_path, monkeypatch, gcp_config_file, google, action, nth, when
) -> None:
    from bot.bootstrap import build_runtime

    database = f"sqlite:///{tmp_path / 'crash.db'}"
    monkeypatch.setenv("NBENV_DATABASE_URL", database)
    monkeypatch.setenv("NBENV_GCP_DEADLINE", "20")  # a real process, real patience
    runtime = build_runtime(str(gcp_config_file), database)
    first = release(runtime, google, "first")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(runtime, google, "second")
    if action == "rollback":
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    before = google.env_tags(IMAGE)

    victim: dict[str, int] = {}
    _kill_at(google, nth, when, victim)
    words = ["--as", OWNER, action, IMAGE] + (
        ["--reason", "broken"] if action == "rollback" else []
    )
    process = _nbenv(gcp_config_file, *words)
    victim["pid"] = process.pid
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    # Killed mid-saga, the registry has the old production or the new one, never none:
    # production moves only with its own write (fallback is written first).
    production_write = 2 if action == "promote" else 1
    moved = nth == production_write and when == "after"
    new_production = second if action == "promote" else first
    interrupted = google.env_tags(IMAGE)
    assert interrupted["production"] == (new_production if moved else before["production"])
    google.clear_faults()

    recovered = _nbenv(gcp_config_file, "recover")
    out, err = recovered.communicate(timeout=60)
    assert recovered.returncode == 0, err
    assert out.strip() == "finished 1 interrupted operation(s)"

    expected = (
        {"staging": second, "production": second, "fallback": first}
        if action == "promote"
        else {"staging": second, "production": first, "fallback": first}
    )
    assert google.env_tags(IMAGE) == expected
    with runtime.store.read() as tx:
        state = tx.pointers.state(IMAGE)
        assert {env.value: state.sha(env) for env in state.pointers} == expected
        assert tx.sagas.pending() == []
        actions = [(e.action, e.sha, e.outcome) for e in tx.audit.entries(image=IMAGE)]
    target = second if action == "promote" else first
    assert (action, target, "ok") in actions
    assert actions[-1] == ("sync", None, "ok")  # the recovery itself is on record
    assert runtime.nbenv.verify_audit().ok

    assert runtime.nbenv.recover() == []  # nothing left to do


def test_killed_before_the_store_changed_leaves_nothing_to_recover(
    tmp_path, monkeypatch, gcp_config_file, google
) -> None:
    from bot.bootstrap import build_runtime

    database = f"sqlite:///{tmp_path / 'crash.db'}"
    monkeypatch.setenv("NBENV_DATABASE_URL", database)
    runtime = build_runtime(str(gcp_config_file), database)
    first = release(runtime, google, "first")
    victim: dict[str, int] = {}

    def kill(_: Request) -> None:
        os.kill(victim["pid"], signal.SIGKILL)
        raise Drop

    # The first thing a promote asks the registry: does the staging SHA exist?
    google.on(kill, when="before", method="GET", path=f"/tags/{first}$")
    process = _nbenv(gcp_config_file, "--as", OWNER, "promote", IMAGE)
    victim["pid"] = process.pid
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL

    recovered = _nbenv(gcp_config_file, "recover")
    out, _ = recovered.communicate(timeout=60)
    assert out.strip() == "finished 0 interrupted operation(s)"
    status = runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    assert status["environments"]["production"] is None
    assert google.env_tags(IMAGE) == {"staging": first, "production": None, "fallback": None}


def test_a_queued_promote_whose_worker_was_killed_is_retried_within_a_minute_as_asked(
    monkeypatch, db_url, gcp_config_file, google
) -> None:
    """`/nbenv promote IMAGE --yes` is queued; its worker is SIGKILLed mid-job; a newer
    SHA is published and approved meanwhile. Within a minute another worker takes the
    job up again, and it does what the owner asked or nothing: here nothing (staging
    moved), with a refusal on record and an answer to the owner."""
    from slack_sdk import WebClient

    from bot.bootstrap import build_runtime, job_handlers
    from bot.service.jobs import JobWorker
    from bot.slack.interactions import Interactions
    from bot.slack.notifications import SlackNotifier
    from bot.slack.outbox import OutboxSender
    from bot.store.uow import Store, utcnow
    from tests.support.slack_api import FakeSlackApi

    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    monkeypatch.setenv("NBENV_GCP_DEADLINE", "20")  # a real process, real patience
    runtime = build_runtime(str(gcp_config_file), db_url)
    first = release(runtime, google, "first")
    with FakeSlackApi() as slack:
        url = slack.response_url("promote-yes")
        outcome = Interactions(runtime.nbenv).slash(
            OWNER, f"promote {IMAGE} --yes", key="slash:promote-yes", response_url=url
        )
        assert outcome.queued

        victim: dict[str, int] = {}

        def kill(_: Request) -> None:
            os.kill(victim["pid"], signal.SIGKILL)
            raise Drop

        # The first thing the promote asks the registry: does the staging SHA exist?
        google.on(kill, when="before", method="GET", path=f"/tags/{first}$")
        worker = _nbenv(gcp_config_file, "worker")
        victim["pid"] = worker.pid
        try:
            worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
        assert worker.returncode == -signal.SIGKILL
        google.clear_faults()

        second = release(runtime, google, "second")  # published and approved meanwhile
        a_minute_later = Store(runtime.store.engine, clock=lambda: utcnow() + timedelta(minutes=1))
        assert (
            JobWorker(
                a_minute_later, job_handlers(runtime.nbenv), notifier=SlackNotifier()
            ).run_once()
            is True
        )

        status = runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
        assert status["environments"]["production"] is None
        assert status["environments"]["staging"]["sha"] == second
        assert google.env_tags(IMAGE)["production"] is None
        with runtime.store.read() as tx:
            entry = tx.audit.entries(image=IMAGE)[-1]
        assert (entry.actor, entry.action, entry.outcome) == (OWNER, "promote", "refused")
        assert "changed since you asked" in entry.details["reason"]
        assert runtime.nbenv.verify_audit().ok

        client = WebClient(token="xoxb-test", base_url=slack.base_url)
        assert OutboxSender(runtime.store, client).drain(timeout_s=10) == 0
        (answer,) = slack.calls("response_url:/response/promote-yes")
        text = json.dumps(answer.args)
        assert "changed since you asked" in text and "Nothing was changed" in text
        assert f"you saw staging `{first[:7]}`" in text and f"staging `{second[:7]}`" in text
