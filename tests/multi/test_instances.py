"""Two `nbenv serve` processes and two relay processes on one PostgreSQL database, as
Cloud Run runs nbenv: every guarantee that matters when several instances share a store,
shown on one seeded, interleaved lifecycle of three images (see tests/multi/lifecycle.py).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.multi.lifecycle import IMAGES, TWO_APPROVALS, Lifecycle, check_invariants
from tests.slack.bot import config_text
from tests.support.deployment import Deployment, bot_token, deployment, relay_token

pytestmark = pytest.mark.postgres
SEED = 14


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "nbenv.yaml"
    path.write_text(config_text(images=3), encoding="utf-8")
    return path


@pytest.fixture
def database(pg_cluster: Any) -> str:
    return pg_cluster.create_database(f"multi_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def running(tmp_path: Path, config: Path, database: str) -> Iterator[Deployment]:
    with deployment(tmp_path, config=config, db_url=database) as started:
        yield started


@pytest.fixture
def runtime(running: Deployment, config: Path, database: str) -> Any:
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


@pytest.fixture
def own_cluster() -> Iterator[Any]:
    """A PostgreSQL server of this test's own: it is restarted mid-test."""
    from tests.support.postgres import PostgresCluster, require_postgres_bin

    require_postgres_bin()
    with PostgresCluster() as cluster:
        yield cluster


def test_a_lifecycle_survives_postgres_restarts_and_killed_processes(
    tmp_path: Path, config: Path, own_cluster: Any
) -> None:
    """The same lifecycle, while PostgreSQL is restarted twice, a relay is killed (SIGKILL)
    before Slack took its message, a bot worker right after Slack took one, and the bot
    worker running a promote job mid-job: afterwards every guarantee above still holds,
    every thread message went out once, and every person who asked was answered."""
    from bot.bootstrap import build_runtime

    database = own_cluster.create_database("faults")
    with deployment(tmp_path, config=config, db_url=database) as running:
        runtime = build_runtime(str(config), database, migrate=False)
        life = Lifecycle(running, runtime, SEED + 1)

        def thread_message(method: str, args: dict[str, Any], token: str | None) -> bool:
            return method in ("chat.postMessage", "chat.update")

        def between(round_: int) -> None:
            if round_ in (2, 6):
                own_cluster.restart()
                runtime.store.engine.dispose()  # the test's own connections: not under test
            if round_ == 1:
                victims = {relay_token(0): running.relays[0].process.pid}
                life.kills.append(running.slack.kill_on(thread_message, victims))
            if round_ == 3:
                victims = {bot_token(1): running.bot_worker_pid(1)}
                life.kills.append(running.slack.kill_on(thread_message, victims, after=True))
            if round_ == 4:
                life.promote_with_its_job_worker_killed("nlp.t03")

        life.run(IMAGES, between=between)
        assert [hook.fired.is_set() for hook in life.kills] == [True, True]
        life.heal()
        check_invariants(life, config, database)
