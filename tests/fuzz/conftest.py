"""The fuzz tests share the Slack tests' server: one `nbenv serve` per module, over real
HTTP with really signed requests, and a fresh image per test; and its log, watched."""

from collections.abc import Iterator

import pytest

from tests.slack.bot import BotServer
from tests.slack.conftest import (  # noqa: F401 - fixtures, found by pytest by name
    _images,
    config_path,
    database,
    image,
    rt,
    server,
    slack,
    workdir,
)


class ServerLog:
    def __init__(self, bot: BotServer) -> None:
        self.server = bot
        self.start = bot.log.stat().st_size

    def new(self) -> str:
        with self.server.log.open("rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")


@pytest.fixture
def log(server: BotServer) -> Iterator[ServerLog]:  # noqa: F811 - the fixture above
    """The server's log from this test on: no traceback by the end of it."""
    watched = ServerLog(server)
    yield watched
    logged = watched.new()
    at = logged.find("Traceback")
    assert at < 0, logged[max(at - 300, 0) : at + 3000]
