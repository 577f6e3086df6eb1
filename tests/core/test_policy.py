"""The approval policy itself, without a store: verdicts in, a decision out."""

from __future__ import annotations

import pytest

from bot.domain.errors import Refused
from bot.domain.policy import (
    EVERYONE,
    Role,
    TeamRoles,
    Verdict,
    check_policy,
    kept_by_revocation,
    require_role,
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


def check(history: list[Verdict], *, roles: TeamRoles = ROLES, **options):
    settings = {"required": 1, "promoter": "U01OWNER", "owner_approval_counts": False}
    return check_policy(standing_verdicts(history), roles=roles, **{**settings, **options})


def test_only_testers_and_owners_count_and_only_their_rejections_block():
    history = [
        verdict("U06USER", True),
        verdict("U06USER", False, "looks odd"),
        verdict("U99GONE", False, "left the team"),
        verdict("U99GONE", True),
    ]
    result = check(history)
    assert (result.counted, result.rejections, result.met) == ((), (), False)


def test_someone_removed_from_the_team_no_longer_vouches_for_the_version():
    history = [verdict("U02TESTER", True)]
    assert check(history).met
    smaller = TeamRoles(owners=ROLES.owners, testers=frozenset({"U03TESTER"}), users=ROLES.users)
    assert not check(history, roles=smaller).met


def test_the_promoters_own_approval_counts_only_when_the_image_allows_it():
    history = [verdict("U01OWNER", True)]
    assert (check(history).counted, check(history).not_counted) == ((), ("U01OWNER",))
    allowed = check(history, owner_approval_counts=True)
    assert allowed.met and allowed.counted == ("U01OWNER",)
    # Another owner's approval counts: the rule is about one's own promotion.
    assert check(history, promoter="U07OTHER").counted == ("U01OWNER",)


def test_the_required_number_of_distinct_approvers():
    history = [verdict("U02TESTER", True), verdict("U02TESTER", True), verdict("U03TESTER", True)]
    assert check(history, required=2).met
    assert not check(history, required=3).approvals_met


def test_a_rejection_blocks_however_many_approve():
    history = [verdict("U02TESTER", True), verdict("U03TESTER", False, "GPU kernels crash")]
    result = check(history)
    assert result.approvals_met and not result.met
    assert result.summary() == "1/1 approvals (<@U02TESTER>); rejected by <@U03TESTER>"


def test_everyone_as_testers_lets_anyone_approve():
    open_team = TeamRoles(owners=ROLES.owners, testers=frozenset({EVERYONE}), users=frozenset())
    assert check([verdict("U42ANYONE", True)], roles=open_team).counted == ("U42ANYONE",)


def test_require_role_says_what_is_missing():
    assert require_role(ROLES, "U01OWNER", Role.TESTER, action="approve", image="b", team="t")
    with pytest.raises(
        Refused, match="promote on b needs the owner role in team t; you are a tester"
    ):
        require_role(ROLES, "U02TESTER", Role.OWNER, action="promote", image="b", team="t")
    with pytest.raises(Refused, match="you are not in team t"):
        require_role(ROLES, "U42NOBODY", Role.USER, action="status", image="b", team="t")
