"""The App Home of someone who may see hundreds of images stays within Slack's 100 blocks
of a view (api.slack.com/reference/surfaces/views), with every line it promises: the
images that fit, "…and N more", and the images with no version yet.

Driven end to end: a signed `app_home_opened` event to `nbenv serve`, and the fake Slack's
`views.publish`, which refuses a view slack_sdk's own validators refuse, as Slack does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import USER
from tests.slack.bot import BotServer, blocks_text, config_text, published
from tests.support.slack_api import FakeSlackApi, view_problem

IMAGES = 300
WITH_VERSIONS = 30  # more than the 24 that fit beside the idle line


@pytest.fixture(scope="module")
def config_path(workdir: Path) -> Path:
    path = workdir / "nbenv.yaml"
    path.write_text(config_text(images=IMAGES), encoding="utf-8")
    return path


def test_home_with_hundreds_of_images_fits_in_one_view(
    server: BotServer, rt: Any, slack: FakeSlackApi
) -> None:
    for n in range(1, WITH_VERSIONS + 1):
        published(rt, f"nlp.t{n:02d}")
    before = len(slack.calls("views.publish"))

    answer = server.event(
        {
            "type": "app_home_opened",
            "user": USER,
            "channel": "D0HOME",
            "tab": "home",
            "event_ts": f"{time.time():.6f}",
        }
    )

    assert answer.status == 200
    call = slack.wait_for("views.publish", before + 1)[-1]
    assert call.response is not None and call.response["ok"], call.response
    view = slack.home_view(USER)
    assert view is not None and view_problem(view) is None
    assert len(view["blocks"]) <= 100
    shown = blocks_text(view)
    assert "(truncated)" not in shown
    fitted = shown.count("*nlp.t")
    assert fitted >= 20
    assert f"…and {WITH_VERSIONS - fitted} more: `/nbenv status` lists them all." in shown
    # The images with no version yet are still named (as many as fit), not cut away.
    idle = shown.split("No versions yet: ")[1]
    assert f"nlp.t{WITH_VERSIONS + 1}," in idle and f"nlp.t{IMAGES}," in idle
