"""Moving environments: promote and rollback, planned in a read and applied with
compare-and-swap, together with their audit entry and announcement."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

from bot.domain import operations as ops
from bot.domain.commands import Promote, Rollback, is_dry_run
from bot.domain.errors import NbenvError, Refused
from bot.domain.names import short
from bot.domain.notifications import Act, Offer
from bot.domain.policy import EVERYONE
from bot.domain.text import escape, mention
from bot.service import plans, render, sagas
from bot.service.context import Asked, Context
from bot.service.instances import tell_instance_owners
from bot.service.replies import Reply
from bot.store.uow import Tx

log = logging.getLogger(__name__)


def promote(ctx: Context, asked: Asked[Promote]) -> Reply:
    return _move(ctx, asked)


def rollback(ctx: Context, asked: Asked[Rollback]) -> Reply:
    return _move(ctx, asked)


def _move(ctx: Context, asked: Asked[Promote] | Asked[Rollback]) -> Reply:
    command = asked.command
    with ctx.store.read() as tx:
        if asked.seen is not None:
            # Checked before planning, so the owner hears what moved rather than why
            # today's plan would fail; checked again when writing (races).
            asked.seen.refuse_if_moved(tx.pointers.state(command.image), command.name)
        plan, preview = plans.preview(ctx, tx, asked.actor, command)
    if is_dry_run(command):
        return Reply(render.plan_text(plan, preview, dry_run=True), preview)
    return apply(ctx, asked.actor, plan, key=asked.key, seen=asked.seen, preview=preview)


def apply(
    ctx: Context,
    actor: str,
    plan: ops.Plan,
    *,
    key: str | None,
    seen: ops.Seen | None,
    preview: dict[str, Any],
    replan: Callable[[Tx], ops.Plan] | None = None,
) -> Reply:
    """Commit PLAN with compare-and-swap, its audit entry and announcement, then sync.

    REPLAN, when given, makes the plan again inside the write transaction (after the
    checks that must stay outside it, like the registry's), so what it records commits
    together with the change.
    """
    operation_id = str(uuid.uuid4())
    _check_versions(ctx, plan)
    with ctx.write(key) as tx:
        if tx is None:
            return Reply("already done (retried request)", {"retried": True})
        if replan is not None:
            plan = replan(tx)
        if seen is not None:
            seen.refuse_if_moved(tx.pointers.state(plan.image), plan.action)
        tx.pointers.apply(plan, actor=actor, operation_id=operation_id)
        steps = []
        if plan.changes and ctx.backend is not None and ctx.backend.mirrors_pointers():
            steps = [{"env": c.env.value, "done": False} for c in plan.changes]
            tx.sagas.start(operation_id, plan.action, plan.image, actor, steps)
        details = dict(plan.details)
        details["changes"] = preview.get("changes") or [
            {"env": c.env.value, "old": c.old, "new": c.new} for c in plan.changes
        ]
        if plan.revoke:
            details["revoked"] = plan.revoke
        tx.audit.append(
            actor=actor, action=plan.action, image=plan.image, sha=plan.sha, details=details
        )
        text = render.announcement(actor, plan)
        if plan.changes:
            _announce_plan(ctx, tx, plan, text, operation_id)
    synced = sagas.finish_operation(ctx, operation_id) if steps else True
    if not synced:
        with ctx.store.read() as tx:
            operation = tx.sagas.get(operation_id)
        text += (
            f"\n⚠️ Recorded, but the registry is not in line yet: "
            f"{escape((operation or {}).get('error'))}. "
            "nbenv finishes it at its next start or with `nbenv recover`."
        )
    if plan.revoke:
        tell_instance_owners(ctx, plan.image, plan.revoke, operation_id)
    return Reply(text, {**preview, "operation": operation_id, "applied": True, "synced": synced})


def _check_versions(ctx: Context, plan: ops.Plan) -> None:
    """Refuse a plan that would point an environment at a version the registry lacks."""
    if not plan.changes or ctx.backend is None or not ctx.backend.mirrors_pointers():
        return
    for sha in dict.fromkeys(change.new for change in plan.changes):
        try:
            ctx.backend.check_version(plan.image, sha)
        except Refused:
            raise
        except NbenvError as error:
            # The registry is unreachable. A rollback is the emergency exit: the store
            # moves now and the registry follows when it answers again.
            if plan.action != "rollback":
                raise
            log.warning("rollback of %s without a registry check: %s", plan.image, error)


def _announce_plan(ctx: Context, tx: Tx, plan: ops.Plan, text: str, operation_id: str) -> None:
    image = plan.image
    offers: tuple[Offer, ...] = ()
    if plan.action == "promote":
        offers = (Offer(Act.ROLLBACK, "Roll back", image, emphasis="danger"),)
    elif plan.action == "publish":
        offers = (
            Offer(Act.APPROVE, "Approve", image, plan.sha, emphasis="primary"),
            Offer(Act.REJECT, "Reject", image, plan.sha, emphasis="danger"),
        )
        testers = sorted(ctx.config.team_roles(image).testers - {EVERYONE})
        if testers:
            text += "\nTesters, please try it: " + " ".join(mention(u) for u in testers)
    ctx.announce(tx, image, plan.sha, text, key=f"op:{operation_id}", offers=offers)
    if plan.revoke:
        ctx.announce(
            tx,
            image,
            plan.revoke,
            f"⏪ `{short(plan.revoke)}` was rolled back and revoked: it needs fresh approvals "
            "before it can be promoted again.",
            key=f"op:{operation_id}:revoked",
        )
