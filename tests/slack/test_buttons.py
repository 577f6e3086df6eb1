"""Buttons and dialogs over HTTP: Approve / Reject (with its dialog) in build threads,
Promote and Roll back with a confirmation that carries the state it showed, roles
checked at press time, stale presses refused with the current state, and user text
that cannot make the bot mention anyone or post a link."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import OWNER, TESTER, TESTER2, USER
from tests.slack.bot import (
    BotServer,
    audit,
    blocks_text,
    buttons,
    channel_messages,
    in_production,
    pointers,
    published,
    wait_message,
    wait_response,
)
from tests.support.slack_api import FakeSlackApi, Message

INJECTION = "<!channel> <@U01OWNER> go to <https://evil.example|free money> &amp; now"


def _root(slack: FakeSlackApi, commit: str, image: str) -> Message:
    return wait_message(slack, f"`{commit[:7]}` is now in staging for {image}")


def _press(
    server: BotServer, slack: FakeSlackApi, user: str, message: Message | dict, label: str
) -> dict[str, Any]:
    """Press LABEL on MESSAGE as USER; the private answer that comes back."""
    blocks = message.blocks if isinstance(message, Message) else message["blocks"]
    element = buttons({"blocks": blocks})[label]
    url = slack.response_url(f"press-{user}-{label}-{time.monotonic_ns()}")
    answer = server.action(
        user, element, response_url=url, message=message if isinstance(message, Message) else None
    )
    assert answer.status == 200
    assert answer.text == ""  # the ack itself is empty: answers come later, privately
    return wait_response(slack, url)


def test_approve_button_records_the_approval_in_the_thread(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    root = _root(slack, commit, image)

    answer = _press(server, slack, TESTER, root, "Approve")

    assert f"approved `{commit[:7]}`" in blocks_text(answer)
    assert answer["replace_original"] is False
    reply = wait_message(slack, f"<@{TESTER}> approved `{commit[:7]}`")
    assert reply.thread_ts == root.ts
    assert "Promote" in buttons({"blocks": reply.blocks})  # policy met: owners may promote


def test_roles_are_checked_when_the_button_is_pressed(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    root = _root(slack, commit, image)

    answer = _press(server, slack, USER, root, "Approve")

    assert "approve on " + image + " needs the tester role" in blocks_text(answer)
    assert answer["response_type"] == "ephemeral"
    with rt.store.read() as tx:
        assert tx.approvals.standing(image, commit) == []
    assert audit(rt, image)[-1].outcome == "refused"


def test_reject_asks_why_in_a_dialog_and_escapes_the_reason(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    root = _root(slack, commit, image)
    opened = len(slack.calls("views.open"))

    element = buttons({"blocks": root.blocks})["Reject"]
    url = slack.response_url(f"reject-{image}")
    assert server.action(TESTER, element, response_url=url, message=root).status == 200
    view = slack.wait_for("views.open", opened + 1)[-1].response["view"]

    assert f"Reject `{commit[:7]}` of *{image}*" in blocks_text(view)
    empty = server.submit(TESTER, view, {"reason": {"reason_input": {"value": "   "}}})
    assert empty.json["response_action"] == "errors"
    assert "reason" in empty.json["errors"]
    with rt.store.read() as tx:
        assert tx.approvals.standing(image, commit) == []

    done = server.submit(TESTER, view, {"reason": {"reason_input": {"value": INJECTION}}})

    assert done.status == 200 and done.text == ""  # the dialog closes
    reply = wait_message(slack, "rejected")
    assert reply.thread_ts == root.ts
    shown = blocks_text({"blocks": reply.blocks, "text": reply.text})
    for raw in ("<!channel>", "<@U01OWNER>", "<https://evil.example|free money>"):
        assert raw not in shown and raw not in reply.text
    assert "&lt;!channel&gt;" in shown
    assert "&amp;amp; now" in shown
    with rt.store.read() as tx:
        (verdict,) = tx.approvals.standing(image, commit)
    assert (verdict.user, verdict.approved, verdict.reason) == (TESTER, False, INJECTION)


def test_reject_button_refuses_a_user_without_opening_the_dialog(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    root = _root(slack, commit, image)
    opened = len(slack.calls("views.open"))

    answer = _press(server, slack, USER, root, "Reject")

    assert "reject on " + image + " needs the tester role" in blocks_text(answer)
    assert len(slack.calls("views.open")) == opened
    assert audit(rt, image)[-1].outcome == "refused"


def test_promote_button_confirms_with_the_plan(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    root = _root(slack, commit, image)
    _press(server, slack, TESTER, root, "Approve")
    approval = wait_message(slack, f"<@{TESTER}> approved `{commit[:7]}`")

    plan = _press(server, slack, OWNER, approval, "Promote")

    assert f"production: `—` → `{commit[:7]}`" in blocks_text(plan)
    assert pointers(rt, image)["production"] is None
    done = _press(server, slack, OWNER, plan, "Promote to production")
    assert f"promoted `{commit[:7]}`" in blocks_text(done)
    assert done["replace_original"] is True
    assert pointers(rt, image)["production"] == commit


def test_a_stale_confirmation_is_refused_with_the_current_state(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    (v1,) = in_production(rt, image, "v1")
    v2 = published(rt, image, "v2")
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"stale-{image}")
    server.slash(OWNER, f"promote {image}", response_url=url)
    plan = wait_response(slack, url)
    # Meanwhile v3 arrives, is approved and promoted from somewhere else.
    v3 = published(rt, image, "v3")
    rt.nbenv.handle(TESTER2, f"approve {image}")
    rt.nbenv.handle(OWNER, f"promote {image}")
    before = pointers(rt, image)

    answer = _press(server, slack, OWNER, plan, "Promote to production")

    shown = blocks_text(answer)
    assert "changed since this was shown" in shown
    assert f"production `{v3[:7]}`" in shown and f"fallback `{v1[:7]}`" in shown
    assert "Nothing was changed" in shown
    assert pointers(rt, image) == before == {"staging": v3, "production": v3, "fallback": v1}
    assert v2 not in before.values()
    refusal = audit(rt, image)[-1]  # the refused confirmation is on record too
    assert (refusal.actor, refusal.action, refusal.outcome) == (OWNER, "promote", "refused")


def test_a_promote_button_for_a_sha_that_left_staging_is_stale(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    v1 = published(rt, image, "v1")
    _press(server, slack, TESTER, _root(slack, v1, image), "Approve")
    old_approval = wait_message(slack, f"approved `{v1[:7]}`")
    v2 = published(rt, image, "v2")

    answer = _press(server, slack, OWNER, old_approval, "Promote")

    shown = blocks_text(answer)
    assert f"`{v1[:7]}` is no longer in staging" in shown
    assert f"it is `{v2[:7]}` now" in shown
    assert "Promote to production" not in shown
    assert pointers(rt, image)["production"] is None


def test_roll_back_button_on_the_promotion_asks_then_rolls_back(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = in_production(rt, image, "v1", "v2")
    announcement = wait_message(slack, f"promoted `{v2[:7]}` to production of {image}")

    refused = _press(server, slack, TESTER, announcement, "Roll back")
    assert "rollback on " + image + " needs the owner role" in blocks_text(refused)

    plan = _press(server, slack, OWNER, announcement, "Roll back")
    assert f"production: `{v2[:7]}` → `{v1[:7]}`" in blocks_text(plan)
    cancelled = _press(server, slack, OWNER, plan, "Cancel")
    assert "Cancelled" in blocks_text(cancelled) and cancelled["replace_original"] is True
    assert pointers(rt, image)["production"] == v2

    done = _press(server, slack, OWNER, plan, "Roll back production")
    assert "rolled back production" in blocks_text(done)
    assert pointers(rt, image)["production"] == v1
    revoked = wait_message(slack, f"`{v2[:7]}` was rolled back and revoked")
    assert revoked.thread_ts is not None


def test_a_confirmation_pressed_by_someone_else_is_checked_again(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"other-{image}")
    server.slash(OWNER, f"promote {image}", response_url=url)
    plan = wait_response(slack, url)

    answer = _press(server, slack, TESTER, plan, "Promote to production")

    assert "promote on " + image + " needs the owner role" in blocks_text(answer)
    assert pointers(rt, image)["production"] is None


def test_injection_in_names_and_commands_is_refused_and_never_echoed_raw(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    before = audit(rt, image)
    for text in (
        "status <!channel>",
        f"instance {image} --name <!here>",
        "<!everyone>",
        f"rollback {image} --to <https://evil.example|x>",
    ):
        answer = server.slash(USER, text)
        assert answer.shown.startswith("⚠️"), text
        assert "<!" not in answer.shown and "<http" not in answer.shown, answer.shown
    assert audit(rt, image) == before


def test_injection_in_a_freeze_reason_is_escaped_in_the_channel(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    answer = server.slash(OWNER, f"freeze {image} {json.dumps(INJECTION)}")

    assert "<!channel>" not in answer.shown
    message = wait_message(slack, f"froze {image}")
    assert "<!channel>" not in message.text and "&lt;!channel&gt;" in message.text
    assert "<https://evil.example" not in message.text
    assert len(channel_messages(slack, f"froze {image}")) == 1
