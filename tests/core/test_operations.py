"""Each operation's effect and each refusal, role by role, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bot.domain.commands import Promote
from bot.domain.errors import BadInput, Refused
from bot.domain.names import Pipeline
from tests.conftest import (
    IMAGE,
    OWNER,
    STRANGER,
    TESTER,
    TESTER2,
    USER,
    VISION_OWNER,
    history_of,
    sha_of,
)

A, B, C = sha_of("a"), sha_of("b"), sha_of("c")


def envs(runtime, image: str = IMAGE) -> dict[str, str | None]:
    status = runtime.nbenv.handle(OWNER, f"status {image}").data
    return {env: (p["sha"] if p else None) for env, p in status["environments"].items()}


def last_audit(runtime):
    with runtime.store.read() as tx:
        return tx.audit.entries()[-1]


def audit_count(runtime) -> int:
    with runtime.store.read() as tx:
        return tx.audit.count()


def in_production(runtime, sha: str, image: str = IMAGE) -> None:
    """Publish, approve and promote SHA."""
    runtime.nbenv.publish(OWNER, image, sha)
    runtime.nbenv.handle(TESTER, f"approve {image}")
    runtime.nbenv.handle(OWNER, f"promote {image}")


def test_publish_points_staging_and_records_tested_version(runtime):
    reply = runtime.nbenv.publish(OWNER, IMAGE, A, subject="Bump keras")
    assert envs(runtime) == {"staging": A, "production": None, "fallback": None}
    assert "now in staging" in reply.text
    versions = runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]
    assert [(v["sha"], v["tests_passed"], v["subject"]) for v in versions] == [
        (A, True, "Bump keras")
    ]
    entry = last_audit(runtime)
    assert (entry.actor, entry.action, entry.sha, entry.outcome) == (OWNER, "publish", A, "ok")


def test_publish_of_a_failed_report_is_refused_and_staging_untouched(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    report = {
        "python": "3.11",
        "packages": [],
        "notebooks": [
            {
                "path": "tests/1.ipynb",
                "status": "failed",
                "duration_s": 1.0,
                "failure": {
                    "cell": 2,
                    "line": 1,
                    "ename": "KeyError",
                    "evalue": "'x'",
                    "traceback": "KeyError: 'x'",
                },
            }
        ],
    }
    with pytest.raises(Refused, match="failed its automated tests"):
        runtime.nbenv.publish(OWNER, IMAGE, B, report=report)
    assert envs(runtime)["staging"] == A
    versions = {v["sha"]: v for v in runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[B]["tests_passed"] is False
    assert last_audit(runtime).outcome == "refused"


@pytest.mark.parametrize("who", [TESTER, USER])
def test_publish_needs_owner(runtime, who):
    with pytest.raises(Refused, match="needs the owner role in team nlp"):
        runtime.nbenv.publish(who, IMAGE, A)
    assert envs(runtime)["staging"] is None


def test_approve_counts_towards_policy_and_promote_moves_production(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    reply = runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    assert reply.data["policy"]["met"] is True
    assert reply.data["policy"]["approved_by"] == [TESTER]
    promoted = runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime) == {"staging": A, "production": A, "fallback": None}
    assert "promoted" in promoted.text
    runtime.nbenv.publish(OWNER, IMAGE, B)
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE} {B[:7]}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime) == {"staging": B, "production": B, "fallback": A}


def test_promote_dry_run_changes_nothing_and_shows_the_plan(runtime):
    in_production(runtime, A)
    runtime.nbenv.publish(OWNER, IMAGE, B)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    before = audit_count(runtime)
    reply = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")
    changes = {c["env"]: (c["old"], c["new"]) for c in reply.data["changes"]}
    assert changes == {"production": (A, B), "fallback": (None, A)}
    assert "Dry run" in reply.text
    assert envs(runtime) == {"staging": B, "production": A, "fallback": None}
    assert audit_count(runtime) == before


@pytest.mark.parametrize("who", [TESTER, USER, VISION_OWNER])
def test_promote_refused_for_non_owners_and_audited(runtime, who):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    with pytest.raises(Refused, match="needs the owner role"):
        runtime.nbenv.handle(who, f"promote {IMAGE}")
    assert envs(runtime)["production"] is None
    entry = last_audit(runtime)
    assert (entry.actor, entry.action, entry.outcome) == (who, "promote", "refused")
    assert "owner role" in entry.details["reason"]


def test_promote_refusals_name_the_reason(runtime):
    with pytest.raises(Refused, match="nothing in staging"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.publish(OWNER, IMAGE, A)
    with pytest.raises(Refused, match="0 of 1 required approvals"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    with pytest.raises(Refused, match="already in production"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime)["production"] == A


def test_owner_own_approval_does_not_count_unless_configured(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(OWNER, f"approve {IMAGE}")
    with pytest.raises(Refused, match="Your own approval does not count"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.publish(OWNER, "nlp.self-approve", A)
    runtime.nbenv.handle(OWNER, "approve nlp.self-approve")
    runtime.nbenv.handle(OWNER, "promote nlp.self-approve")
    assert envs(runtime, "nlp.self-approve")["production"] == A


def test_policy_needs_distinct_testers(runtime):
    image = "nlp.two-approvals"
    runtime.nbenv.publish(OWNER, image, A)
    runtime.nbenv.handle(TESTER, f"approve {image}")
    again = runtime.nbenv.handle(TESTER, f"approve {image}")
    assert "already approved" in again.text
    with pytest.raises(Refused, match="1 of 2 required approvals"):
        runtime.nbenv.handle(OWNER, f"promote {image}")
    runtime.nbenv.handle(TESTER2, f"approve {image}")
    runtime.nbenv.handle(OWNER, f"promote {image}")
    assert envs(runtime, image)["production"] == A


def test_rejection_blocks_until_the_tester_approves(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(TESTER2, f"reject {IMAGE} pandas import fails")
    with pytest.raises(Refused, match=r"rejected by .*U03TESTER.*pandas import fails"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime)["production"] == A


def test_force_with_reason_overrides_a_rejection_and_is_recorded(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(TESTER2, f"reject {IMAGE} flaky")
    with pytest.raises(BadInput, match="--force needs --reason"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE} --force")
    runtime.nbenv.handle(OWNER, f'promote {IMAGE} --force --reason "security fix"')
    assert envs(runtime)["production"] == A
    entry = last_audit(runtime)
    assert entry.details["forced"] is True
    assert entry.details["reason"] == "security fix"
    assert entry.details["overridden_rejections"] == [TESTER2]


@pytest.mark.parametrize("who", [USER])
def test_approve_and_reject_need_tester(runtime, who):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    with pytest.raises(Refused, match="needs the tester role"):
        runtime.nbenv.handle(who, f"approve {IMAGE}")
    with pytest.raises(Refused, match="needs the tester role"):
        runtime.nbenv.handle(who, f"reject {IMAGE} no")
    assert runtime.nbenv.handle(OWNER, f"status {IMAGE}").data["approvals"]["approved_by"] == []


def test_rollback_restores_fallback_and_revokes_the_broken_sha(runtime):
    in_production(runtime, A)
    in_production(runtime, B)
    assert envs(runtime) == {"staging": B, "production": B, "fallback": A}
    runtime.nbenv.handle(OWNER, f'rollback {IMAGE} --reason "kernel dies"')
    assert envs(runtime) == {"staging": B, "production": A, "fallback": A}
    versions = {v["sha"]: v for v in runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[B]["revoked"] is True
    # Revoked: its earlier approval no longer counts.
    with pytest.raises(Refused, match=r"revoked .*needs fresh approvals"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime)["production"] == B


def test_rollback_refusals(runtime):
    with pytest.raises(Refused, match="nothing in production"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE}")
    in_production(runtime, A)
    with pytest.raises(Refused, match="no fallback"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE}")
    with pytest.raises(Refused, match="needs the owner role"):
        runtime.nbenv.handle(TESTER, f"rollback {IMAGE}")
    assert envs(runtime)["production"] == A


def test_rollback_to_a_tested_earlier_version_by_short_sha(runtime):
    in_production(runtime, A)
    in_production(runtime, B)
    in_production(runtime, C)
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to {A[:7]}")
    assert envs(runtime)["production"] == A
    assert envs(runtime)["fallback"] == B  # fallback is kept
    versions = {v["sha"]: v for v in runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[C]["revoked"] is True


def test_rollback_to_refuses_unknown_failed_and_ambiguous(runtime):
    in_production(runtime, A)
    with pytest.raises(BadInput, match="has no version starting with 1234567"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to 1234567")
    failed = {
        "python": "3",
        "packages": [],
        "notebooks": [{"path": "t.ipynb", "status": "error", "duration_s": 0, "failure": None}],
    }
    runtime.nbenv.record_version(OWNER, IMAGE, B, report=failed)
    with pytest.raises(Refused, match="failed its automated tests"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to {B}")
    twin_a = "abcdef1" + "0" * 33
    twin_b = "abcdef1" + "1" * 33
    runtime.nbenv.record_version(OWNER, IMAGE, twin_a, report=None)
    runtime.nbenv.record_version(OWNER, IMAGE, twin_b, report=None)
    with pytest.raises(BadInput, match="ambiguous"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to abcdef1")
    assert envs(runtime)["production"] == A


def test_freeze_blocks_promotion_and_rollback_to_but_not_plain_rollback(runtime):
    in_production(runtime, A)
    in_production(runtime, B)
    runtime.nbenv.publish(OWNER, IMAGE, C)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"freeze {IMAGE} quarterly close")
    with pytest.raises(Refused, match=r"frozen by .*quarterly close"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    with pytest.raises(Refused, match="frozen"):
        runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to {A}")
    with pytest.raises(Refused, match="already frozen"):
        runtime.nbenv.handle(OWNER, f"freeze {IMAGE} again")
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE}")  # the emergency exit stays open
    assert envs(runtime)["production"] == A
    status = runtime.nbenv.handle(USER, f"status {IMAGE}").data
    assert status["frozen"] is True and status["freeze"]["reason"] == "quarterly close"
    runtime.nbenv.handle(OWNER, f"unfreeze {IMAGE}")
    with pytest.raises(Refused, match="not frozen"):
        runtime.nbenv.handle(OWNER, f"unfreeze {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert envs(runtime)["production"] == C


@pytest.mark.parametrize("who", [TESTER, USER])
def test_freeze_needs_owner(runtime, who):
    with pytest.raises(Refused, match="needs the owner role"):
        runtime.nbenv.handle(who, f"freeze {IMAGE} because")
    assert runtime.nbenv.handle(OWNER, f"status {IMAGE}").data["frozen"] is False


def test_read_commands_for_users_and_not_for_outsiders(runtime):
    in_production(runtime, A)
    for text in (f"status {IMAGE}", f"versions {IMAGE}", f"history {IMAGE}"):
        assert runtime.nbenv.handle(USER, text).data
    # U05VTESTER is in team vision only: nlp's images are not theirs to read.
    with pytest.raises(Refused, match="you are not in team nlp"):
        runtime.nbenv.handle("U05VTESTER", f"status {IMAGE}")
    listed = [item["image"] for item in runtime.nbenv.handle(USER, "status").data]
    assert listed == ["nlp.keras-batch", "nlp.self-approve", "nlp.two-approvals"]
    assert [i["image"] for i in runtime.nbenv.handle("U05VTESTER", "status").data] == [
        "vision.pytorch-gpu"
    ]


def test_unknown_user_is_bad_input_and_changes_nothing(runtime):
    before = audit_count(runtime)
    with pytest.raises(BadInput, match="unknown user U09STRANGER"):
        runtime.nbenv.handle(STRANGER, f"status {IMAGE}")
    with pytest.raises(BadInput, match="not a Slack user ID"):
        runtime.nbenv.handle("bob", f"status {IMAGE}")
    assert audit_count(runtime) == before


def test_a_build_name_gives_no_one_the_pipelines_rights(runtime):
    """Only a Pipeline (made by the build relay, `nbenv publish --build-id`) acts as the
    pipeline; a string that merely reads `build:…` is no Slack user ID: bad input."""
    runtime.nbenv.publish(OWNER, IMAGE, A)
    with runtime.store.read() as tx:
        before = (tx.pointers.state(IMAGE), tx.freezes.get(IMAGE), tx.approvals.standing(IMAGE, A))
    count = audit_count(runtime)
    for impostor in ("build:evil", "build:0f5e6a7b"):
        for text in (f"freeze {IMAGE} takeover", f"approve {IMAGE}", f"promote {IMAGE} --yes"):
            with pytest.raises(BadInput, match="is not a Slack user ID"):
                runtime.nbenv.handle(impostor, text)
        with pytest.raises(BadInput, match="is not a Slack user ID"):
            runtime.nbenv.publish(impostor, IMAGE, B)
        with pytest.raises(BadInput, match="is not a Slack user ID"):
            runtime.nbenv.visible_images(impostor)
    with runtime.store.read() as tx:
        assert (
            tx.pointers.state(IMAGE),
            tx.freezes.get(IMAGE),
            tx.approvals.standing(IMAGE, A),
        ) == before
    assert audit_count(runtime) == count

    # The pipeline itself publishes, under its build's name.
    runtime.nbenv.publish(Pipeline("0f5e6a7b"), IMAGE, B)
    staging = runtime.nbenv.handle(USER, f"status {IMAGE}").data["environments"]["staging"]
    assert (staging["sha"], staging["updated_by"]) == (B, "build:0f5e6a7b")


def test_history_lists_every_action_and_refusal_against_the_sha(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    with pytest.raises(Refused):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    history = history_of(runtime.nbenv, USER, f"history {IMAGE} {A[:8]}")
    assert [(h["action"], h["outcome"]) for h in history] == [
        ("publish", "ok"),
        ("promote", "refused"),
        ("approve", "ok"),
        ("promote", "ok"),
    ]
    everything = history_of(runtime.nbenv, USER, f"history {IMAGE}")
    assert ("promote", "refused") in [(h["action"], h["outcome"]) for h in everything]
    # A refusal is filed under the SHA it concerned: staging's, for a promotion.
    refused = next(h for h in everything if h["outcome"] == "refused")
    assert refused["sha"] == A


def test_idempotency_key_makes_a_retry_a_no_op(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    first = runtime.nbenv.handle(OWNER, f"promote {IMAGE}", key="slack:retry-1")
    count = audit_count(runtime)
    again = runtime.nbenv.execute(OWNER, Promote(image=IMAGE), key="slack:retry-1")
    assert first.data["applied"] is True
    assert "retried" in again.text
    assert audit_count(runtime) == count


def test_publish_retried_with_its_key_has_one_effect(runtime):
    first = runtime.nbenv.publish(OWNER, IMAGE, A, key="publish:build-1")
    count = audit_count(runtime)
    again = runtime.nbenv.publish(OWNER, IMAGE, A, key="publish:build-1")
    assert first.data["applied"] is True
    assert again.data == {"retried": True}
    assert audit_count(runtime) == count
    assert envs(runtime)["staging"] == A


def _running_instance(runtime, name: str, owner: str, sha: str) -> None:
    with runtime.store.write(audited=False) as tx:
        tx.instances.add(
            name=name,
            image=IMAGE,
            env="production",
            sha=sha,
            requested_by=owner,
            backend="local",
            url=None,
            state="running",
            details={},
        )


@pytest.mark.parametrize("where", ["", f"{IMAGE} "])
def test_a_refused_stop_of_someone_elses_instance_is_on_the_images_record(runtime, where):
    in_production(runtime, A)
    _running_instance(runtime, "nlp-work", USER, A)
    with pytest.raises(Refused, match="only they or an owner"):
        runtime.nbenv.handle(TESTER2, f"instances {where}--stop nlp-work")
    for history in (
        runtime.nbenv.handle(OWNER, f"history {IMAGE}"),
        runtime.nbenv.handle(OWNER, f"history {IMAGE} {A}"),
    ):
        refused = [h for h in history.data["items"] if h["outcome"] == "refused"]
        assert [(h["actor"], h["action"], h["sha"]) for h in refused] == [(TESTER2, "instances", A)]
        assert refused[0]["details"]["command"]["stop"] == "nlp-work"
        line = history.text.splitlines()[1]  # newest first
        assert "(REFUSED)" in line and "belongs to <@U06USER>" in line
    with runtime.store.read() as tx:
        assert tx.instances.get("nlp-work")["state"] == "running"


@pytest.mark.parametrize("who", [OWNER, TESTER])
def test_a_refused_dry_run_is_audited_and_said_as_a_dry_run(runtime, who):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    before = audit_count(runtime)
    with pytest.raises(Refused) as refusal:
        runtime.nbenv.handle(who, f"promote {IMAGE} --dry-run")
    assert refusal.value.message.startswith(f"Dry run — promote {IMAGE} would be refused: ")
    assert audit_count(runtime) == before + 1
    entry = last_audit(runtime)
    assert (entry.actor, entry.action, entry.outcome) == (who, "promote", "refused")
    assert entry.details["command"] == {"dry_run": True}
    assert entry.details["reason"].startswith("Dry run")
    line = runtime.nbenv.handle(USER, f"history {IMAGE}").text.splitlines()[1]  # newest first
    assert "(REFUSED, dry run)" in line
    assert envs(runtime)["production"] is None


def test_history_renders_mentions_the_same_way_everywhere(
    runtime, config_file, db_url, monkeypatch, capsys
):
    from bot.cli import main

    runtime.nbenv.publish(OWNER, IMAGE, A)
    runtime.nbenv.handle(TESTER, f"reject {IMAGE} hangs & <!channel>")
    with pytest.raises(Refused, match="rejected by"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    text = runtime.nbenv.handle(USER, f"history {IMAGE}").text
    refused = text.splitlines()[1]  # newest first
    # In Slack: the person rejecting is a mention, as actors are; their words stay text.
    assert refused.startswith("• ") and "<@U01OWNER> promote" in refused
    assert "rejected by <@U02TESTER> (hangs &amp; &lt;!channel&gt;)" in refused
    assert "&lt;@" not in text and "&amp;amp;" not in text
    # In the terminal: every mention the same way, @ID.
    monkeypatch.setenv("NBENV_DATABASE_URL", db_url)
    assert main(["--config", str(config_file), "--as", USER, "history", IMAGE]) == 0
    out = capsys.readouterr().out.splitlines()[1]  # newest first
    assert "@U01OWNER promote" in out and "rejected by @U02TESTER (hangs & <!channel>)" in out
    assert "<@" not in out


def test_an_instance_that_fails_to_start_is_on_record_as_failed(db_url, config_file):
    from bot.bootstrap import build_runtime

    # As the operator: an unshared local instance reaches the backend, which fails it.
    runtime = build_runtime(str(config_file), db_url, run_by_operator=True)
    in_production(runtime, A)
    runtime.nbenv.handle(USER, f"instance {IMAGE} --name nlp-broken")
    runtime.worker.run_until_idle()  # A is no commit of any repository: it cannot start
    history = history_of(runtime.nbenv, USER, f"history {IMAGE} {A}")
    assert [(h["action"], h["outcome"]) for h in history][-2:] == [
        ("instance", "ok"),  # requested
        ("instance", "failed"),
    ]
    assert history[-1]["details"]["name"] == "nlp-broken" and history[-1]["details"]["reason"]


def test_status_says_how_long_ago_each_environment_moved(runtime):
    from datetime import timedelta

    from bot.service.nbenv import Nbenv
    from bot.slack.notifications import SlackNotifier
    from bot.store.uow import Store, utcnow

    in_production(runtime, A)
    now = runtime.nbenv.handle(USER, f"status {IMAGE}")
    assert "UTC (just now) by <@U01OWNER>" in now.text
    assert now.data["environments"]["production"]["age"] == "just now"
    later = Store(runtime.store.engine, clock=lambda: utcnow() + timedelta(hours=2, minutes=5))
    status = Nbenv(runtime.config, later, notifier=SlackNotifier()).handle(USER, f"status {IMAGE}")
    line = next(line for line in status.text.splitlines() if "production" in line)
    moved = status.data["environments"]["production"]["updated_at"]
    assert line == (
        f"• production: `{A[:7]}` since {moved[:10]} {moved[11:16]} UTC (2h ago) by <@U01OWNER>"
    )


def test_a_retry_whose_first_answer_was_lost_hears_what_happened(runtime):
    runtime.nbenv.publish(OWNER, IMAGE, A)
    first = runtime.nbenv.handle(TESTER, f"approve {IMAGE}", key="socket:envelope-1")
    count = audit_count(runtime)
    again = runtime.nbenv.handle(TESTER, f"approve {IMAGE}", key="socket:envelope-1")
    assert first.text.splitlines()[0] in again.text and "retried request" in again.text
    assert again.data == {"retried": True}
    assert audit_count(runtime) == count
