"""Versions built and tested by the pipeline: recorded, and published to staging."""

from __future__ import annotations

from typing import Any

from bot.domain import operations as ops
from bot.domain.errors import Conflict, Refused
from bot.domain.model import Version
from bot.domain.names import check_full_sha
from bot.domain.policy import Role
from bot.service import access
from bot.service.context import Context
from bot.service.environments import apply
from bot.service.refusals import record_refusal
from bot.service.replies import Reply
from bot.store.uow import Tx


def report_passed(report: dict[str, Any] | None) -> bool:
    if not report:
        return True
    notebooks = report.get("notebooks") or []
    return all(item.get("status") == "passed" for item in notebooks)


def publish(
    ctx: Context,
    actor: str,
    image: str,
    sha: str,
    *,
    report: dict[str, Any] | None = None,
    subject: str | None = None,
    branch: str | None = None,
    build_id: str | None = None,
    key: str | None = None,
) -> Reply:
    """Record a tested version and point staging at it (owners and the pipeline)."""
    access.check_actor(ctx.config, actor)
    access.check_image(ctx.config, image)
    sha = check_full_sha(sha)

    def version_at(now: str) -> Version:
        return Version(
            image=image,
            sha=sha,
            tests_passed=report_passed(report),
            created_at=now,
            recorded_by=actor,
            subject=subject,
            branch=branch,
            build_id=build_id,
            report=report,
        )

    def record_and_plan(tx: Tx) -> ops.Plan:
        # Recorded in the same transaction as the pointer move and the idempotency
        # key: a crash between them can't leave a retry that "already published".
        return ops.plan_publish(tx.pointers.state(image), tx.versions.record(version_at(tx.now)))

    try:
        ctx.require(actor, image, Role.OWNER, "publish")
        with ctx.store.read() as tx:
            plan = ops.plan_publish(tx.pointers.state(image), version_at(tx.now))
        return apply(
            ctx, actor, plan, key=key, seen=None, preview={"image": image}, replan=record_and_plan
        )
    except (Refused, Conflict) as refusal:
        with ctx.store.write() as tx:
            if not report_passed(report):
                # The version itself stays recorded (a failed build is history too).
                tx.versions.record(version_at(tx.now))
            record_refusal(tx, actor, "publish", image, sha, refusal, {"sha": sha})
        raise


def record_version(
    ctx: Context,
    actor: str,
    image: str,
    sha: str,
    *,
    report: dict[str, Any] | None,
    subject: str | None = None,
    branch: str | None = None,
    build_id: str | None = None,
) -> None:
    """Keep a built version (passed or failed) without moving any environment."""
    access.check_image(ctx.config, image)
    with ctx.store.write() as tx:
        tx.versions.record(
            Version(
                image=image,
                sha=check_full_sha(sha),
                tests_passed=report_passed(report),
                created_at=tx.now,
                recorded_by=actor,
                subject=subject,
                branch=branch,
                build_id=build_id,
                report=report,
            )
        )
        tx.audit.append(
            actor=actor,
            action="record",
            image=image,
            sha=sha,
            details={
                "tests_passed": report_passed(report),
                "branch": branch,
                "build_id": build_id,
            },
        )
