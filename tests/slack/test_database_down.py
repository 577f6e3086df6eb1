"""While its database is down (a restart, a failover), the bot still answers Slack, in one
line, and picks up where it was once the database is back."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import OWNER, TESTER
from tests.slack.bot import BotServer, ask, audit, published
from tests.support.postgres import PostgresCluster, require_postgres_bin
from tests.support.slack_api import FakeSlackApi

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """A server of this module's own: it is stopped mid-test."""
    require_postgres_bin()
    with PostgresCluster() as own:
        yield own


@pytest.fixture(scope="module")
def database(cluster: PostgresCluster) -> str:
    return cluster.create_database("down")


def test_a_command_while_the_database_is_down_is_answered_in_one_line(
    server: BotServer, rt, image: str, slack: FakeSlackApi, cluster: PostgresCluster
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image, "v1")
    assert "approved" not in ask(server, slack, OWNER, f"status {image}")

    with cluster.down():
        for text in (f"approve {image}", f"status {image}", f"freeze {image} patching"):
            answer = server.slash(TESTER if "approve" in text else OWNER, text)
            assert answer.status == 200, answer.text  # not Bolt's 500
        shown = ask(server, slack, TESTER, f"approve {image}")
        assert "cannot reach its database right now" in shown and "\n" not in shown.strip()
        later = ask(server, slack, OWNER, f"status {image}")
        assert "cannot reach its database right now" in later

    # Back: the same command works, and nothing was recorded twice or half.
    assert "approved" in ask(server, slack, TESTER, f"approve {image}")
    assert [entry.action for entry in audit(rt, image)].count("approve") == 1
