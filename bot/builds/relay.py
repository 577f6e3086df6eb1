"""The build relay: Cloud Build events and test reports → one Slack thread per commit.

Every input changes a thread under a row lock, in one transaction with the Slack
messages it causes (queued in the outbox), so two function instances handling events
of one commit at once still make one thread, and a crash loses nothing. After the
commit the relay delivers what it queued; what Slack refuses for now stays queued for
the next invocation or the bot's own sender.

What a SUCCESS triggers (publish to staging, promote to production) goes through the
core (`Nbenv`), the one writer of environment pointers. It is recorded as a pending
action in the thread's state before it runs, and re-run on the next event for the
commit until it settles, so a crash between the two cannot drop it.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import bindparam, func, select, update

from bot.builds import messages
from bot.builds.delivery import Deliverer
from bot.builds.events import BadEvent, BuildEvent, NotOurs, decode_pubsub, parse_build
from bot.builds.report import check_report, summarize
from bot.builds.thread import (
    ROOT_FOREIGN,
    ROOT_RELAY,
    Branches,
    Outgoing,
    Transition,
    add_tests,
    advance,
    current_build,
    finish_action,
    pending_actions,
)
from bot.domain.commands import Command
from bot.domain.errors import BadInput, Conflict, NbenvError, Refused
from bot.domain.names import Env, check_full_sha, short
from bot.service.app import Nbenv
from bot.slack.outbox import OutboxSender
from bot.store import tables as t
from bot.store.uow import Tx, iso

log = logging.getLogger(__name__)

DELIVER_WAIT_S = 2.0

# Built once: the relay runs these for every event.
_WHERE_THREAD = (t.slack_threads.c.image == bindparam("b_image")) & (
    t.slack_threads.c.sha == bindparam("b_sha")
)
_THREAD = select(t.slack_threads.c.state).where(_WHERE_THREAD)
_THREAD_FOR_UPDATE = (
    select(t.slack_threads.c.ts, t.slack_threads.c.state).where(_WHERE_THREAD).with_for_update()
)
_SAVE_THREAD = (
    update(t.slack_threads)
    .where(_WHERE_THREAD)
    .values(
        state=bindparam("state", type_=t.slack_threads.c.state.type),
        status_rank=bindparam("rank"),
        updated_at=bindparam("now"),
    )
)
CONFLICT_RETRIES = 3


class BuildRelay:
    def __init__(
        self,
        app: Nbenv,
        sender: OutboxSender | None,
        *,
        background: bool = False,
        deliver_wait_s: float = DELIVER_WAIT_S,
    ) -> None:
        """SENDER None: messages stay in the outbox for the bot's sender. BACKGROUND: send
        from a thread of this process (see bot.builds.delivery), not in the caller's."""
        self.app = app
        self.sender = sender
        self.store = app.store
        self.config = app.config
        self.deliver_wait_s = deliver_wait_s
        self.deliverer = Deliverer(sender).start() if background and sender else None

    # -- entry points --------------------------------------------------------------------

    def handle_pubsub(self, data: Any) -> str:
        """The data of a Pub/Sub `messagePublished` CloudEvent: a build or a test report."""
        try:
            message = decode_pubsub(data)
        except BadEvent as error:
            log.warning("relay: dropped a malformed Pub/Sub event: %s", error.message)
            return "bad"
        if not message.is_report:
            return self.handle_build(message.payload, message.attributes)
        attributes = message.attributes
        try:
            self.handle_report(
                attributes.get("image", ""),
                attributes.get("sha", ""),
                message.payload,
                attributes.get("buildId") or None,
            )
        except BadInput as error:
            log.warning("relay: dropped a test report: %s", error.message)
            return "bad"
        return "applied"

    def handle_build(self, build: Any, attributes: Mapping[str, str] | None = None) -> str:
        """Apply one Build resource event; returns applied|duplicate|stale|ignored|bad."""
        try:
            event = parse_build(build, attributes)
        except NotOurs as reason:
            log.info("relay: ignored %s", reason)
            return "ignored"
        except BadEvent as error:
            log.warning("relay: dropped a malformed build event: %s", error.message)
            return "bad"
        settings = self.config.images.get(event.image)
        if settings is None:
            log.warning("relay: ignored build %s of unknown image %r", event.build_id, event.image)
            return "ignored"
        branches = Branches(settings.source.staging_branch, settings.source.production_branch)
        image, sha = event.image, event.sha
        with self.store.write(audited=False) as tx:
            state = self._lock(tx, image, sha, decide_root=True)
            transition = advance(state, event, branches)
            if transition.applied:
                self._commit(tx, image, sha, transition)
                state = transition.state
            actions = pending_actions(state)
        log.info(
            "relay: %s %s `%s` build %s %s",
            transition.outcome,
            image,
            short(sha),
            event.build_id,
            event.status,
        )
        for key in actions:
            self._run_action(image, sha, key)
        self.deliver(image, sha)
        return transition.outcome

    def handle_report(self, image: str, sha: str, report: Any, build_id: str | None = None) -> None:
        """Record a build's test report on its version and tell the thread about failures."""
        if image not in self.config.images:
            raise BadInput(f"test report for unknown image {image!r}")
        sha = check_full_sha(sha)
        report = check_report(report)
        summary = summarize(report, build_id)
        with self.store.read() as tx:
            version = tx.get_version(image, sha)
            build = current_build(self._state(tx, image, sha), image, sha)
        same_build = build if build is not None and build.build_id == build_id else None
        # A late report of an older build must not replace what the newest build recorded.
        superseded = (
            build is not None
            and same_build is None
            and version is not None
            and version.build_id == build.build_id
        )
        unchanged = version is not None and (version.report, version.build_id) == (report, build_id)
        if not (superseded or unchanged):
            self.app.record_version(
                f"build:{build_id or 'report'}",
                image,
                sha,
                report=report,
                subject=same_build.subject if same_build else None,
                branch=same_build.branch if same_build else None,
                build_id=build_id,
            )
        with self.store.write(audited=False) as tx:
            transition = add_tests(self._lock(tx, image, sha), image, sha, summary)
            if transition.applied:
                self._commit(tx, image, sha, transition)
        log.info(
            "relay: test report for %s `%s` build %s: %s/%s passed",
            image,
            short(sha),
            build_id,
            summary["passed"],
            summary["total"],
        )
        self.deliver(image, sha)

    # -- the thread row ------------------------------------------------------------------

    def _state(self, tx: Tx, image: str, sha: str) -> dict[str, Any]:
        row = tx.connection.execute(_THREAD, {"b_image": image, "b_sha": sha}).first()
        return dict(row.state) if row is not None else {}

    def _lock(self, tx: Tx, image: str, sha: str, *, decide_root: bool = False) -> dict[str, Any]:
        """The thread's state, locked until the transaction ends; created when new.

        DECIDE_ROOT: settle whose message the root is, just before the relay would queue
        its own root message (in the same transaction).
        """
        key = {"b_image": image, "b_sha": sha}
        row = tx.connection.execute(_THREAD_FOR_UPDATE, key).first()
        if row is None:
            # Two instances may both get here: the insert of one waits for the other's
            # commit and then does nothing, and both lock the one row.
            tx.insert_ignore(
                t.slack_threads,
                {
                    "image": image,
                    "sha": sha,
                    "channel": self.config.images[image].channel,
                    "ts": None,
                    "state": {},
                    "status_rank": 0,
                    "updated_at": tx.now,
                },
            )
            row = tx.connection.execute(_THREAD_FOR_UPDATE, key).one()
        state = dict(row.state or {})
        if decide_root and state.get("root") is None:
            # Someone else's message opened this thread (a manual publish, an approval):
            # the relay then reports by replies and leaves that root alone.
            foreign = row.ts is not None or self._thread_messages(tx, image, sha) > 0
            state["root"] = ROOT_FOREIGN if foreign else ROOT_RELAY
        return state

    def _thread_messages(self, tx: Tx, image: str, sha: str) -> int:
        return tx.connection.execute(
            select(func.count())
            .select_from(t.outbox)
            .where(t.outbox.c.thread_image == image, t.outbox.c.thread_sha == sha)
        ).scalar_one()

    def _commit(self, tx: Tx, image: str, sha: str, transition: Transition) -> None:
        state = transition.state
        build = state.get("build") or {}
        rank = transition.state.get("progress", [0])[0] if build else 0
        tx.connection.execute(
            _SAVE_THREAD,
            {"b_image": image, "b_sha": sha, "state": state, "rank": rank, "now": tx.now},
        )
        for message in transition.messages:
            self._enqueue(tx, image, sha, message)

    def _enqueue(self, tx: Tx, image: str, sha: str, message: Outgoing) -> None:
        channel = self.config.images[image].channel
        key = f"build:{image}:{sha}:{message.key}"
        if message.kind == "update":
            # The sender fills in the root's channel and ts when it sends the update.
            tx.enqueue_message(key, "chat.update", {"text": message.text}, thread=(image, sha))
            return
        payload = {"channel": channel, "text": message.text, "unfurl_links": False}
        tx.enqueue_message(key, "chat.postMessage", payload, thread=(image, sha))

    # -- what a SUCCESS triggers -----------------------------------------------------------

    def _run_action(self, image: str, sha: str, key: str) -> None:
        kind, build_id = key.split(":", 1)
        with self.store.read() as tx:
            build = current_build(self._state(tx, image, sha), image, sha)
        build = build if build is not None and build.build_id == build_id else None
        actor = f"build:{build_id}"
        try:
            if kind == "publish":
                outcome, text = self._publish(actor, image, sha, build_id, build)
            else:
                outcome, text = self._promote(actor, image, sha, build_id)
        except NbenvError as error:
            if kind == "publish":
                applied = self._in_staging(image, sha, actor)
            else:
                with self.store.read() as tx:
                    applied = tx.claimed(f"promote:{image}:{sha}:{build_id}") is not None
            if applied:
                # The pointer moved with its claim; what failed was syncing the registry
                # (a saga the core finishes on recovery), not the publication itself.
                log.warning("relay: %s of %s `%s`: %s", kind, image, short(sha), error.message)
                outcome, text = "done", None
            else:
                outcome, text = "refused", messages.refused(kind, build_id, sha, error.message)
        with self.store.write(audited=False) as tx:
            state = finish_action(self._lock(tx, image, sha), key, outcome)
            messages_out = [Outgoing("reply", f"{key}:{outcome}", text)] if text else []
            self._commit(tx, image, sha, Transition("applied", state, messages_out))
        log.info("relay: %s of %s `%s` by build %s: %s", kind, image, short(sha), build_id, outcome)

    def _publish(
        self, actor: str, image: str, sha: str, build_id: str, build: BuildEvent | None
    ) -> tuple[str, str | None]:
        with self.store.read() as tx:
            version = tx.get_version(image, sha)
        report = version.report if version is not None and version.build_id == build_id else None
        staging_branch = self.config.images[image].source.staging_branch
        base = f"publish:{image}:{sha}:{build_id}"
        for attempt in range(CONFLICT_RETRIES):
            try:
                self.app.publish(
                    actor,
                    image,
                    sha,
                    report=report,
                    subject=build.subject if build else None,
                    branch=build.branch if build else staging_branch,
                    build_id=build_id,
                    key=base if attempt == 0 else f"{base}:{attempt}",
                )
            except Conflict:
                continue
            # The core claims the key when it records the version, before it moves the
            # pointer: "already published" after a crash in between must be checked.
            if self._in_staging(image, sha, actor):
                # The core announces the new staging version in this thread itself.
                return "done", None
        raise Conflict(f"staging of {image} kept changing while publishing `{short(sha)}`")

    def _in_staging(self, image: str, sha: str, actor: str) -> bool:
        with self.store.read() as tx:
            if tx.image_state(image).sha(Env.STAGING) == sha:
                return True
            return any(
                row["env"] == Env.STAGING.value and row["new_sha"] == sha and row["actor"] == actor
                for row in tx.pointer_history(image)
            )

    def _promote(self, actor: str, image: str, sha: str, build_id: str) -> tuple[str, str | None]:
        key = f"promote:{image}:{sha}:{build_id}"
        production_branch = self.config.images[image].source.production_branch
        with self.store.read() as tx:
            state = tx.image_state(image)
            done = tx.claimed(key) is not None
        if done:
            return "done", None
        if state.sha(Env.PRODUCTION) == sha:
            return "done", f"ℹ️ `{short(sha)}` already is in production: nothing to promote"
        if state.sha(Env.STAGING) != sha:
            reason = messages.not_staging(sha, state.sha(Env.STAGING), production_branch)
            with self.store.write() as tx:
                tx.append_audit(
                    actor=actor,
                    action="promote",
                    image=image,
                    sha=sha,
                    outcome="refused",
                    details={"reason": reason, "branch": production_branch},
                )
            return "refused", messages.refused("promote", build_id, sha, reason)
        try:
            # `expect`: if staging moves on between this check and the promotion, the
            # core refuses instead of promoting a commit this build did not build.
            self.app.execute(
                actor, Command("promote", image=image), key=key, expect=state.generations()
            )
        except (Refused, Conflict) as error:
            with self.store.read() as tx:
                if tx.claimed(key) is not None:  # another instance promoted it meanwhile
                    return "done", None
            return "refused", messages.refused("promote", build_id, sha, error.message)
        return "done", None

    # -- delivery ------------------------------------------------------------------------

    def deliver(self, image: str, sha: str) -> None:
        """Send what is queued; wait briefly while another instance sends this thread's root.

        Messages of a thread go out in order, so while another instance is sending the
        root, this one's updates and replies wait for it; once it is out they can go.
        """
        if self.deliverer is not None:
            self.deliverer.send(self.deliver_wait_s)
            return
        if self.sender is None:
            return
        deadline = time.monotonic() + self.deliver_wait_s
        waited = False
        while True:
            self.sender.deliver_due()
            if not self._sending_elsewhere(image, sha):
                if waited:
                    self.sender.deliver_due()
                return
            if time.monotonic() >= deadline:
                return
            waited = True
            time.sleep(0.02)

    def _sending_elsewhere(self, image: str, sha: str) -> bool:
        outbox = t.outbox
        now = iso(self.store.clock())
        with self.store.read() as tx:
            row = tx.connection.execute(
                select(outbox.c.id)
                .where(
                    outbox.c.thread_image == image,
                    outbox.c.thread_sha == sha,
                    outbox.c.status == "sending",
                    # A lease that ran out belongs to a crashed sender: nobody to wait for.
                    outbox.c.next_attempt_at > now,
                )
                .limit(1)
            ).first()
        return row is not None


def relay_from_env() -> BuildRelay:
    """The relay as the Cloud Function runs it: config, store and Slack from the environment.

    NBENV_CONFIG, NBENV_DATABASE_URL, SLACK_BOT_TOKEN, SLACK_API_URL (see DESIGN.md §5).
    Without a bot token the relay still records everything; the bot's sender delivers.
    """
    from bot.bootstrap import build_runtime
    from bot.slack.client import web_client

    runtime = build_runtime(os.environ.get("NBENV_CONFIG"), os.environ.get("NBENV_DATABASE_URL"))
    sender = None
    if os.environ.get("SLACK_BOT_TOKEN"):
        sender = OutboxSender(runtime.store, web_client())
    else:
        log.warning("relay: SLACK_BOT_TOKEN is not set: messages stay queued in the outbox")
    return BuildRelay(runtime.app, sender, background=True)
