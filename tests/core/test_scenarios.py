"""The flows of DESIGN.md §2, one scenario each, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.domain.errors import Refused
from bot.domain.names import Pipeline
from bot.store import tables as t
from tests.conftest import IMAGE, OWNER, TESTER, TESTER2, USER, history_of, sha_of

V1, V2, V3, V4 = (sha_of(f"v{i}") for i in range(1, 5))
PIPELINE = Pipeline("0f5e6a7b-1111-2222-3333-444455556666")

FAILED_REPORT = {
    "python": "3.11.7",
    "packages": [{"name": "keras", "version": "3.0.0"}],
    "notebooks": [
        {"path": "tests/1.ipynb", "status": "passed", "duration_s": 1.2, "failure": None},
        {
            "path": "tests/2.ipynb",
            "status": "failed",
            "duration_s": 0.8,
            "failure": {
                "cell": 3,
                "line": 2,
                "ename": "KeyError",
                "evalue": "'x'",
                "traceback": "KeyError: 'x'",
            },
        },
    ],
}
PASSED_REPORT = {
    **FAILED_REPORT,
    "notebooks": [dict(n, status="passed", failure=None) for n in FAILED_REPORT["notebooks"]],
}


def pointers(runtime) -> tuple[str | None, str | None, str | None]:
    envs = runtime.nbenv.handle(USER, f"status {IMAGE}").data["environments"]
    return tuple(envs[e]["sha"] if envs[e] else None for e in ("staging", "production", "fallback"))


def announcements(runtime) -> list[str]:
    with runtime.store.read() as tx:
        rows = tx.connection.execute(select(t.outbox).order_by(t.outbox.c.id))
        return [row.payload["text"] for row in rows]


def test_expected_path(runtime):
    # 1. The pipeline publishes a tested build of the staging branch.
    runtime.nbenv.publish(PIPELINE, IMAGE, V1, report=PASSED_REPORT, branch="staging")
    assert pointers(runtime) == (V1, None, None)
    # 2. The thread asks the testers, with Approve / Reject buttons.
    with runtime.store.read() as tx:
        prompt = tx.connection.execute(select(t.outbox).order_by(t.outbox.c.id)).first()
    assert prompt.thread_sha == V1
    assert [b["text"] for b in prompt.payload["buttons"]] == ["Approve", "Reject"]
    assert "<@U02TESTER>" in prompt.payload["text"]
    # 3. A tester approves; the owner sees the plan, then promotes.
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    plan = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run").data
    assert plan["approvals"]["approved_by"] == [TESTER]
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V1, V1, None)
    # The next version: the old production becomes fallback.
    runtime.nbenv.publish(PIPELINE, IMAGE, V2, report=PASSED_REPORT, branch="staging")
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V2, V2, V1)
    # 4. Users create instances from production, pinned to its SHA.
    created = runtime.nbenv.handle(USER, f"instance {IMAGE}").data
    assert (created["env"], created["sha"]) == ("production", V2)
    # Every action is on record against its SHA.
    history = history_of(runtime.nbenv, USER, f"history {IMAGE} {V2}")
    assert [h["action"] for h in history] == ["publish", "approve", "promote", "instance"]
    assert runtime.nbenv.verify_audit().ok


def test_automated_tests_fail_staging_untouched(runtime):
    runtime.nbenv.publish(PIPELINE, IMAGE, V1, report=PASSED_REPORT)
    with pytest.raises(Refused, match="failed its automated tests"):
        runtime.nbenv.publish(PIPELINE, IMAGE, V2, report=FAILED_REPORT)
    assert pointers(runtime) == (V1, None, None)
    version = {v["sha"]: v for v in runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}[
        V2
    ]
    assert version["tests_passed"] is False
    assert version["notebooks"] == {"passed": 1, "total": 2}
    with pytest.raises(Refused, match="failed its automated tests"):
        runtime.nbenv.handle(TESTER, f"approve {IMAGE} {V2}")


def test_tester_rejects_blocks_until_approval_or_forced_override(runtime):
    runtime.nbenv.publish(PIPELINE, IMAGE, V1)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(TESTER2, f"reject {IMAGE} {V1[:7]} tokenizer download hangs")
    with pytest.raises(Refused, match="tokenizer download hangs"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V1, None, None)
    runtime.nbenv.handle(OWNER, f"promote {IMAGE} --force --reason 'known, fixed upstream'")
    assert pointers(runtime) == (V1, V1, None)
    assert any("rejected" in text for text in announcements(runtime))


def test_production_broken_fallback_instance_then_rollback(runtime):
    for sha, tester in ((V1, TESTER), (V2, TESTER2)):
        runtime.nbenv.publish(PIPELINE, IMAGE, sha)
        runtime.nbenv.handle(tester, f"approve {IMAGE}")
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V2, V2, V1)
    # A user self-serves an instance from fallback, no owner involved.
    created = runtime.nbenv.handle(USER, f"instance {IMAGE} --env fallback").data
    assert (created["env"], created["sha"]) == ("fallback", V1)
    # The owner rolls back; the broken SHA is revoked.
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason 'GPU kernels crash'")
    assert pointers(runtime) == (V2, V1, V1)
    with pytest.raises(Refused, match="needs fresh approvals"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    texts = announcements(runtime)
    assert any("rolled back production" in text and "GPU kernels crash" in text for text in texts)


def test_fallback_missing_or_broken_rollback_to_an_earlier_version(runtime):
    for sha in (V1, V2, V3):
        runtime.nbenv.publish(PIPELINE, IMAGE, sha)
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V3, V3, V2)
    candidates = runtime.nbenv.handle(OWNER, f"versions {IMAGE}").data["items"]
    assert [c["sha"] for c in candidates if c["tests_passed"]] == [V3, V2, V1]
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --to {V1[:9]}")
    assert pointers(runtime) == (V3, V1, V2)


def test_freeze_then_unfreeze(runtime):
    runtime.nbenv.publish(PIPELINE, IMAGE, V1)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"freeze {IMAGE} release week")
    with pytest.raises(Refused, match="frozen"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(OWNER, f"unfreeze {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V1, V1, None)
    history = history_of(runtime.nbenv, USER, f"history {IMAGE}")
    assert [(h["action"], h["outcome"]) for h in history][-4:] == [
        ("freeze", "ok"),
        ("promote", "refused"),
        ("unfreeze", "ok"),
        ("promote", "ok"),
    ]


def _revoked_in_staging(runtime) -> None:
    """V1 in production, V2 promoted then rolled back: V2 revoked, still in staging."""
    for sha in (V1, V2):
        runtime.nbenv.publish(PIPELINE, IMAGE, sha)
        runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason 'GPU kernels crash'")
    assert pointers(runtime) == (V2, V1, V1)


def _shown_revoked(runtime) -> tuple[bool, bool, bool]:
    """Whether V2 is shown revoked by status (text and data) and by versions."""
    status = runtime.nbenv.handle(USER, f"status {IMAGE}")
    versions = runtime.nbenv.handle(USER, f"versions {IMAGE}")
    row = next(line for line in versions.text.splitlines() if f"`{V2[:7]}`" in line)
    return (
        "(revoked)" in status.text,
        status.data["environments"]["staging"]["revoked"],
        "REVOKED" in row,
    )


def test_a_fresh_approval_clears_the_revocation_in_every_view(runtime):
    _revoked_in_staging(runtime)
    assert _shown_revoked(runtime) == (True, True, True)
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE}")
    assert _shown_revoked(runtime) == (False, False, False)
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V2, V2, V1)
    status = runtime.nbenv.handle(USER, f"status {IMAGE}").text
    assert "revoked" not in status
    versions = {v["sha"]: v for v in runtime.nbenv.handle(USER, f"versions {IMAGE}").data["items"]}
    assert versions[V2]["revoked"] is False
    # The record keeps the revocation the approval ended.
    approval = history_of(runtime.nbenv, USER, f"history {IMAGE} {V2} --json")
    ended = [h for h in approval if h["details"].get("ends_revocation")]
    assert [h["actor"] for h in ended] == [TESTER2]
    assert ended[0]["details"]["ends_revocation"]["reason"] == "GPU kernels crash"


def test_revocation_does_not_bring_back_a_withdrawn_rejection(runtime):
    runtime.nbenv.publish(PIPELINE, IMAGE, V1)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.publish(PIPELINE, IMAGE, V2)
    runtime.nbenv.handle(TESTER, f"reject {IMAGE} tokenizer download hangs")
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")  # withdrawn: fixed upstream
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason 'GPU kernels crash'")
    status = runtime.nbenv.handle(USER, f"status {IMAGE}")
    assert "rejected" not in status.text
    assert status.data["approvals"]["rejected_by"] == []
    with pytest.raises(Refused) as refusal:
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert "needs fresh approvals" in refusal.value.message
    assert "rejected" not in refusal.value.message
    # Approved afresh, it goes back to production without --force.
    runtime.nbenv.handle(TESTER2, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert pointers(runtime) == (V2, V2, V1)


def test_an_open_rejection_survives_revocation(runtime):
    _revoked_in_staging(runtime)
    runtime.nbenv.handle(TESTER2, f"reject {IMAGE} still crashes")
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE} --force --reason 'hotfix needed'")
    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason 'crashes again'")
    status = runtime.nbenv.handle(USER, f"status {IMAGE}").data
    assert [r["user"] for r in status["approvals"]["rejected_by"]] == [TESTER2]
    assert status["approvals"]["approved_by"] == []


def test_history_of_a_sha_shows_every_event_concerning_it(runtime):
    _revoked_in_staging(runtime)
    history = runtime.nbenv.handle(USER, f"history {IMAGE} {V2}")
    actions = [(h["action"], h["sha"]) for h in history.data["items"][::-1]]  # oldest first
    # The rollback that revoked V2 is filed under its target V1, and shown for V2 too.
    assert actions == [
        ("publish", V2),
        ("approve", V2),
        ("promote", V2),
        ("rollback", V1),
    ]
    rollback_line = history.text.splitlines()[1]  # newest first
    assert f"revoked `{V2[:7]}`" in rollback_line and "GPU kernels crash" in rollback_line
    # V1 was moved to fallback by V2's promotion: that concerns V1 as well.
    v1 = [(h["action"], h["sha"]) for h in history_of(runtime.nbenv, USER, f"history {IMAGE} {V1}")]
    assert ("promote", V2) in v1 and ("rollback", V1) in v1
