"""What every use case works with: the config, the store, the backend, and the few
steps they all take the same way (a role check, an idempotent write, an announcement,
an audited failure)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from bot.config import Config
from bot.domain.commands import Command
from bot.domain.names import Actor
from bot.domain.notifications import Announcement, Notification, Offer
from bot.domain.operations import Seen
from bot.domain.policy import PolicyCheck, Role, check_policy, require_role
from bot.domain.text import to_plain
from bot.service.access import as_actor, is_pipeline
from bot.service.ports import Backend, Notifier
from bot.store.uow import Store, Tx

MAX_AUDITED_REASON = 2000  # a failure's reason kept in the log (tracebacks can be long)

C = TypeVar("C", bound=Command)


@dataclass
class Context:
    config: Config
    store: Store
    notifier: Notifier
    backend: Backend | None = None
    differ: Callable[..., dict[str, Any]] | None = None
    # Used by the person who runs nbenv (CLI, console), not by people through Slack:
    # instances they ask for may share the bot's OS user (see `local.shared_instances`).
    run_by_operator: bool = False

    def require(self, actor: str, image: str, needed: Role, action: str) -> Role:
        """ACTOR's role on IMAGE when it is at least NEEDED; else Refused, saying why."""
        if is_pipeline(actor):
            return Role.OWNER
        team = self.config.images[image].team
        return require_role(
            self.config.team_roles(image), actor, needed, action=action, image=image, team=team
        )

    def visible_images(self, actor: Actor | str) -> list[str]:
        """The images ACTOR has a role on (all of them for the pipeline)."""
        actor = as_actor(actor)
        if is_pipeline(actor):
            return sorted(self.config.images)
        return sorted(
            name for name in self.config.images if self.config.role_of(name, actor) is not None
        )

    @contextmanager
    def write(self, key: str | None) -> Iterator[Tx | None]:
        """A write transaction that claims idempotency KEY; yields None on a retry."""
        with self.store.write() as tx:
            if key is not None and not tx.idempotency.claim(key):
                yield None
                return
            yield tx

    def policy(self, tx: Tx, image: str, sha: str, promoter: str | None) -> PolicyCheck:
        """Where the approvals of SHA stand against the image's policy."""
        settings = self.config.images[image]
        return check_policy(
            tx.approvals.standing(image, sha),
            required=settings.approvals,
            roles=self.config.team_roles(image),
            promoter=promoter,
            owner_approval_counts=settings.owner_approval_counts,
        )

    def notify(self, tx: Tx, key: str, notification: Notification) -> None:
        """Tell people, committed with TX: it goes out exactly when the change it tells of
        is recorded, and once (KEY)."""
        self.notifier.notify(tx, key, notification)

    def announce(
        self,
        tx: Tx,
        image: str,
        sha: str | None,
        text: str,
        *,
        key: str,
        offers: tuple[Offer, ...] = (),
    ) -> None:
        """Tell the image's channel, in SHA's thread when there is one."""
        channel = self.config.images[image].channel
        self.notify(tx, f"announce:{key}", Announcement(channel, image, sha, text, offers))

    def queue(
        self,
        tx: Tx,
        kind: str,
        job_key: str,
        payload: dict[str, Any],
        reply_to: str | None,
        *,
        sha: str | None,
        details: dict[str, Any],
    ) -> None:
        """Queue slow work with its audit entry; REPLY_TO is where the worker answers."""
        if reply_to:
            payload = {**payload, "reply_to": reply_to}
        tx.jobs.enqueue(job_key, kind, payload)
        tx.audit.append(
            actor=payload["actor"], action=kind, image=payload["image"], sha=sha, details=details
        )

    def audit_failure(
        self,
        actor: str,
        action: str,
        image: str,
        sha: str | None,
        reason: str,
        details: dict[str, Any],
    ) -> None:
        """Record that ACTION was tried and failed, with why."""
        with self.store.write() as tx:
            tx.audit.append(
                actor=actor,
                action=action,
                image=image,
                sha=sha,
                outcome="failed",
                details={**details, "reason": to_plain(reason)[:MAX_AUDITED_REASON]},
            )


@dataclass(frozen=True)
class Asked(Generic[C]):
    """A command as a handler gets it: who asked, and how the request came."""

    actor: Actor  # a Person (Slack user ID), or the Pipeline
    command: C
    key: str | None = None  # the request's idempotency key (a retry carries the same)
    # The environments as whoever decided saw them: a promote or rollback does what they
    # saw or nothing.
    seen: Seen | None = None
    reply_to: str | None = None  # where slow work answers when done (in Slack: a response_url)
