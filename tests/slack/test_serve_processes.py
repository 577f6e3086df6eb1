"""`nbenv serve`'s processes: the gunicorn master, one worker, and the worker's answer
process (bot.slack.answer_process). Whatever happens to one of them, people still get
their answers, and nothing is left running behind a server that stopped."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OWNER
from tests.slack.bot import BotServer, ask, config_text, published
from tests.support.deployment import child_pids, process_alive
from tests.support.slack_api import FakeSlackApi


@pytest.fixture
def server(tmp_path: Path, slack: FakeSlackApi) -> Iterator[BotServer]:
    """A server of this test's own: the tests kill its processes."""
    config = tmp_path / "nbenv.yaml"
    config.write_text(config_text(), encoding="utf-8")
    bot = BotServer(
        config=config, db_url=f"sqlite:///{tmp_path / 'nbenv.db'}", home=tmp_path, slack=slack
    )
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


def processes(server: BotServer) -> tuple[int, int]:
    """The server's worker and the worker's answer process."""
    assert server.process is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        workers = [pid for pid in child_pids(server.process.pid) if process_alive(pid)]
        if len(workers) == 1:
            helpers = [pid for pid in child_pids(workers[0]) if process_alive(pid)]
            if len(helpers) == 1:
                return workers[0], helpers[0]
        time.sleep(0.05)
    raise AssertionError("expected one worker with one answer process")


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return True
        time.sleep(0.05)
    return False


def staged(server: BotServer) -> str:
    """A version of nlp.t01 in staging; the start of its SHA, as status shows it."""
    from bot.bootstrap import build_runtime

    runtime = build_runtime(str(server.config), server.db_url, migrate=False)
    return published(runtime, "nlp.t01")[:7]


def test_each_worker_has_one_answer_process_that_answers(
    server: BotServer, slack: FakeSlackApi
) -> None:
    _worker, helper = processes(server)
    sha = staged(server)

    assert sha in ask(server, slack, OWNER, "status nlp.t01")
    assert process_alive(helper)


def test_when_the_answer_process_dies_the_worker_answers(
    server: BotServer, slack: FakeSlackApi
) -> None:
    sha = staged(server)
    _worker, helper = processes(server)

    os.kill(helper, signal.SIGKILL)
    assert gone_within(helper, 5)

    for _ in range(3):  # every one answered, not only the first after the death
        assert sha in ask(server, slack, OWNER, "status nlp.t01")


def test_the_answer_process_ends_with_its_worker(server: BotServer) -> None:
    worker, helper = processes(server)

    os.kill(worker, signal.SIGKILL)  # as gunicorn's timeout or the OOM killer would

    assert gone_within(helper, 5)


def test_the_answer_process_ends_when_the_server_stops(server: BotServer) -> None:
    _worker, helper = processes(server)

    assert server.stop(graceful=True) == 0

    assert gone_within(helper, 5)
