"""Freezing an image: no promotions or rollbacks to a chosen SHA until it is lifted."""

from __future__ import annotations

from bot.domain.commands import Freeze, Unfreeze
from bot.domain.errors import Refused
from bot.domain.text import escape, mention
from bot.service.context import Asked, Context
from bot.service.replies import Reply


def freeze(ctx: Context, asked: Asked[Freeze]) -> Reply:
    actor, image, reason = asked.actor, asked.command.image, asked.command.reason
    with ctx.write(asked.key) as tx:
        if tx is None:
            return Reply("already frozen (retried request)")
        current = tx.freezes.get(image)
        if current is not None:
            raise Refused(
                f"{image} is already frozen by {mention(current.by)}: {escape(current.reason)}"
            )
        tx.freezes.set(image, by=actor, reason=reason)
        tx.audit.append(
            actor=actor, action="freeze", image=image, sha=None, details={"reason": reason}
        )
        text = (
            f"🧊 {mention(actor)} froze {image}: {escape(reason)}. Promotions and "
            "rollbacks to a chosen SHA are blocked; a rollback to fallback stays allowed."
        )
        ctx.announce(tx, image, None, text, key=f"freeze:{image}:{tx.now}")
    return Reply(text)


def unfreeze(ctx: Context, asked: Asked[Unfreeze]) -> Reply:
    actor, image = asked.actor, asked.command.image
    with ctx.write(asked.key) as tx:
        if tx is None:
            return Reply("already unfrozen (retried request)")
        current = tx.freezes.get(image)
        if current is None:
            raise Refused(f"{image} is not frozen")
        tx.freezes.clear(image)
        tx.audit.append(
            actor=actor,
            action="unfreeze",
            image=image,
            sha=None,
            details={"was": {"reason": current.reason, "by": current.by}},
        )
        text = f"🌤 {mention(actor)} unfroze {image}"
        ctx.announce(tx, image, None, text, key=f"unfreeze:{image}:{tx.now}")
    return Reply(text)
