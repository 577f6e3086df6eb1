"""The App Home tab: every image the person may see, its three environments with short
SHA, age and who moved them last, pending approvals and freezes."""

from __future__ import annotations

import time

from tests.conftest import OWNER, TESTER, USER, VISION_OWNER
from tests.slack.bot import STRANGER, BotServer, blocks_text, in_production, published, wait_until
from tests.support.slack_api import FakeSlackApi


def _home(server: BotServer, slack: FakeSlackApi, user: str) -> str:
    published_before = len(slack.calls("views.publish"))
    answer = server.event(
        {
            "type": "app_home_opened",
            "user": user,
            "channel": "D0HOME",
            "tab": "home",
            "event_ts": f"{time.time():.6f}",
        }
    )
    assert answer.status == 200
    calls = slack.wait_for("views.publish", published_before + 1)
    call = next(c for c in reversed(calls) if c.args["user_id"] == user)
    view = slack.home_view(user)
    assert view is not None and view["type"] == "home"
    assert call.response["ok"]
    return blocks_text(view)


def test_home_shows_environments_approvals_and_freezes(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = in_production(rt, image, "v1", "v2")
    v3 = published(rt, image, "v3")
    rt.nbenv.handle(OWNER, f"freeze {image} <!channel> release week")
    pending = published(rt, "nlp.two-approvals", "p1")
    rt.nbenv.handle(TESTER, "approve nlp.two-approvals")

    shown = _home(server, slack, USER)

    section = shown[shown.index(f"*{image}*") :]
    assert f"*staging*\n`{v3[:7]}`" in section
    assert f"*production*\n`{v2[:7]}`" in section
    assert f"*fallback*\n`{v1[:7]}`" in section
    assert f"just now by <@{OWNER}>" in section
    assert "🧊 *frozen*" in section
    assert f"Frozen by <@{OWNER}>" in section and "&lt;!channel&gt; release week" in section
    assert "<!channel>" not in shown
    assert f"Staging `{v3[:7]}`: 0/1 approvals — waiting for testers" in section
    assert f"Staging `{pending[:7]}`: 1/2 approvals (<@{TESTER}>) — waiting for testers" in shown
    assert "vision.pytorch-gpu" not in shown  # not this user's team


def test_home_of_another_team_shows_only_its_images(server: BotServer, slack: FakeSlackApi) -> None:
    shown = _home(server, slack, VISION_OWNER)
    assert "vision.pytorch-gpu" in shown
    assert "nlp." not in shown


def test_home_of_someone_in_no_team_says_how_to_get_in(
    server: BotServer, slack: FakeSlackApi
) -> None:
    shown = _home(server, slack, STRANGER)
    assert "not in any nbenv team" in shown


def test_home_is_refreshed_each_time_it_is_opened(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    first = _home(server, slack, TESTER)
    commit = published(rt, image)
    wait_until(lambda: commit[:7] in _home(server, slack, TESTER), what="a refreshed home")
    assert commit[:7] not in first
