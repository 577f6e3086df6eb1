"""What a promote or rollback would do: its plan, and the plan as data for a person to
read (the confirmation, `--dry-run`, the audit entry)."""

from __future__ import annotations

from typing import Any

from bot.domain import operations as ops
from bot.domain.commands import Promote, Rollback
from bot.domain.errors import NbenvError
from bot.domain.names import Env
from bot.domain.policy import PolicyCheck
from bot.domain.vulnerabilities import ScanDelta
from bot.service import render
from bot.service import vulnerabilities as vulns
from bot.service.context import Context
from bot.service.windows import window_data, window_now
from bot.store.uow import Tx


def preview(
    ctx: Context, tx: Tx, actor: str, command: Promote | Rollback
) -> tuple[ops.Plan, dict[str, Any]]:
    """COMMAND's plan as things are in TX, and that plan as data."""
    if isinstance(command, Promote):
        plan, check, moved = plan_promote(ctx, tx, actor, command)
        return plan, plan_data(ctx, tx, plan, check, moved)
    plan = plan_rollback(ctx, tx, command)
    production = plan.change(Env.PRODUCTION)
    # Shown in the confirmation only: a rollback carried out is the emergency exit, and
    # must not wait for a scanner that may be slow or down.
    moved = None
    if production is not None and not command.confirmed:
        moved = vulns.delta(ctx, plan.image, production.old, plan.sha)
    return plan, plan_data(ctx, tx, plan, None, moved)


def plan_promote(
    ctx: Context, tx: Tx, actor: str, command: Promote
) -> tuple[ops.Plan, PolicyCheck, ScanDelta | None]:
    image = command.image
    state = tx.pointers.state(image)
    staging_sha = state.sha(Env.STAGING)
    production_sha = state.sha(Env.PRODUCTION)
    staging = tx.versions.get(image, staging_sha) if staging_sha else None
    check = ctx.policy(tx, image, staging_sha, promoter=actor) if staging_sha else None
    # Asked of the scanner only for a move that can happen (the rest is refused anyway).
    moved = (
        vulns.delta(ctx, image, production_sha, staging_sha)
        if staging_sha and staging_sha != production_sha
        else None
    )
    plan = ops.plan_promote(
        state,
        staging,
        check or PolicyCheck(0, (), (), ()),
        force=command.force,
        reason=command.reason,
        window=window_now(ctx, image),
        vulnerabilities=moved,
        block_on=ctx.config.images[image].blocking_severity,
    )
    assert check is not None  # plan_promote refuses an empty staging
    return plan, check, moved


def plan_rollback(ctx: Context, tx: Tx, command: Rollback) -> ops.Plan:
    image = command.image
    state = tx.pointers.state(image)
    if command.to:
        target = tx.versions.get(image, tx.versions.resolve_sha(image, command.to))
        assert target is not None  # resolved from the versions
        return ops.plan_rollback_to(
            state,
            target,
            force=command.force,
            reason=command.reason,
            window=window_now(ctx, image),
        )
    return ops.plan_rollback(state, reason=command.reason)


def plan_data(
    ctx: Context,
    tx: Tx,
    plan: ops.Plan,
    check: PolicyCheck | None,
    moved: ScanDelta | None = None,
) -> dict[str, Any]:
    state = tx.pointers.state(plan.image)
    data: dict[str, Any] = {
        "action": plan.action,
        "image": plan.image,
        "sha": plan.sha,
        "changes": [
            {
                "env": c.env.value,
                "old": c.old,
                "new": c.new,
                "generation": c.expected_generation,
            }
            for c in plan.changes
        ],
        "revoke": plan.revoke,
        "expect": state.generations(),
        "details": plan.details,
    }
    if check is not None:
        data["approvals"] = render.policy_data(plan.sha, check)
    data["freeze_window"] = window_data(ctx, plan.image)
    if moved is not None:
        data["vulnerabilities"] = vulns.delta_data(ctx, plan.image, moved)
    if ctx.differ is not None and plan.action == "promote":
        data["diff"] = _diff(ctx, tx, plan)
    return data


def _diff(ctx: Context, tx: Tx, plan: ops.Plan) -> dict[str, Any]:
    """What the promotion changes in the image, from production's version to the new one."""
    assert ctx.differ is not None
    production = plan.change(Env.PRODUCTION)
    old = production.old if production else None
    old_version = tx.versions.get(plan.image, old) if old else None
    new_version = tx.versions.get(plan.image, plan.sha)
    try:
        return ctx.differ(
            plan.image,
            old,
            plan.sha,
            old_version.report if old_version else None,
            new_version.report if new_version else None,
        )
    except NbenvError as error:
        return {"text": f"diff unavailable: {error.message}"}
