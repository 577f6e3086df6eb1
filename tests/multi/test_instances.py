"""Two `nbenv serve` processes and two relay processes on one PostgreSQL database, as
Cloud Run runs nbenv: every guarantee that matters when several instances share a store,
shown on seeded, interleaved lifecycles of several images (see tests/multi/lifecycle.py),
first undisturbed, then while PostgreSQL restarts and processes are killed.

Both tests share one deployment (starting and stopping five processes is most of the
cost) and one PostgreSQL server of their own (the second test restarts it); each test
has images of its own, and checks only what concerns them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OWNER
from tests.multi.lifecycle import TWO_APPROVALS, Lifecycle, check_invariants
from tests.slack.bot import config_text
from tests.support.deployment import Deployment, bot_token, deployment

pytestmark = pytest.mark.postgres
SEED = 14


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("multi")


@pytest.fixture(scope="module")
def config(workdir: Path) -> Path:
    path = workdir / "nbenv.yaml"
    path.write_text(config_text(images=5), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A PostgreSQL server of this module's own: it is restarted mid-test."""
    from tests.support.postgres import PostgresCluster, require_postgres_bin

    require_postgres_bin()
    with PostgresCluster() as server:
        yield server


@pytest.fixture(scope="module")
def database(cluster: Any) -> str:
    return cluster.create_database("multi")


@pytest.fixture(scope="module")
def running(workdir: Path, config: Path, database: str) -> Iterator[Deployment]:
    with deployment(workdir, config=config, db_url=database) as started:
        yield started


@pytest.fixture(scope="module")
def runtime(running: Deployment, config: Path, database: str) -> Any:
    """The service on the same database, to arrange state and look at the result."""
    from bot.bootstrap import build_runtime

    return build_runtime(str(config), database, migrate=False)


def test_two_bots_and_two_relays_on_one_database_apply_everything_once(
    running: Deployment, runtime: Any, config: Path, database: str
) -> None:
    """Interleaved slash commands, presses delivered twice and confirmed on both bots at
    once, build events duplicated and reordered over both relays, for two images:
    one thread per SHA, each approval, promotion and rollback applied once, production
    and fallback never emptied, the pointer history in line with an intact audit log."""
    life = Lifecycle(running, runtime, SEED)
    life.run(("nlp.t01", TWO_APPROVALS))
    check_invariants(life, config, database)


def test_a_lifecycle_survives_postgres_restarts_and_killed_processes(
    running: Deployment, runtime: Any, config: Path, database: str, cluster: Any
) -> None:
    """The same lifecycle for two other images, while PostgreSQL is restarted twice, a
    relay is killed (SIGKILL) before Slack took its message, a bot worker right after
    Slack took one, and the bot worker running a promote job mid-job: afterwards every
    guarantee above still holds, every thread message went out once, and every person
    who asked was answered once."""
    life = Lifecycle(running, runtime, SEED + 1)

    def thread_message(method: str, args: dict[str, Any], token: str | None) -> bool:
        return method in ("chat.postMessage", "chat.update")

    def between(round_: int) -> None:
        if round_ in (2, 6):
            cluster.restart()
            runtime.store.engine.dispose()  # the test's own connections: not under test
            life.database_restarted()
        if round_ == 1:
            life.kill_relay_on_its_next_message(0, thread_message)
        if round_ == 3:
            # Whichever bot worker sends the next thread message (after=True: once Slack
            # has taken it, so its sender must find it there rather than post it again).
            victims = {bot_token(n): running.bot_worker_pid(n) for n in range(2)}
            life.kills.append(running.slack.kill_on(thread_message, victims, after=True))
        if round_ == 4:
            life.promote_with_its_job_worker_killed("nlp.t04")

    life.run(("nlp.t02", "nlp.t03"), between=between)
    assert [hook.fired.is_set() for hook in life.kills] == [True, True]
    life.heal()
    check_invariants(life, config, database)


def test_after_postgres_restarts_the_next_command_on_each_bot_is_answered(
    running: Deployment, runtime: Any, cluster: Any
) -> None:
    """Cloud SQL restarts (maintenance, a failover): the connections each process kept
    are cut. The next command on each bot is answered all the same, at once; none fails
    on a cut connection with no answer to the person who asked."""
    from tests.slack.bot import blocks_text, published, wait_response

    image = "nlp.t05"
    published(runtime, image, "after-restart")
    for bot in running.bots:  # every process has connections in its pool now
        url = running.slack.response_url(f"warm-{bot.port}")
        assert bot.slash(OWNER, f"status {image}", response_url=url).status == 200
        wait_response(running.slack, url, timeout=30)

    cluster.restart()
    runtime.store.engine.dispose()  # the test's own connections: not under test

    for bot in running.bots:
        url = running.slack.response_url(f"after-{bot.port}")
        assert bot.slash(OWNER, f"status {image}", response_url=url).status == 200
        assert image in blocks_text(wait_response(running.slack, url, timeout=30))
