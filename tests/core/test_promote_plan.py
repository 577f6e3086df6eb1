"""plan_promote without a store: an image's state and the policy in, a plan or a refusal out."""

from __future__ import annotations

import pytest

from bot.domain.errors import Refused
from bot.domain.model import Freeze, ImageState, Pointer, Version
from bot.domain.names import Env
from bot.domain.operations import PointerChange, plan_promote
from bot.domain.policy import PolicyCheck, Verdict

IMAGE = "base"
OLD, NEW, OLDER = "a" * 40, "b" * 40, "c" * 40
APPROVED = PolicyCheck(required=1, counted=("U02TESTER",), not_counted=(), rejections=())


def state(
    *, staging: str | None, production: str | None, fallback: str | None = None, **more
) -> ImageState:
    shas = {Env.STAGING: staging, Env.PRODUCTION: production, Env.FALLBACK: fallback}
    pointers = {env: Pointer(env, sha, generation=3 if sha else 0) for env, sha in shas.items()}
    return ImageState(IMAGE, pointers, **more)


def version(sha: str, **more) -> Version:
    return Version(IMAGE, sha, True, "2026-11-28T09:00:00.000000Z", "U01OWNER", **more)


def rejected(reason: str | None = "kernels hang") -> PolicyCheck:
    verdict = Verdict("U03TESTER", False, reason, "2026-11-28T09:00:00.000000Z")
    return PolicyCheck(required=1, counted=("U02TESTER",), not_counted=(), rejections=(verdict,))


def test_promote_moves_production_to_staging_and_keeps_the_old_one_as_fallback():
    plan = plan_promote(state(staging=NEW, production=OLD), version(NEW), APPROVED)
    assert (plan.action, plan.sha) == ("promote", NEW)
    assert plan.changes == (
        PointerChange(Env.FALLBACK, None, OLD, expected_generation=0),
        PointerChange(Env.PRODUCTION, OLD, NEW, expected_generation=3),
    )
    assert plan.revoke is None
    assert plan.details == {
        "production": [OLD, NEW],
        "fallback": [None, OLD],
        "approvals": ["U02TESTER"],
    }


def test_the_first_promotion_has_no_fallback_to_keep():
    plan = plan_promote(state(staging=NEW, production=None), version(NEW), APPROVED)
    assert [(c.env, c.old, c.new) for c in plan.changes] == [(Env.PRODUCTION, None, NEW)]
    assert plan.details["fallback"] == [None, None]


def test_a_fallback_equal_to_the_old_production_is_not_moved():
    plan = plan_promote(state(staging=NEW, production=OLD, fallback=OLD), version(NEW), APPROVED)
    assert [c.env for c in plan.changes] == [Env.PRODUCTION]


@pytest.mark.parametrize(
    ("staging", "production", "message"),
    [
        (None, OLD, "base has nothing in staging to promote"),
        (OLD, OLD, "aaaaaaa is already in production for base"),
    ],
)
def test_nothing_to_promote_is_refused(staging, production, message):
    with pytest.raises(Refused, match=message):
        plan_promote(
            state(staging=staging, production=production),
            version(staging) if staging else None,
            APPROVED,
        )


def test_a_frozen_image_is_not_promoted_even_when_forced():
    frozen = state(
        staging=NEW,
        production=OLD,
        freeze=Freeze("release week", "U01OWNER", "2026-11-28T09:00:00.000000Z"),
    )
    with pytest.raises(Refused, match=r"frozen by <@U01OWNER> \(release week\).*unfreeze base"):
        plan_promote(frozen, version(NEW), rejected(), force=True, reason="hotfix")


def test_a_rejection_blocks_promotion_and_says_who_and_why():
    with pytest.raises(Refused, match=r"rejected by <@U03TESTER> \(kernels hang\)"):
        plan_promote(state(staging=NEW, production=OLD), version(NEW), rejected())


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_force_needs_a_reason(reason):
    with pytest.raises(Refused, match="--force needs --reason R"):
        plan_promote(
            state(staging=NEW, production=OLD), version(NEW), rejected(), force=True, reason=reason
        )


def test_force_with_a_reason_overrides_a_rejection_and_records_it():
    plan = plan_promote(
        state(staging=NEW, production=OLD), version(NEW), rejected(), force=True, reason="hotfix"
    )
    assert plan.change(Env.PRODUCTION).new == NEW
    assert plan.details["forced"] is True
    assert plan.details["reason"] == "hotfix"
    assert plan.details["overridden_rejections"] == ["U03TESTER"]


def test_too_few_approvals_are_refused_with_the_count():
    short = PolicyCheck(required=2, counted=("U02TESTER",), not_counted=(), rejections=())
    with pytest.raises(Refused, match=r"bbbbbbb of base has 1 of 2 required approvals\.$"):
        plan_promote(state(staging=NEW, production=OLD), version(NEW), short)


def test_too_few_approvals_say_when_the_promoters_own_does_not_count():
    own = PolicyCheck(required=1, counted=(), not_counted=("U01OWNER",), rejections=())
    with pytest.raises(Refused, match=r"Your own approval does not count for base\."):
        plan_promote(state(staging=NEW, production=OLD), version(NEW), own)


def test_a_revoked_version_is_said_to_need_fresh_approvals():
    revoked = version(NEW, revoked_at="2026-11-28T10:00:00.000000Z", revoked_reason="crashes")
    none = PolicyCheck(required=1, counted=(), not_counted=(), rejections=())
    with pytest.raises(Refused, match=r"It was revoked \(crashes\) and needs fresh approvals"):
        plan_promote(state(staging=NEW, production=OLDER), revoked, none)
