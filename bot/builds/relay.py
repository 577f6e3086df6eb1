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
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from bot.builds import messages
from bot.builds.delivery import Deliverer
from bot.builds.events import BadEvent, BuildEvent, NotOurs, decode_pubsub, parse_build
from bot.builds.report import check_report, summarize
from bot.builds.thread import (
    ROOT_FOREIGN,
    ROOT_RELAY,
    Branches,
    Outgoing,
    add_tests,
    advance,
    coalesce,
    current_build,
    finish_action,
    pending_actions,
)
from bot.domain.commands import Promote
from bot.domain.errors import BadInput, Conflict, NbenvError, Refused
from bot.domain.names import Env, Pipeline, check_full_sha, short
from bot.domain.notifications import Announcement, Notification, ThreadRootUpdate
from bot.service.nbenv import Nbenv
from bot.service.ports import DeliversMessages
from bot.store.database import is_transient_fault
from bot.store.group_commit import GroupCommit
from bot.store.repositories.threads import ThreadKey
from bot.store.uow import Tx, iso

log = logging.getLogger(__name__)

DELIVER_WAIT_S = 2.0

CONFLICT_RETRIES = 3
# Escaped in log lines: control characters, line separators, lone surrogates.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


class BuildRelay:
    def __init__(
        self,
        nbenv: Nbenv,
        sender: DeliversMessages | None,
        *,
        background: bool = False,
        deliver_wait_s: float = DELIVER_WAIT_S,
    ) -> None:
        """SENDER None: messages stay in the outbox for the bot's sender. BACKGROUND: send
        from a thread of this process (see bot.builds.delivery), not in the caller's."""
        self.nbenv = nbenv
        self.sender = sender
        self.store = nbenv.store
        self.config = nbenv.config
        self.deliver_wait_s = deliver_wait_s
        self.notifier = nbenv.context.notifier  # the core's: the thread speaks as it does
        self.deliverer = Deliverer(sender).start() if background and sender else None
        # Events arriving together are applied in one transaction (see group_commit).
        self.builds: GroupCommit[BuildEvent, tuple[str, list[str]]] = GroupCommit(
            self._apply_builds
        )

    # -- entry points --------------------------------------------------------------------

    def handle_pubsub(self, data: Any) -> str:
        """The data of a Pub/Sub `messagePublished` CloudEvent: a build or a test report.

        Returns normally (Pub/Sub gets a 2xx and stops delivering) for everything a
        retry would not change: the event is applied, or it is poison and is dropped
        with one log line. Raises only for what can heal (see `_transient`); the
        subscription's dead-letter topic parks what keeps failing (docs/deploy.md).
        """
        message_id = None
        try:
            message = decode_pubsub(data)
            message_id = message.message_id
            if not message.is_report:
                return self.handle_build(message.payload, message.attributes)
            attributes = message.attributes
            self.handle_report(
                attributes.get("image", ""),
                attributes.get("sha", ""),
                message.payload,
                attributes.get("buildId") or None,
            )
            return "applied"
        except BadInput as error:
            log.warning("relay: dropped message %s: %s", message_id, _one_line(error.message))
            return "bad"
        except Exception as error:
            if _transient(error):
                raise
            # A bug of ours that this event sets off: retrying it would fail the same way.
            log.error(
                "relay: dropped message %s it could not apply: %s: %s",
                message_id,
                type(error).__name__,
                _one_line(str(error)),
            )
            return "failed"

    def handle_build(self, build: Any, attributes: Mapping[str, str] | None = None) -> str:
        """Apply one Build resource event; returns applied|duplicate|stale|ignored|bad."""
        try:
            event = parse_build(build, attributes)
        except NotOurs as reason:
            log.info("relay: ignored %s", reason)
            return "ignored"
        except BadEvent as error:
            log.warning("relay: dropped a malformed build event: %s", _one_line(error.message))
            return "bad"
        if event.ignored:
            log.info(
                "relay: build %s: left out malformed %s",
                event.build_id,
                _one_line(", ".join(event.ignored)),
            )
        settings = self.config.images.get(event.image)
        if settings is None:
            log.warning("relay: ignored build %s of unknown image %r", event.build_id, event.image)
            return "ignored"
        image, sha = event.image, event.sha
        outcome, actions = self.builds.submit(event)
        log.info(
            "relay: %s %s `%s` build %s %s",
            outcome,
            image,
            short(sha),
            event.build_id,
            event.status,
        )
        for key in actions:
            self._run_action(image, sha, key)
        self.deliver(image, sha)
        return outcome

    def _apply_builds(self, events: Sequence[BuildEvent]) -> list[tuple[str, list[str]]]:
        """Apply EVENTS in order, in one transaction: per event, its outcome and the
        actions its thread has pending afterwards."""
        with self.store.write(audited=False) as tx:
            states = self._lock(tx, {(e.image, e.sha) for e in events}, decide_root=True)
            changed: dict[ThreadKey, dict[str, Any]] = {}
            outgoing: list[tuple[ThreadKey, Outgoing]] = []
            results = []
            for event in events:
                key = (event.image, event.sha)
                source = self.config.images[event.image].source
                branches = Branches(source.staging_branch, source.production_branch)
                transition = advance(states[key], event, branches)
                if transition.applied:
                    states[key] = changed[key] = transition.state
                    outgoing.extend((key, message) for message in transition.messages)
                results.append((transition.outcome, pending_actions(states[key])))
            self._save(tx, changed, outgoing)
        return results

    def handle_report(self, image: str, sha: str, report: Any, build_id: str | None = None) -> None:
        """Record a build's test report on its version and tell the thread about failures."""
        if image not in self.config.images:
            raise BadInput(f"test report for unknown image {image!r}")
        sha = check_full_sha(sha)
        report = check_report(report)
        recorder = Pipeline(build_id or "report")  # a malformed build ID is bad input too
        summary = summarize(report, build_id)
        with self.store.read() as tx:
            version = tx.versions.get(image, sha)
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
            self.nbenv.record_version(
                recorder,
                image,
                sha,
                report=report,
                subject=same_build.subject if same_build else None,
                branch=same_build.branch if same_build else None,
                build_id=build_id,
            )
        with self.store.write(audited=False) as tx:
            key = (image, sha)
            transition = add_tests(self._lock(tx, {key})[key], image, sha, summary)
            if transition.applied:
                self._save(tx, {key: transition.state}, [(key, m) for m in transition.messages])
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
        return tx.threads.state(image, sha)

    def _lock(
        self, tx: Tx, keys: set[ThreadKey], *, decide_root: bool = False
    ) -> dict[ThreadKey, dict[str, Any]]:
        """The threads' states, locked until the transaction ends; created when new.

        DECIDE_ROOT: settle whose message each root is, just before the relay would queue
        its own root message (in the same transaction).
        """
        rows = tx.threads.lock(keys, channel_of=lambda image: self.config.images[image].channel)
        states = {key: dict(row.state or {}) for key, row in rows.items()}
        undecided = sorted(key for key in keys if states[key].get("root") is None)
        if decide_root and undecided:
            # Someone else's message opened a thread (a manual publish, an approval): the
            # relay then reports by replies and leaves that root alone.
            counts = tx.outbox.count_by_thread(undecided)
            for key in undecided:
                foreign = rows[key].ts is not None or counts.get(key, 0) > 0
                states[key]["root"] = ROOT_FOREIGN if foreign else ROOT_RELAY
        return states

    def _save(
        self,
        tx: Tx,
        states: Mapping[ThreadKey, dict[str, Any]],
        outgoing: Sequence[tuple[ThreadKey, Outgoing]],
    ) -> None:
        """Store the threads' new states and queue their messages, in a round trip each."""
        tx.threads.save(
            (key, state, state.get("progress", [0])[0] if state.get("build") else 0)
            for key, state in states.items()
        )
        self.notifier.notify_many(
            tx, [self._notification(key, message) for key, message in coalesce(outgoing)]
        )

    def _notification(self, key: ThreadKey, message: Outgoing) -> tuple[str, Notification]:
        """MESSAGE of the thread KEY as what the core tells people, with the key that
        queues it once."""
        image, sha = key
        dedupe_key = f"build:{image}:{sha}:{message.key}"
        if message.kind == "update":
            return dedupe_key, ThreadRootUpdate(image, sha, message.text)
        channel = self.config.images[image].channel
        # Link previews off: every step's message links the build's log.
        return dedupe_key, Announcement(channel, image, sha, message.text, link_previews=False)

    # -- what a SUCCESS triggers -----------------------------------------------------------

    def _run_action(self, image: str, sha: str, key: str) -> None:
        kind, build_id = key.split(":", 1)
        with self.store.read() as tx:
            build = current_build(self._state(tx, image, sha), image, sha)
        build = build if build is not None and build.build_id == build_id else None
        actor = Pipeline(build_id)  # the pipeline's rights: only a build's own event has them
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
                    applied = (
                        tx.idempotency.claimed(f"promote:{image}:{sha}:{build_id}") is not None
                    )
            if applied:
                # The pointer moved with its claim; what failed was syncing the registry
                # (a saga the core finishes on recovery), not the publication itself.
                log.warning("relay: %s of %s `%s`: %s", kind, image, short(sha), error.message)
                outcome, text = "done", None
            else:
                outcome, text = "refused", messages.refused(kind, build_id, sha, error.message)
        with self.store.write(audited=False) as tx:
            thread = (image, sha)
            state = finish_action(self._lock(tx, {thread})[thread], key, outcome)
            reply = [(thread, Outgoing("reply", f"{key}:{outcome}", text))] if text else []
            self._save(tx, {thread: state}, reply)
        log.info("relay: %s of %s `%s` by build %s: %s", kind, image, short(sha), build_id, outcome)

    def _publish(
        self, actor: str, image: str, sha: str, build_id: str, build: BuildEvent | None
    ) -> tuple[str, str | None]:
        with self.store.read() as tx:
            version = tx.versions.get(image, sha)
        report = version.report if version is not None and version.build_id == build_id else None
        staging_branch = self.config.images[image].source.staging_branch
        base = f"publish:{image}:{sha}:{build_id}"
        for attempt in range(CONFLICT_RETRIES):
            try:
                self.nbenv.publish(
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
            if tx.pointers.state(image).sha(Env.STAGING) == sha:
                return True
            return any(
                row["env"] == Env.STAGING.value and row["new_sha"] == sha and row["actor"] == actor
                for row in tx.pointers.history(image)
            )

    def _promote(self, actor: str, image: str, sha: str, build_id: str) -> tuple[str, str | None]:
        key = f"promote:{image}:{sha}:{build_id}"
        production_branch = self.config.images[image].source.production_branch
        with self.store.read() as tx:
            state = tx.pointers.state(image)
            done = tx.idempotency.claimed(key) is not None
        if done:
            return "done", None
        if state.sha(Env.PRODUCTION) == sha:
            return "done", f"ℹ️ `{short(sha)}` already is in production: nothing to promote"
        if state.sha(Env.STAGING) != sha:
            reason = messages.not_staging(sha, state.sha(Env.STAGING), production_branch)
            with self.store.write() as tx:
                tx.audit.append(
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
            self.nbenv.execute(actor, Promote(image=image), key=key, expect=state.generations())
        except (Refused, Conflict) as error:
            with self.store.read() as tx:
                if (
                    tx.idempotency.claimed(key) is not None
                ):  # another instance promoted it meanwhile
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
        now = iso(self.store.clock())
        with self.store.read() as tx:
            return tx.outbox.sending_in_thread(image, sha, now)


def _one_line(text: str, limit: int = 300) -> str:
    """TEXT for a log line: one line, and short."""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return _UNPRINTABLE.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def _transient(error: BaseException) -> bool:
    """A fault that a later delivery can get past: the database unreachable or busy (a
    connection lost, a lock or statement timeout), a write that lost a race.

    What a value of the event sets off (a DataError, an IntegrityError, a bug) is not.
    """
    return isinstance(error, Conflict | ConnectionError) or is_transient_fault(error)
