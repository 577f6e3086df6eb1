"""One `nbenv serve` process per test module (start-up is the slow part), a fresh image per
test (so tests sharing the server never see each other's state), and an in-test runtime
on the same database to arrange state and to check what the server did."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.slack.bot import POOL, BotServer, config_text
from tests.support.slack_api import FakeSlackApi


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlackApi]:
    with FakeSlackApi() as fake:
        yield fake


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("slack")


@pytest.fixture(scope="module")
def config_path(workdir: Path) -> Path:
    path = workdir / "nbenv.yaml"
    path.write_text(config_text(), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def database(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'nbenv.db'}"


@pytest.fixture(scope="module")
def server(
    config_path: Path, database: str, workdir: Path, slack: FakeSlackApi
) -> Iterator[BotServer]:
    bot = BotServer(config=config_path, db_url=database, home=workdir / "home", slack=slack)
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


@pytest.fixture(scope="module")
def rt(server: BotServer, config_path: Path, database: str) -> Any:
    """The service on the server's database, to arrange state and look at the result."""
    from bot.bootstrap import build_runtime

    return build_runtime(str(config_path), database, migrate=False)


@pytest.fixture(scope="module")
def _images() -> Iterator[str]:
    return iter(f"nlp.t{n:02d}" for n in range(1, POOL + 1))


@pytest.fixture
def image(_images: Iterator[str]) -> str:
    """An image no other test of the module touches."""
    return next(_images)
