"""Every /nbenv subcommand over real HTTP: what the person sees, what the channel sees, and
what changed in the store."""

from __future__ import annotations

import json

from bot.domain.command_table import USAGE
from tests.conftest import OWNER, TESTER, TESTER2, USER
from tests.slack.bot import (
    STRANGER,
    BotServer,
    ask,
    audit,
    blocks_text,
    buttons,
    in_production,
    pointers,
    published,
    sha,
    wait_message,
    wait_response,
)
from tests.support.slack_api import FakeSlackApi


def _jobs(rt, kind: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    from sqlalchemy import select

    from bot.store import tables as t

    with rt.store.read() as tx:
        rows = tx.connection.execute(select(t.jobs).where(t.jobs.c.kind == kind))
        return [dict(row._mapping) for row in rows]


def test_help_lists_every_command(server: BotServer) -> None:
    answer = server.slash(USER, "help")
    assert answer.status == 200
    assert answer.json["response_type"] == "ephemeral"
    for usage in USAGE.values():
        assert f"/nbenv {usage}" in answer.shown
    assert server.slash(USER, "").shown == answer.shown  # bare /nbenv is help too
    assert server.slash(STRANGER, "help").shown == answer.shown  # anyone may ask


def test_status_of_one_image_of_all_and_as_json(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)

    ack = server.slash(USER, f"status {image}")
    assert (ack.status, ack.text) == (200, "")  # acked at once; the answer follows
    one = ask(server, slack, USER, f"status {image}")
    assert f"staging: `{commit[:7]}`" in one
    assert "production: —" in one

    everything = ask(server, slack, USER, "status")
    assert f"*{image}*" in everything
    assert "vision.pytorch-gpu" not in everything  # not U06USER's team

    as_json = ask(server, slack, USER, f"status {image} --json")
    data = json.loads(as_json.strip("`"))
    assert data["image"] == image
    assert data["environments"]["staging"]["sha"] == commit
    assert data["environments"]["production"] is None
    assert data["frozen"] is False


def test_versions_show_test_results(server: BotServer, rt, image: str, slack: FakeSlackApi) -> None:  # type: ignore[no-untyped-def]
    good = published(rt, image, "good")
    bad = published(rt, image, "bad", passed=False)

    shown = ask(server, slack, TESTER, f"versions {image}")

    assert f"`{good[:7]}` [staging] tests passed" in shown
    assert f"`{bad[:7]}` TESTS FAILED" in shown


def test_versions_come_a_page_at_a_time_and_older_ones_replace_the_answer(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    shas = {published(rt, image, f"v{n}") for n in range(23)}
    url = slack.response_url(f"pages-{image}")
    server.slash(TESTER, f"versions {image}", response_url=url)

    first = wait_response(slack, url)
    shown_first = {s for s in shas if f"`{s[:7]}`" in blocks_text(first)}
    assert len(shown_first) == 20 and "3 older" in blocks_text(first)
    older = buttons(first)["Older (3 more)"]

    pressed = slack.response_url(f"pages-older-{image}")
    assert server.action(TESTER, older, response_url=pressed).status == 200
    second = wait_response(slack, pressed)
    shown_second = {s for s in shas if f"`{s[:7]}`" in blocks_text(second)}
    assert second["replace_original"] is True  # the next page takes the place of this one
    assert shown_first | shown_second == shas and not shown_first & shown_second
    assert not [label for label in buttons(second) if label.startswith("Older")]


def test_a_forged_page_cursor_is_refused_in_one_line(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    shown = ask(server, slack, USER, f"history {image} --before not-a-cursor")
    assert "not a page cursor of `history`" in shown
    assert "Traceback" not in shown


def test_history_lists_what_happened(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = in_production(rt, image, "v1", "v2")

    shown = ask(server, slack, USER, f"history {image}")  # newest first
    assert shown.index("promote") < shown.index("approve") < shown.index("publish")
    at_v1 = ask(server, slack, USER, f"history {image} {v1[:9]}")
    assert f"at `{v1[:7]}`" in at_v1
    # v2 appears only where it moved v1: out of staging, then out of production.
    assert f"approve `{v2[:7]}`" not in at_v1
    assert f"publish `{v2[:7]}` (staging `{v1[:7]}` → `{v2[:7]}`)" in at_v1
    assert f"(fallback — → `{v1[:7]}`, production `{v1[:7]}` → `{v2[:7]}`)" in at_v1


def test_build_is_queued_with_where_to_answer(server: BotServer, rt, image: str, slack) -> None:  # type: ignore[no-untyped-def]
    url = slack.response_url(f"build-{image}")

    answer = server.slash(OWNER, f"build {image} feature/x", response_url=url)

    assert f"build of {image} at `feature/x` queued" in answer.shown
    (job,) = [j for j in _jobs(rt, "build") if j["payload"]["image"] == image]
    assert job["payload"] == {
        "image": image,
        "ref": "feature/x",
        "actor": OWNER,
        "reply_to": url,
    }
    assert [e.action for e in audit(rt, image)] == ["build"]


def test_a_promotion_the_previous_version_queued_is_still_answered(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    """Jobs queued before an upgrade name where to answer by Slack's word: they still
    run, and whoever asked still hears how it went."""
    commit = published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    url = slack.response_url(f"old-{image}")
    key = f"old-{image}"
    with rt.store.write(audited=False) as tx:  # `/nbenv promote IMAGE --yes`, as queued before
        tx.jobs.enqueue(
            f"slack:{key}",
            "slack",
            {
                "mode": "run",
                "actor": OWNER,
                "command": {"name": "promote", "image": image, "confirmed": True},
                "key": key,
                "response_url": url,
            },
        )

    assert f"promoted `{commit[:7]}`" in blocks_text(wait_response(slack, url))
    assert pointers(rt, image)["production"] == commit


def test_approve_and_reject_from_the_command_line(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)

    approved = server.slash(TESTER, f"approve {image}")
    rejected = server.slash(TESTER2, f"reject {image} {commit[:8]} breaks the tokenizer")

    assert f"approved `{commit[:7]}`" in approved.shown
    assert "rejected" in rejected.shown and "breaks the tokenizer" in rejected.shown
    root = wait_message(slack, f"now in staging for {image}")
    reply = wait_message(slack, "breaks the tokenizer")
    assert reply.thread_ts == root.ts  # in the thread of the SHA concerned
    with rt.store.read() as tx:
        verdicts = {v.user: v.approved for v in tx.approvals.standing(image, commit)}
    assert verdicts == {TESTER: True, TESTER2: False}


def test_promote_shows_the_plan_then_promotes_when_confirmed(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    (v1,) = in_production(rt, image, "v1")
    v2 = published(rt, image, "v2")
    rt.nbenv.handle(TESTER, f"approve {image}")
    with rt.store.write() as tx:  # someone works on an instance of the current production
        tx.instances.add(
            name="ana-prod",
            image=image,
            env="production",
            sha=v1,
            requested_by=USER,
            backend="local",
            url=None,
            state="running",
            details={},
        )
    url = slack.response_url(f"promote-{image}")

    ack = server.slash(OWNER, f"promote {image}", response_url=url)

    assert "preparing the plan" in ack.shown
    assert pointers(rt, image)["production"] == v1  # nothing happens before the confirmation
    plan = wait_response(slack, url)
    shown = blocks_text(plan)
    assert plan["response_type"] == "ephemeral"
    assert f"production: `{v1[:7]}` → `{v2[:7]}`" in shown
    assert f"fallback: `—` → `{v1[:7]}`" in shown
    assert f"1/1 — <@{TESTER}>" in shown
    assert f"`{v1[:7]}` (production now, fallback next): <@{USER}>" in shown
    assert "Base image and packages" in shown

    confirm = buttons(plan)["Promote to production"]
    press_url = slack.response_url(f"promote-press-{image}")
    assert server.action(OWNER, confirm, response_url=press_url).status == 200

    done = wait_response(slack, press_url)
    assert done["replace_original"] is True
    assert f"promoted `{v2[:7]}` to production" in blocks_text(done)
    assert pointers(rt, image) == {"staging": v2, "production": v2, "fallback": v1}
    announcement = wait_message(slack, f"promoted `{v2[:7]}` to production of {image}")
    root = wait_message(slack, f"`{v2[:7]}` is now in staging for {image}")
    assert announcement.thread_ts == root.ts
    assert "Roll back" in buttons({"blocks": announcement.blocks})


def test_promote_dry_run_and_yes(server: BotServer, rt, image: str, slack) -> None:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    dry_url = slack.response_url(f"dry-{image}")

    server.slash(OWNER, f"promote {image} --dry-run", response_url=dry_url)
    dry = blocks_text(wait_response(slack, dry_url))
    assert "Dry run — would promote" in dry
    assert pointers(rt, image)["production"] is None

    yes_url = slack.response_url(f"yes-{image}")
    server.slash(OWNER, f"promote {image} --yes", response_url=yes_url)
    assert f"promoted `{commit[:7]}`" in blocks_text(wait_response(slack, yes_url))
    assert pointers(rt, image)["production"] == commit


def test_rollback_asks_then_rolls_back_and_revokes(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = in_production(rt, image, "v1", "v2")
    url = slack.response_url(f"rollback-{image}")

    server.slash(OWNER, f"rollback {image} --reason 'OOM in training'", response_url=url)

    plan = wait_response(slack, url)
    shown = blocks_text(plan)
    assert f"production: `{v2[:7]}` → `{v1[:7]}`" in shown
    assert f"`{v2[:7]}` will be *revoked*" in shown
    assert "reason: OOM in training" in shown
    press_url = slack.response_url(f"rollback-press-{image}")
    server.action(OWNER, buttons(plan)["Roll back production"], response_url=press_url)
    assert "rolled back production" in blocks_text(wait_response(slack, press_url))
    assert pointers(rt, image)["production"] == v1
    with rt.store.read() as tx:
        assert tx.versions.get(image, v2).revoked


def test_rollback_to_an_earlier_sha(server: BotServer, rt, image: str, slack) -> None:  # type: ignore[no-untyped-def]
    v1, _v2, v3 = in_production(rt, image, "v1", "v2", "v3")
    url = slack.response_url(f"rollback-to-{image}")

    server.slash(OWNER, f"rollback {image} --to {v1[:10]} --yes", response_url=url)

    assert f"`{v3[:7]}` → `{v1[:7]}`" in blocks_text(wait_response(slack, url))
    assert pointers(rt, image)["production"] == v1


def test_instance_is_queued_with_where_to_answer(server: BotServer, rt, image: str, slack) -> None:  # type: ignore[no-untyped-def]
    (v1,) = in_production(rt, image, "v1")
    url = slack.response_url(f"instance-{image}")

    answer = server.slash(
        USER, f"instance {image} --name ana-{image.replace('.', '-')}", response_url=url
    )

    assert f"creating instance `ana-{image.replace('.', '-')}`" in answer.shown
    assert f"from production (`{v1[:7]}`)" in answer.shown
    (job,) = [j for j in _jobs(rt, "instance") if j["payload"]["image"] == image]
    assert job["payload"]["reply_to"] == url
    assert job["payload"]["sha"] == v1


def test_instances_lists_the_running_ones(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    (v1,) = in_production(rt, image, "v1")
    with rt.store.write() as tx:
        tx.instances.add(
            name=f"box-{image.replace('.', '-')}",
            image=image,
            env="production",
            sha=v1,
            requested_by=USER,
            backend="local",
            url="http://127.0.0.1:1/lab",
            state="running",
            details={},
        )

    shown = ask(server, slack, USER, f"instances {image}")

    assert f"`box-{image.replace('.', '-')}` {image} production `{v1[:7]}` running" in shown


def test_diff_answers_through_the_response_url(server: BotServer, rt, image: str, slack) -> None:  # type: ignore[no-untyped-def]
    v1 = published(rt, image, "v1")
    v2 = published(rt, image, "v2")
    url = slack.response_url(f"diff-{image}")

    ack = server.slash(USER, f"diff {image} {v1[:7]} {v2[:7]}", response_url=url)

    assert "working on `diff" in ack.shown
    shown = blocks_text(wait_response(slack, url))
    assert v1[:7] in shown and v2[:7] in shown


def test_freeze_blocks_promotion_until_unfreeze(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")

    frozen = server.slash(OWNER, f"freeze {image} quarterly release")
    url = slack.response_url(f"frozen-promote-{image}")
    server.slash(OWNER, f"promote {image} --yes", response_url=url)

    assert "froze" in frozen.shown
    assert "is frozen" in blocks_text(wait_response(slack, url))
    assert "unfroze" in server.slash(OWNER, f"unfreeze {image}").shown
    wait_message(slack, f"froze {image}: quarterly release")
    assert pointers(rt, image)["production"] is None


def test_bad_input_gets_a_one_line_private_error(server: BotServer, rt, image: str) -> None:  # type: ignore[no-untyped-def]
    cases = {
        "frobnicate": "unknown command 'frobnicate'",
        "status Not_An_Image!": "is not a valid image name",
        "status nlp.nope": "unknown image 'nlp.nope'",
        f"approve {image} zzzzzzz": "is not a commit SHA",
        f"promote {image} --force": "--force needs --reason",
        f"instance {image} --env moon": "unknown environment 'moon'",
        f'reject {image} "unbalanced': "could not read the command",
    }
    before = audit(rt, image)
    for text, expected in cases.items():
        answer = server.slash(OWNER, text)
        assert answer.status == 200
        assert answer.json["response_type"] == "ephemeral"
        assert expected in answer.shown, text
        assert answer.shown.startswith("⚠️")
        assert "\n" not in answer.shown
    assert audit(rt, image) == before
    assert sha(image, "v1")  # nothing was published either
    assert pointers(rt, image) == {"staging": None, "production": None, "fallback": None}
