"""Refusals on record: every command refused is audited against the SHA it concerned."""

from __future__ import annotations

from typing import Any

from bot.domain.command_table import spec_of
from bot.domain.commands import Command
from bot.domain.errors import NbenvError
from bot.domain.names import Env
from bot.domain.text import to_plain
from bot.service import render
from bot.service.context import Context
from bot.store.uow import Tx


def audit_refusal(ctx: Context, actor: str, command: Command, refusal: NbenvError) -> None:
    with ctx.store.write() as tx:
        image, sha = command.image, _concerned_sha(ctx, tx, command)
        stop = getattr(command, "stop", None)
        if stop:
            # `instances --stop NAME` names no image: file it under the instance's.
            instance = tx.instances.get(stop)
            if instance is not None:
                image, sha = instance["image"], instance["sha"]
        record_refusal(
            tx, actor, command.name, image, sha, refusal, render.command_details(command)
        )


def record_refusal(
    tx: Tx,
    actor: str,
    action: str,
    image: str | None,
    sha: str | None,
    refusal: NbenvError,
    asked: dict[str, Any],
) -> None:
    # Plain text, as every other entry: history renders its mentions.
    details = {"reason": to_plain(refusal.message), "command": asked}
    tx.audit.append(
        actor=actor, action=action, image=image, sha=sha, outcome="refused", details=details
    )


def _concerned_sha(ctx: Context, tx: Tx, command: Command) -> str | None:
    """The SHA a refusal is filed under (the table's `concerns`), so `history IMAGE SHA`
    shows it too."""
    if command.image is None or command.image not in ctx.config.images:
        return None
    concerns = spec_of(command).concerns(command)
    if isinstance(concerns, Env):
        return tx.pointers.state(command.image).sha(concerns)
    if concerns is None:
        return None
    if len(concerns) == 40:
        return concerns
    try:
        return tx.versions.resolve_sha(command.image, concerns)
    except NbenvError:
        return None
