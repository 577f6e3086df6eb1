"""The bot over HTTP on PostgreSQL, as it runs in production (Cloud SQL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import OWNER, TESTER
from tests.slack.bot import (
    BotServer,
    audit,
    blocks_text,
    buttons,
    channel_messages,
    pointers,
    published,
    wait_message,
    wait_response,
    wait_until,
)
from tests.support.slack_api import FakeSlackApi

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def database(pg_cluster) -> str:  # type: ignore[no-untyped-def]
    return pg_cluster.create_database("slack_http")


class TestTheBotOnPostgres:
    def test_approve_promote_and_roll_back_with_buttons(
        self, server: BotServer, rt, image: str, slack: FakeSlackApi
    ) -> None:  # type: ignore[no-untyped-def]
        v1 = published(rt, image, "v1")
        root = wait_message(slack, f"`{v1[:7]}` is now in staging for {image}")
        url = slack.response_url(f"pg-approve-{image}")
        server.action(TESTER, buttons({"blocks": root.blocks})["Approve"], response_url=url)
        assert "approved" in blocks_text(wait_response(slack, url))

        plan_url = slack.response_url(f"pg-plan-{image}")
        server.slash(OWNER, f"promote {image}", response_url=plan_url)
        plan = wait_response(slack, plan_url)
        done_url = slack.response_url(f"pg-done-{image}")
        server.action(OWNER, buttons(plan)["Promote to production"], response_url=done_url)
        assert "promoted" in blocks_text(wait_response(slack, done_url))
        assert pointers(rt, image)["production"] == v1

        announcement = wait_message(slack, f"promoted `{v1[:7]}` to production of {image}")
        assert announcement.thread_ts == root.ts

    def test_a_retried_command_has_one_effect(
        self, server: BotServer, rt, image: str, slack: FakeSlackApi
    ) -> None:  # type: ignore[no-untyped-def]
        body = server.slash_body(OWNER, f"freeze {image} db maintenance", trigger="9.9.pg")
        answers = [server.signed(body, retry=n) for n in (None, 1)]
        assert "froze" in answers[0].shown and "already" in answers[1].shown
        assert [e.action for e in audit(rt, image)] == ["freeze"]
        wait_message(slack, f"froze {image}")
        assert len(channel_messages(slack, f"froze {image}")) == 1

    def test_two_presses_of_one_confirmation_promote_once(
        self, server: BotServer, rt, image: str, slack: FakeSlackApi
    ) -> None:  # type: ignore[no-untyped-def]
        v1 = published(rt, image, "v1")
        rt.nbenv.handle(TESTER, f"approve {image}")
        plan_url = slack.response_url(f"pg-twice-{image}")
        server.slash(OWNER, f"promote {image}", response_url=plan_url)
        confirm = buttons(wait_response(slack, plan_url))["Promote to production"]
        urls = [slack.response_url(f"pg-press-{n}-{image}") for n in range(2)]

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda u: server.action(OWNER, confirm, response_url=u), urls))

        answers = [blocks_text(wait_response(slack, u)) for u in urls]
        assert sum("promoted" in a for a in answers) == 1
        assert sum("changed since this was shown" in a for a in answers) == 1
        assert pointers(rt, image)["production"] == v1
        wait_until(lambda: channel_messages(slack, f"promoted `{v1[:7]}`"))
        assert [e.action for e in audit(rt, image) if e.outcome == "ok"].count("promote") == 1

    def test_a_build_name_in_a_slash_command_or_a_press_acts_as_no_one(
        self, server: BotServer, rt, image: str, slack: FakeSlackApi
    ) -> None:  # type: ignore[no-untyped-def]
        commit = published(rt, image, "v1")
        root = wait_message(slack, f"`{commit[:7]}` is now in staging for {image}")
        url = slack.response_url(f"pg-impostor-{image}")
        before = audit(rt, image)

        froze = server.slash("build:evil", f"freeze {image} hostile takeover")
        approved = server.action(
            "build:x", buttons({"blocks": root.blocks})["Approve"], response_url=url
        )

        assert [froze.status, approved.status] == [400, 400]
        assert "'build:evil' is not a Slack user ID" in froze.text
        with rt.store.read() as tx:
            assert tx.freezes.get(image) is None
            assert tx.approvals.standing(image, commit) == []
        assert audit(rt, image) == before
