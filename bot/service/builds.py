"""Builds asked for in chat: queued by `build`, run by a job, a failure audited."""

from __future__ import annotations

import uuid
from typing import Any

from bot.domain.builds import what_a_build_will_do
from bot.domain.commands import Build
from bot.domain.errors import NbenvError, Refused
from bot.domain.names import is_full_sha, short
from bot.domain.text import escape
from bot.service.context import Asked, Context
from bot.service.replies import Reply

# Cloud Build's statuses of a build that ran and did not succeed.
FAILED_BUILD_STATUSES = {"FAILURE", "INTERNAL_ERROR", "TIMEOUT", "CANCELLED", "EXPIRED"}


def build(ctx: Context, asked: Asked[Build]) -> Reply:
    image = asked.command.image
    source = ctx.config.images[image].source
    ref = asked.command.ref or source.staging_branch
    # Full SHAs are commits on every backend (Cloud Build runs the trigger by
    # `commitSha`); anything else is taken as a branch until the backend resolves it.
    will = what_a_build_will_do(
        ref,
        is_branch=not is_full_sha(ref.lower()),
        staging_branch=source.staging_branch,
        production_branch=source.production_branch,
    )
    job_key = asked.key or f"build:{image}:{ref}:{uuid.uuid4()}"
    with ctx.write(asked.key) as tx:
        if tx is None:
            return Reply("build already queued (retried request)", {"retried": True})
        payload = {"image": image, "ref": ref, "actor": asked.actor}
        ctx.queue(tx, "build", job_key, payload, asked.reply_to, sha=None, details={"ref": ref})
    return Reply(
        f"🏗 build of {image} at `{escape(ref)}` queued: {will}. Progress will appear "
        f"in the image's channel, one thread per commit",
        {"image": image, "ref": ref, "job": job_key},
    )


def run_build(ctx: Context, payload: dict[str, Any]) -> None:
    """Job handler: run the build a `build` command queued.

    A build that could not start (no such branch, the backend refused) or that ran
    and failed is audited as failed, with the reason, and fails its job, so whoever
    asked hears why.
    """
    image, ref, actor = payload["image"], payload["ref"], payload["actor"]
    if ctx.backend is None:
        raise Refused("no backend is configured to run builds")
    try:
        build = ctx.backend.run_build(image, ref, actor)
    except NbenvError as error:
        ctx.audit_failure(actor, "build", image, None, error.message, {"ref": ref})
        raise
    status = build.get("status")
    if status not in FAILED_BUILD_STATUSES:
        return
    failure = build.get("failureInfo")
    detail = failure.get("detail") if isinstance(failure, dict) else None
    substitutions = build.get("substitutions")
    sha = substitutions.get("COMMIT_SHA") if isinstance(substitutions, dict) else None
    sha = sha if isinstance(sha, str) and is_full_sha(sha) else None
    reason = f"{image} at {short(sha) if sha else ref}: {detail or status}"
    details = {"ref": ref, "build_id": build.get("id"), "status": status}
    ctx.audit_failure(actor, "build", image, sha, reason, details)
    raise Refused(reason)
