"""An app-wide refusal (a missing scope, a revoked token) is shown to the operator: in
`/healthz` (still 200: the bot serves, and resumes by itself) and in the owners' App Home."""

from __future__ import annotations

from tests.conftest import OWNER, TESTER
from tests.slack.bot import BotServer, home_text, published, wait_until
from tests.support.slack_api import FakeSlackApi


def test_a_missing_scope_pauses_delivery_and_the_operator_is_told(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    slack.refuse("missing_scope", method="chat.postMessage")
    try:
        published(rt, image)
        health = wait_until(
            lambda: (
                (r := server.http.get(f"{server.url}/healthz", timeout=5))
                .json()
                .get("slack_delivery")
                and r
            ),
            what="the pause in /healthz",
        )
        assert health.status_code == 200
        assert health.json()["slack_delivery"]["reason"] == "missing_scope"
        assert "refuses nbenv's messages (`missing_scope`)" in home_text(server, slack, OWNER)
        assert "refuses nbenv's messages" not in home_text(server, slack, TESTER)
    finally:
        slack.stop_refusing()
