"""Every role × every action over HTTP: allowed ones succeed, the others get a private
refusal that says which role is needed, change nothing, and are themselves audited."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import OWNER, TESTER, TESTER2, USER, VISION_OWNER
from tests.slack.bot import (
    STRANGER,
    BotServer,
    ask,
    audit,
    in_production,
    pointers,
    published,
)
from tests.support.slack_api import FakeSlackApi

RANK = {"user": 1, "tester": 2, "owner": 3}
PEOPLE = {OWNER: "owner", TESTER: "tester", USER: "user", VISION_OWNER: None, STRANGER: None}


@dataclass(frozen=True)
class Action:
    text: str  # after /nbenv; {image} is filled in
    needs: str
    success: str  # what an allowed person sees


ACTIONS = [
    Action("status {image}", "user", "*{image}*"),
    Action("versions {image}", "user", "Versions of {image}"),
    Action("history {image}", "user", "History of {image}"),
    Action("instances {image}", "user", "*Instances*"),
    Action("diff {image}", "user", "{image}"),
    Action("instance {image}", "user", "creating instance"),
    Action("instance {image} --env staging", "tester", "creating instance"),
    Action("approve {image}", "tester", "approved"),
    Action("reject {image} not good enough", "tester", "rejected"),
    Action("build {image}", "owner", "queued"),
    Action("promote {image} --yes", "owner", "promoted"),
    Action("rollback {image} --yes", "owner", "rolled back"),
    Action("freeze {image} release week", "owner", "froze"),
    Action("unfreeze {image}", "owner", "unfroze"),
]


def _arrange(rt, image: str) -> None:  # type: ignore[no-untyped-def]
    """production v2, fallback v1, staging v3 approved by a second tester."""
    in_production(rt, image, "v1", "v2")
    published(rt, image, "v3")
    rt.nbenv.handle(TESTER2, f"approve {image}")


@pytest.mark.parametrize("action", ACTIONS, ids=lambda a: a.text.split()[0] + a.text[7:])
def test_each_role_is_allowed_or_refused(
    server: BotServer, rt, image: str, slack: FakeSlackApi, action: Action
) -> None:  # type: ignore[no-untyped-def]
    _arrange(rt, image)
    if action.text.startswith("unfreeze"):
        rt.nbenv.handle(OWNER, f"freeze {image} for the unfreeze test")
    text = action.text.format(image=image)
    allowed = [u for u, role in PEOPLE.items() if role and RANK[role] >= RANK[action.needs]]
    refused = [u for u in PEOPLE if u not in allowed]
    state = pointers(rt, image)

    for user in refused:
        entries = len(audit(rt, image))
        shown = ask(server, slack, user, text)
        assert shown.startswith("⚠️"), (user, shown)
        if user == STRANGER:
            assert f"unknown user {STRANGER}" in shown
            assert len(audit(rt, image)) == entries  # bad input: nothing at all
        else:
            role = PEOPLE[user]
            has = f"you are a {role}" if role else "you are not in team nlp"
            assert f"needs the {action.needs} role in team nlp; {has}" in shown
            refusal = audit(rt, image)[-1]
            assert (refusal.actor, refusal.outcome) == (user, "refused")
            assert len(audit(rt, image)) == entries + 1
        assert pointers(rt, image) == state

    # The least entitled first: an owner's success must not hide a user's refusal.
    for user in sorted(allowed, key=lambda u: RANK[PEOPLE[u] or "user"]):
        shown = ask(server, slack, user, text)
        assert not shown.startswith("⚠️"), (user, shown)
        assert action.success.format(image=image) in shown, (user, shown)
