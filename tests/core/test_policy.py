"""The approval policy itself, without a store: verdicts in, a decision out."""

from __future__ import annotations

from bot.domain.policy import (
    TeamRoles,
    Verdict,
    check_policy,
    kept_by_revocation,
    standing_verdicts,
)

ROLES = TeamRoles(
    owners=frozenset({"U01OWNER"}),
    testers=frozenset({"U02TESTER", "U03TESTER"}),
    users=frozenset({"U06USER"}),
)


def verdict(user: str, approved: bool, reason: str | None = None) -> Verdict:
    return Verdict(user, approved, reason, "2026-11-28T09:00:00.000000Z")


def policy(history: list[Verdict], required: int = 1):
    return check_policy(
        standing_verdicts(history),
        required=required,
        roles=ROLES,
        promoter="U01OWNER",
        owner_approval_counts=False,
    )


def after_revocation(history: list[Verdict]) -> list[Verdict]:
    return [v for v, kept in zip(history, kept_by_revocation(history), strict=True) if kept]


def test_a_persons_latest_word_is_the_one_that_counts():
    history = [verdict("U02TESTER", False, "hangs"), verdict("U02TESTER", True)]
    assert standing_verdicts(history) == [history[1]]
    check = policy(history)
    assert check.met and check.counted == ("U02TESTER",) and not check.rejections


def test_revocation_voids_approvals():
    history = [verdict("U02TESTER", True), verdict("U03TESTER", True)]
    assert kept_by_revocation(history) == [False, False]
    check = policy(after_revocation(history))
    assert not check.approvals_met and check.counted == ()


def test_revocation_does_not_resurrect_a_withdrawn_rejection():
    history = [verdict("U02TESTER", False, "hangs"), verdict("U02TESTER", True)]
    assert kept_by_revocation(history) == [False, False]
    check = policy(after_revocation(history))
    assert check.rejections == ()
    assert "rejected" not in check.summary()


def test_revocation_keeps_an_open_rejection():
    history = [
        verdict("U02TESTER", True),
        verdict("U02TESTER", False, "GPU kernels crash"),
        verdict("U03TESTER", True),
    ]
    assert kept_by_revocation(history) == [False, True, False]
    check = policy(after_revocation(history))
    assert [v.reason for v in check.rejections] == ["GPU kernels crash"]
    assert check.counted == ()


def test_a_fresh_approval_after_revocation_counts_again():
    history = after_revocation([verdict("U02TESTER", False, "x"), verdict("U02TESTER", True)])
    history.append(verdict("U03TESTER", True))
    assert policy(history).met
