"""Testers' verdicts: approve and reject a version."""

from __future__ import annotations

from typing import Any

from bot.domain.commands import Approve, Reject
from bot.domain.errors import Refused
from bot.domain.names import Env, short
from bot.domain.notifications import Act, Offer
from bot.domain.text import escape, mention
from bot.service import render
from bot.service.context import Asked, Context
from bot.service.replies import Reply
from bot.store.uow import Tx


def approve(ctx: Context, asked: Asked[Approve]) -> Reply:
    return _verdict(ctx, asked.actor, asked.command, asked.key)


def reject(ctx: Context, asked: Asked[Reject]) -> Reply:
    return _verdict(ctx, asked.actor, asked.command, asked.key)


def _target_sha(tx: Tx, image: str, ref: str | None) -> str:
    if ref:
        return tx.versions.resolve_sha(image, ref)
    staging = tx.pointers.state(image).sha(Env.STAGING)
    if staging is None:
        raise Refused(f"{image} has nothing in staging to approve or reject")
    return staging


def _verdict(ctx: Context, actor: str, command: Approve | Reject, key: str | None) -> Reply:
    image = command.image
    approved = isinstance(command, Approve)
    reason = None if approved else command.reason
    with ctx.write(key) as tx:
        if tx is None:
            return Reply("already recorded (retried request)")
        sha = _target_sha(tx, image, command.sha)
        version = tx.versions.get(image, sha)
        assert version is not None  # resolved from the versions
        if approved and not version.tests_passed:
            raise Refused(f"{short(sha)} of {image} failed its automated tests")
        current = {v.user: v for v in tx.approvals.standing(image, sha)}.get(actor)
        if current is not None and current.approved and approved:
            return Reply(f"you already approved `{short(sha)}` of {image}")
        tx.approvals.add(image, sha, actor, approved=approved, reason=reason)
        details: dict[str, Any] = {"reason": reason}
        if approved and version.revoked:
            # A fresh approval is what a revoked version was waiting for: every view
            # stops calling it revoked; the log keeps the revocation it ends.
            tx.versions.clear_revocation(image, sha)
            details["ends_revocation"] = {
                "at": version.revoked_at,
                "by": version.revoked_by,
                "reason": version.revoked_reason,
            }
        check = ctx.policy(tx, image, sha, promoter=None)
        details["policy"] = render.policy_data(sha, check)
        tx.audit.append(actor=actor, action=command.name, image=image, sha=sha, details=details)
        if approved:
            text = f"✅ {mention(actor)} approved `{short(sha)}` — {check.summary()}"
        else:
            text = (
                f"⛔ {mention(actor)} rejected `{short(sha)}`: {escape(reason)} — "
                "promotion is blocked until they approve or an owner overrides"
            )
        offers: tuple[Offer, ...] = ()
        staging = tx.pointers.state(image).sha(Env.STAGING)
        if approved and check.met and sha == staging:
            text += "\nThe approval policy is met: an owner can promote."
            offers = (Offer(Act.PROMOTE, "Promote", image, sha, emphasis="primary"),)
        ctx.announce(
            tx, image, sha, text, key=f"{command.name}:{image}:{sha}:{tx.now}", offers=offers
        )
    return Reply(text, {"image": image, "sha": sha, "policy": render.policy_data(sha, check)})
