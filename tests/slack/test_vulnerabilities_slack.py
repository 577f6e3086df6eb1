"""`/nbenv promote` through Slack on the local backend: the confirmation says that known
vulnerabilities need the gcp backend (Artifact Analysis), instead of saying nothing."""

from __future__ import annotations

from tests.conftest import OWNER, TESTER
from tests.slack.bot import BotServer, blocks_text, in_production, published, wait_response
from tests.support.slack_api import FakeSlackApi


def test_the_confirmation_says_scanning_needs_the_gcp_backend(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    (v1,) = in_production(rt, image, "v1")
    v2 = published(rt, image, "v2")
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"promote-{image}")

    server.slash(OWNER, f"promote {image}", response_url=url)

    shown = blocks_text(wait_response(slack, url))
    assert f"production: `{v1[:7]}` → `{v2[:7]}`" in shown
    assert "Known vulnerabilities: vulnerability scanning needs the gcp backend" in shown
