"""`Nbenv`: the one door to the use cases, for every entry point.

Slack, the CLI, the console shell and the build relay all come through here, so a rule
holds the same wherever a request comes from: a known person and image, the role the
command table asks for, a retried request not done twice, every refusal on record.
State changes commit together with their audit entry and the Slack announcements they
cause (queued in the outbox), so a crash can lose none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import closing
from typing import Any

from bot.config import Config
from bot.domain import operations as ops
from bot.domain.audit import ChainCheck, verify_chain
from bot.domain.command_table import parse, reads_only, spec_of
from bot.domain.commands import Command, Promote, Rollback, is_dry_run
from bot.domain.errors import Conflict, Refused
from bot.domain.names import Actor
from bot.domain.policy import Role
from bot.service import access, builds, instances, plans, reads, sagas, versions
from bot.service.access import as_actor
from bot.service.context import Asked, Context
from bot.service.handlers import HANDLERS
from bot.service.ports import Backend, InstanceInfo, Notifier
from bot.service.refusals import audit_refusal
from bot.service.replies import Reply
from bot.store.uow import Store, Tx


class Nbenv:
    def __init__(
        self,
        config: Config,
        store: Store,
        backend: Backend | None = None,
        differ: Callable[..., dict[str, Any]] | None = None,
        *,
        notifier: Notifier,
        run_by_operator: bool = False,
    ) -> None:
        """RUN_BY_OPERATOR: this entry point is used by the person who runs nbenv (CLI,
        console), not by people through Slack; instances they ask for may share the bot's
        OS user on the local backend (see `local.shared_instances`)."""
        self.context = Context(config, store, notifier, backend, differ, run_by_operator)

    @property
    def config(self) -> Config:
        return self.context.config

    @property
    def store(self) -> Store:
        return self.context.store

    @property
    def backend(self) -> Backend | None:
        return self.context.backend

    # -- commands --------------------------------------------------------------------------

    def handle(self, actor: Actor | str, text: str, *, key: str | None = None) -> Reply:
        """Run TEXT exactly as it would follow `/nbenv`, as ACTOR."""
        return self.execute(actor, parse(text), key=key)

    def execute(
        self,
        actor: Actor | str,
        command: Command,
        *,
        key: str | None = None,
        expect: dict[str, int] | ops.Seen | None = None,
        reply_to: str | None = None,
    ) -> Reply:
        """REPLY_TO: where slow work (build, instance) answers when done (in Slack: the
        request's response_url).

        EXPECT: the environments as whoever decided saw them (their generations, or a
        Seen); a promote or rollback is refused, and the refusal audited, if they moved.
        """
        self.check(actor, command)
        remembered = key is not None and not reads_only(command)
        if remembered:
            with self.store.read() as tx:
                done = tx.idempotency.claimed(key)
            if done is not None:
                return _retried(done)
        seen = ops.Seen(expect) if isinstance(expect, dict) else expect
        asked = Asked(as_actor(actor), command, key=key, seen=seen, reply_to=reply_to)
        try:
            self._require_table_role(asked.actor, command)
            reply = HANDLERS[type(command)](self.context, asked)
        except (Refused, Conflict) as refusal:
            if is_dry_run(command):
                # Said as a dry run, like the plan it would have shown: nothing was tried.
                dry = type(refusal)(
                    f"Dry run — {command.name} {command.image} would be refused: {refusal.message}"
                )
                audit_refusal(self.context, asked.actor, command, dry)
                raise dry from refusal
            audit_refusal(self.context, asked.actor, command, refusal)
            raise
        if remembered and key is not None:
            # So that a retry whose first answer was lost (a dropped connection) hears
            # what happened, not only that something did.
            with self.store.write(audited=False) as tx:
                tx.idempotency.remember(key, {"text": reply.text})
        return reply

    def _require_table_role(self, actor: str, command: Command) -> None:
        spec = spec_of(command)
        needed = spec.role_for(command)
        if needed is not None and command.image is not None:
            self.context.require(actor, command.image, needed, spec.action_for(command))

    def check(self, actor: Actor | str, command: Command) -> None:
        """What every command passes first: a known user and a known image (config only)."""
        access.check(self.config, actor, command)

    def require(self, actor: Actor | str, command: Command, needed: Role) -> Role:
        """ACTOR's role when it is at least NEEDED for COMMAND; a refusal is audited.

        For adapters that must check a role before asking for more input (a dialog).
        """
        self.check(actor, command)
        assert command.image  # check() knows the image
        try:
            return self.context.require(as_actor(actor), command.image, needed, command.name)
        except Refused as refusal:
            audit_refusal(self.context, as_actor(actor), command, refusal)
            raise

    def preview(self, actor: Actor | str, command: Promote | Rollback) -> dict[str, Any]:
        """The plan a promote or rollback would carry out, for a confirmation dialog."""
        self.check(actor, command)
        try:
            self._require_table_role(as_actor(actor), command)
            with self.store.read() as tx:
                return plans.preview(self.context, tx, as_actor(actor), command)[1]
        except (Refused, Conflict) as refusal:
            audit_refusal(self.context, as_actor(actor), command, refusal)
            raise

    # -- what the pipeline and the job worker call -------------------------------------------

    def publish(
        self,
        actor: Actor | str,
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
        return versions.publish(
            self.context,
            as_actor(actor),
            image,
            sha,
            report=report,
            subject=subject,
            branch=branch,
            build_id=build_id,
            key=key,
        )

    def record_version(
        self,
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
        versions.record_version(
            self.context,
            actor,
            image,
            sha,
            report=report,
            subject=subject,
            branch=branch,
            build_id=build_id,
        )

    def run_build(self, payload: dict[str, Any]) -> None:
        builds.run_build(self.context, payload)

    def create_instance(self, payload: dict[str, Any]) -> InstanceInfo:
        return instances.create_instance(self.context, payload)

    def finish_operation(self, operation_id: str) -> bool:
        return sagas.finish_operation(self.context, operation_id)

    def recover(self) -> list[str]:
        return sagas.recover(self.context)

    # -- reads for the adapters ----------------------------------------------------------------

    def visible_images(self, actor: Actor | str) -> list[str]:
        return self.context.visible_images(actor)

    def image_status(self, tx: Tx, image: str) -> dict[str, Any]:
        return reads.image_status(self.context, tx, image)

    def who_runs(self, image: str, shas: Iterable[str | None]) -> dict[str, list[str]]:
        return instances.who_runs(self.context, image, shas)

    def verify_audit(self) -> ChainCheck:
        with self.store.read() as tx, closing(tx.audit.chain()) as entries:
            return verify_chain(entries, tx.audit.head(), self.store.audit_key)


def _retried(done: dict[str, Any]) -> Reply:
    """The answer to a request handled before: what it answered then, when known."""
    text = done.get("text")
    if not isinstance(text, str):
        return Reply("already done (retried request)", {"retried": True})
    return Reply(f"{text}\n_(already done: this was a retried request)_", {"retried": True})
