"""Delivery of queued Slack messages: retries with backoff, honours 429 Retry-After, never
posts twice, survives a restart.

Every message is first committed to the `outbox` table together with the state change
that caused it. The sender claims due rows with a lease, calls the Web API (through a
`Transport`: Slack's Web API, or the console) and records the outcome. Messages of one
thread go out in order: a reply waits for its root's `ts`.

Never twice: an outcome that is neither a clear success nor a clear refusal (a read
time-out after Slack stored the message, a dropped connection, HTTP 5xx, `fatal_error`,
`internal_error`, `request_timeout`), like a crash mid-send (a lease that expired), leaves
the message "unsure": before it is sent again it is looked up in Slack by the key in its
metadata (conversations.history, or conversations.replies in a thread, with
include_all_metadata), and a message found there is recorded as sent.

Rate limits are Slack's, per method and channel: a 429 holds every message behind it for
that method in that channel until its Retry-After is over (the rows it held are due no
sooner, for every instance), so nothing overtakes it and each thread keeps its order; a
channel Slack rate-limited then gets chat.postMessage calls at Slack's pace, about one a
second, until it has been calm a minute (SLACK_PACE; `Pace` paces from the start).

A message Slack refuses for good is parked as `dead` and never holds its thread up: the
messages behind it go out, and a root update whose root never made it is posted as the
thread's new root. Messages refused because the bot is not in the channel
(`not_in_channel`) are sent again once it is: on Slack's `member_joined_channel` event,
before any newer message of their thread (so that none overtakes them, should the event
come late), and, should that event be missed, every REVIVE_EVERY (see
`revive_missing_channel`).
Every payload is cut to Slack's limits on the way out (`bot.slack.blocks.fit_message`).

Refusals that concern the app rather than one message (the token was revoked, the
workspace deactivated it, a scope is missing: APP_WIDE_ERRORS) pause delivery instead:
every message stays queued, in order, the operator is told (one log line, `/healthz`,
the owners' App Home), and every PROBE_EVERY a cheap `auth.test` (or, for a missing
scope, the first message itself) checks whether Slack takes them again.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.webhook import WebhookClient

from bot.slack.blocks import fit_message, message_blocks
from bot.slack.transport import (
    METADATA_EVENT,
    AppRefused,
    DeliveryError,
    RateLimited,
    Refused,
    Transport,
    Unsure,
    WebApiTransport,
)
from bot.store.repositories.threads import ThreadRoot
from bot.store.uow import Store, iso

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_BACKOFF_S = 300
MAX_ATTEMPTS = 15
PROBE_EVERY = timedelta(minutes=1)
UNSURE = "unsure: "  # last_error of a message Slack may have: looked up before a resend
# Refusals that end once the bot is invited to the channel: sent again when it joins.
MISSING_FROM_CHANNEL = ("not_in_channel", "channel_not_found")
REVIVE_WITHIN = timedelta(days=7)  # older messages are history: not posted after the fact
REVIVE_EVERY = timedelta(minutes=10)


@dataclass(frozen=True)
class DeliveryPause:
    """Delivery stopped by an app-wide refusal (REASON, Slack's error) SINCE; the next
    check that Slack takes messages again is at NEXT_PROBE."""

    reason: str
    since: datetime
    next_probe: datetime

    def describe(self) -> dict[str, str]:
        return {"paused": "yes", "reason": self.reason, "since": iso(self.since)}


# The pause of the sender delivering for each store in this process (see delivery_pause).
_pauses: weakref.WeakKeyDictionary[Store, DeliveryPause] = weakref.WeakKeyDictionary()


def delivery_pause(store: Store) -> DeliveryPause | None:
    """Why delivery to Slack is paused in this process, or None when it is not."""
    return _pauses.get(store)


# -- the sender ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pace:
    """How fast a paced method may post in one channel: BURST at once, then PER_SECOND.
    With ONCE_LIMITED, only in a channel where Slack answered 429 in the last CALM_S
    seconds; until then it goes as fast as Slack takes it."""

    per_second: float
    burst: int = 1
    once_limited: bool = False
    calm_s: float = 60.0


# Slack: chat.postMessage "generally allows posting one message per second per channel",
# and short bursts are tolerated (api.slack.com/apis/rate-limits): a channel goes at full
# speed until Slack rate-limits it, then at one a second until it has been calm a minute.
SLACK_PACE = Pace(per_second=1.0, burst=1, once_limited=True)
PACED_METHODS = frozenset({"chat.postMessage"})

Destination = tuple[str, str]  # (Web API method, channel): what Slack rate-limits


class OutboxSender:
    def __init__(
        self,
        store: Store,
        transport: Transport | WebClient,
        *,
        webhook_factory: Callable[[str], WebhookClient] = WebhookClient,
        pace: Pace | None = SLACK_PACE,
    ) -> None:
        """Deliver STORE's outbox through TRANSPORT (a WebClient is Slack's Web API); each
        channel gets chat.postMessage calls at most at PACE (None: as fast as Slack takes
        them; a 429's Retry-After is honoured whatever the pace)."""
        self.store = store
        self.transport: Transport = (
            WebApiTransport(transport, webhook_factory=webhook_factory)
            if isinstance(transport, WebClient)
            else transport
        )
        self.pace = pace
        self._holds: dict[Destination, datetime] = {}  # Retry-After, until (store clock)
        self._buckets: dict[Destination, tuple[float, float]] = {}  # (tokens, at) monotonic
        self._limited: dict[Destination, float] = {}  # Slack's last 429 there (monotonic)

    # -- public ----------------------------------------------------------------------------

    def deliver_due(self, limit: int = 100) -> int:
        """Send what is due, in order; returns how many messages were delivered.

        Three short transactions a pass, whatever it sends: one read finds the unsent rows
        and their threads, one claims the due ones, one records the outcomes. A response_url
        answer, which Slack cannot be asked about after a crash, is recorded as soon as it
        is sent; a Web API message posted but not yet recorded when the process dies, or
        whose answer never came, is found in Slack by its key before it is sent again.
        """
        now = self.store.clock()
        if not self._may_send(now):
            return 0
        rows, threads = self._queue(limit)
        lanes, superseded = _plan(
            rows, iso(now), limit, admit=lambda row: self._admit(_destination(row, threads), now)
        )
        payloads = self._claim([row for lane in lanes for row in lane], superseded, now)
        outcomes: list[tuple[Any, dict[str, Any]]] = []
        roots: list[tuple[Any, dict[str, Any], dict[str, Any]]] = []
        delivered = 0
        paused = False
        try:
            for lane in lanes:
                stopped = paused
                for row in lane:
                    payload = payloads.get(row.id)
                    if stopped or payload is None:
                        # Another sender has it, or an earlier message of its thread failed.
                        stopped = True
                        if payload is not None:  # give it back as it was
                            outcomes.append((row, _given_back(row)))
                        continue
                    outcome = self._send(row, payload, threads, now)
                    outcomes.append((row, outcome.values))
                    if outcome.paused_by is not None:
                        # Nothing can be sent: every message keeps its place for later.
                        self._pause(outcome.paused_by, now)
                        paused = stopped = True
                        continue
                    if outcome.response is None:
                        # A message refused for good does not hold up the rest of its
                        # thread; one that will be retried keeps its place in the order.
                        stopped = outcome.values["status"] != "dead"
                        continue
                    delivered += 1
                    if _opens_thread(row, outcome.method, outcome.payload):
                        roots.append((row, outcome.payload, outcome.response))
                        threads[(row.thread_image, row.thread_sha)] = ThreadRoot(
                            outcome.response.get("channel") or outcome.payload["channel"],
                            outcome.response["ts"],
                        )
                    if row.method == "response_url":
                        self._record(outcomes, roots)
                        outcomes, roots = [], []
        finally:
            # Even when the pass is cut short, what reached Slack is on record.
            self._record(outcomes, roots)
        if not paused:
            self._resume()
        return delivered

    @property
    def pause(self) -> DeliveryPause | None:
        """Why delivery is paused, or None (see APP_WIDE_ERRORS)."""
        return _pauses.get(self.store)

    def revive_missing_channel(self, channel: str | None = None) -> int:
        """See `revive_missing_channel`; also what REVIVE_EVERY does, CHANNEL None."""
        return revive_missing_channel(self.store, channel)

    def pending(self) -> int:
        with self.store.read() as tx:
            return tx.outbox.unsent_count()

    def drain(self, timeout_s: float = 30.0, poll_s: float = 0.05) -> int:
        """Deliver until nothing is pending or TIMEOUT_S passes; returns what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.deliver_due()
            left = self.pending()
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(poll_s)

    # -- pause ---------------------------------------------------------------------------

    def _may_send(self, now: datetime) -> bool:
        """False while delivery is paused; when a probe is due, whether Slack may take
        messages again (a missing scope is probed by sending: auth.test cannot tell)."""
        pause = self.pause
        if pause is None:
            return True
        if now < pause.next_probe:
            return False
        if pause.reason != "missing_scope":
            try:
                self.transport.check()
            except AppRefused as refusal:
                _pauses[self.store] = DeliveryPause(refusal.reason, pause.since, now + PROBE_EVERY)
                return False
            except DeliveryError:
                _pauses[self.store] = DeliveryPause(pause.reason, pause.since, now + PROBE_EVERY)
                return False
        return True  # the pass tells: it pauses again, or `_resume` ends the pause

    def _resume(self) -> None:
        pause = _pauses.pop(self.store, None)
        if pause is not None:
            log.warning("outbox: Slack takes messages again (%s is over): resumed", pause.reason)

    def _pause(self, reason: str, now: datetime) -> None:
        if self.store not in _pauses:
            log.error(
                "outbox: Slack refused the app (%s): delivery paused, nothing is lost; "
                "fix the token or the app's scopes (reinstall the app) and it resumes within %ds",
                reason,
                PROBE_EVERY.total_seconds(),
            )
            since = now
        else:
            since = _pauses[self.store].since
        _pauses[self.store] = DeliveryPause(reason, since, now + PROBE_EVERY)

    # -- rate limits -----------------------------------------------------------------------

    def _admit(self, destination: Destination, now: datetime) -> bool:
        """Whether a message may go to DESTINATION in this pass: not while a Retry-After
        holds it, and, for a paced method, only as fast as PACE lets it."""
        if self._held_until(destination, now) is not None:
            return False
        clock = time.monotonic()
        pace = self._pace_of(destination, clock)
        if pace is None:
            return True
        burst = float(pace.burst)
        tokens, at = self._buckets.get(destination, (burst, clock))
        tokens = min(burst, tokens + (clock - at) * pace.per_second)
        if tokens < 1.0:
            self._buckets[destination] = (tokens, clock)
            return False
        self._buckets[destination] = (tokens - 1.0, clock)
        return True

    def _pace_of(self, destination: Destination, clock: float) -> Pace | None:
        """The pace DESTINATION keeps now, if any (see Pace.once_limited)."""
        pace = self.pace
        if pace is None or destination[0] not in PACED_METHODS:
            return None
        if pace.once_limited:
            limited_at = self._limited.get(destination)
            if limited_at is None:
                return None
            if clock - limited_at > pace.calm_s:
                del self._limited[destination]
                self._buckets.pop(destination, None)
                return None
        return pace

    def _rate_limited(self, destination: Destination, retry_after_s: float, now: datetime) -> None:
        """Slack answered 429 for DESTINATION: everything for it waits RETRY_AFTER_S, then
        goes at the pace (from an empty bucket: no burst straight after a 429)."""
        self._holds[destination] = now + timedelta(seconds=retry_after_s)
        clock = time.monotonic()
        self._limited[destination] = clock
        self._buckets[destination] = (0.0, clock)

    def _held_until(self, destination: Destination, now: datetime) -> datetime | None:
        until = self._holds.get(destination)
        if until is not None and until <= now:
            del self._holds[destination]
            return None
        return until

    # -- one pass ------------------------------------------------------------------------

    def _queue(self, limit: int) -> tuple[list[Any], dict[tuple[str, str], ThreadRoot]]:
        """The unsent rows (without payloads), and the roots of their threads.

        A thread whose earlier messages Slack refused because the bot was not in the channel
        gets those again first: the newer ones are about to go, and Slack may take them now
        (the bot was invited, and its member_joined_channel is late or lost), so they would
        overtake the older ones in the thread. Should the bot still be out, all are refused
        again, in order (only when a newer one is due: not a call to Slack every pass)."""
        now = self.store.clock()
        since, due = iso(now - REVIVE_WITHIN), iso(now)
        revived = False
        while True:
            with self.store.read() as tx:
                rows = tx.outbox.unsent(limit * 5)
                keys = {(r.thread_image, r.thread_sha) for r in rows if r.thread_image is not None}
                going = {
                    (r.thread_image, r.thread_sha)
                    for r in rows
                    if r.thread_image is not None and r.next_attempt_at <= due
                }
                if revived or not tx.outbox.dead(MISSING_FROM_CHANNEL, since, threads=going):
                    return rows, tx.threads.roots(keys)
            revive_missing_channel(self.store, threads=going)
            revived = True

    def _claim(
        self, rows: list[Any], superseded: list[int], now: datetime
    ) -> dict[int, dict[str, Any]]:
        """Take ROWS for sending (their payloads by id); rows another sender took since
        they were read are left out. Root updates made pointless are retired meanwhile."""
        if not rows and not superseded:
            return {}
        with self.store.write(audited=False) as tx:
            if superseded:
                tx.outbox.supersede(superseded)
            if not rows:
                return {}
            return tx.outbox.claim(rows, lease_until=iso(now + LEASE))

    def _send(
        self,
        row: Any,
        stored: dict[str, Any],
        threads: dict[tuple[str, str], ThreadRoot],
        now: datetime,
    ) -> _Outcome:
        """Send one claimed row; what to record of it."""
        payload = stored
        method = row.method
        # Slack may hold this message already: a crash left it mid-send, or its last
        # answer was unclear. Until a look-up says it is not there, it stays so.
        unsure = row.status == "sending" or (row.last_error or "").startswith(UNSURE)
        try:
            method, payload = self._prepare(row, stored, threads)
            destination = (method, str(payload.get("channel") or ""))
            held = self._held_until(destination, now) if method != "response_url" else None
            if held is not None:
                # Slack asked this method to wait in this channel: the message keeps its
                # place behind the one that was refused.
                return _Outcome(_given_back(row, held), payload, method)
            response: dict[str, Any] | None = None
            if unsure and method == "chat.postMessage":
                response = self._find_posted(row, payload)
            unsure = False
            if response is None:
                response = self.transport.send(method, payload)
        except AppRefused as refusal:
            # Not this message's fault: it keeps its place, its attempts and its due time.
            kept = {
                "status": "pending",
                "next_attempt_at": row.next_attempt_at,
                "last_error": _mark(refusal.reason, unsure),
            }
            return _Outcome(kept, payload, method, paused_by=refusal.reason)
        except Refused as refusal:
            log.error("outbox %s %s failed for good: %s", row.id, method, refusal.reason)
            if refusal.reason in MISSING_FROM_CHANNEL:
                log.error(
                    "outbox: the bot is not in channel %s (%s): invite it there "
                    "(/invite @nbenv), or correct the channel ID in the config; its messages "
                    "are sent once it joins",
                    payload.get("channel"),
                    refusal.reason,
                )
            dead = {"status": "dead", "attempts": row.attempts + 1, "last_error": refusal.reason}
            return _Outcome(dead, payload, method)
        except DeliveryError as error:
            return self._later(row, method, payload, error, unsure, now)
        sent = {
            "status": "sent",
            "attempts": row.attempts + 1,
            "sent_at": self.store.now(),
            "last_error": None,
            "response": {k: response.get(k) for k in ("channel", "ts") if k in response},
        }
        return _Outcome(sent, payload, method, response)

    def _later(
        self,
        row: Any,
        method: str,
        payload: dict[str, Any],
        error: DeliveryError,
        unsure: bool,
        now: datetime,
    ) -> _Outcome:
        """ROW goes again after ERROR's delay; a 429 holds its method in its channel."""
        counts = not isinstance(error, RateLimited)
        if isinstance(error, RateLimited) and method != "response_url":
            self._rate_limited((method, str(payload.get("channel") or "")), error.delay_s, now)
        if isinstance(error, Unsure) and method == "chat.postMessage":
            log.warning(
                "outbox %s: Slack may have posted it (%s): it is looked up before any resend",
                row.id,
                error.reason,
            )
            unsure = True
        attempts = row.attempts + (1 if counts else 0)
        log.warning(
            "outbox %s %s: %s (retry in %.1fs)", row.id, method, error.reason, error.delay_s
        )
        later = self.store.clock() + timedelta(seconds=error.delay_s)
        values = {
            "status": "dead" if attempts >= MAX_ATTEMPTS else "pending",
            "attempts": attempts,
            "last_error": _mark(error.reason, unsure),
            "next_attempt_at": iso(later),
        }
        return _Outcome(values, payload, method)

    def _find_posted(self, row: Any, payload: dict[str, Any]) -> dict[str, Any] | None:
        """The message ROW if Slack has it; None when it does not, or can never tell.
        Raises Unsure when it cannot tell now (the look-up is tried again later)."""
        channel = str(payload["channel"])
        try:
            found = self.transport.find_posted(channel, payload.get("thread_ts"), row.dedupe_key)
        except (AppRefused, Unsure):
            raise
        except Refused as refusal:
            # Slack will not let the bot read there (e.g. it posts without being a member):
            # sending again risks a double, not sending loses the message for good.
            log.warning(
                "outbox %s: cannot look it up in %s (%s): sending it again",
                row.id,
                channel,
                refusal.reason,
            )
            return None
        except DeliveryError as error:
            raise Unsure(f"look-up: {error.reason}", error.delay_s) from None
        if found is not None:
            log.info("outbox %s: Slack had posted it (ts %s): not sent again", row.id, found["ts"])
        return found

    def _record(
        self,
        outcomes: list[tuple[Any, dict[str, Any]]],
        roots: list[tuple[Any, dict[str, Any], dict[str, Any]]],
    ) -> None:
        """Write the outcomes of sent rows, and the roots they opened, in one transaction."""
        if not outcomes:
            return
        with self.store.write(audited=False) as tx:
            # Thread rows first, in key order, then outbox rows: the relay locks in the same
            # order (threads, then their messages), so the two never deadlock.
            tx.threads.set_roots(
                (
                    (row.thread_image, row.thread_sha),
                    response.get("channel") or payload["channel"],
                    response["ts"],
                )
                for row, payload, response in roots
            )
            tx.outbox.record((row.id, values) for row, values in outcomes)

    def _prepare(
        self, row: Any, payload: dict[str, Any], threads: dict[tuple[str, str], ThreadRoot]
    ) -> tuple[str, dict[str, Any]]:
        """The Web API method and payload that send ROW now, cut to Slack's limits."""
        buttons = payload.pop("buttons", None)
        if buttons and "blocks" not in payload:
            payload["blocks"] = message_blocks(payload.get("text", ""), buttons)
        method = row.method
        thread = threads.get((row.thread_image, row.thread_sha)) if row.thread_image else None
        if method == "chat.update":
            if thread is None:
                raise Refused("thread_not_found")
            if thread.ts is None:
                # Nothing ahead of it in its thread is still to be sent, so the root failed
                # for good: this update, the thread's newest state, opens it instead.
                log.info("outbox %s: the thread's root was never posted: posting it now", row.id)
                method = "chat.postMessage"
                payload = {**payload, "channel": thread.channel, "unfurl_links": False}
            else:
                payload["channel"] = thread.channel
                payload["ts"] = thread.ts
        elif method == "chat.postMessage" and thread is not None and thread.ts is not None:
            payload["thread_ts"] = thread.ts
            payload["channel"] = thread.channel
        if method == "chat.postMessage":
            payload["metadata"] = {
                "event_type": METADATA_EVENT,
                "event_payload": {"key": row.dedupe_key},
            }
        return method, fit_message(payload)


def revive_missing_channel(
    store: Store, channel: str | None = None, *, threads: set[tuple[str, str]] | None = None
) -> int:
    """Queue again the messages Slack refused because the bot was not in CHANNEL (in any
    channel when None; only in THREADS, if given), now that it may be; how many were queued
    again.

    In a thread that got a root meanwhile (an update opened it), root texts older than the
    newest one are retired instead: the root already shows what they said, and posting
    them would only repeat a stale status. Replies, announcements and their buttons go
    out, in their thread. Messages older than REVIVE_WITHIN are left as they are.
    """
    since = iso(store.clock() - REVIVE_WITHIN)
    with store.write(audited=False) as tx:
        rows = tx.outbox.dead(MISSING_FROM_CHANNEL, since, threads)
        keys = {(r.thread_image, r.thread_sha) for r in rows if r.thread_image is not None}
        threads = tx.threads.roots(keys)
        newest_root_text = _newest_root_texts(tx.outbox.in_threads(keys))
        revive: list[int] = []
        retire: list[int] = []
        for row in rows:
            thread = threads.get((row.thread_image, row.thread_sha))
            where = (row.payload or {}).get("channel") or (thread.channel if thread else None)
            if channel is not None and where != channel:
                continue
            stale = (
                thread is not None
                and thread.ts is not None
                and _is_root_text(row.method, row.dedupe_key)
                and newest_root_text.get((row.thread_image, row.thread_sha)) != row.id
            )
            (retire if stale else revive).append(row.id)
        if retire:
            tx.outbox.retire(retire)
        if revive:
            tx.outbox.revive(revive)
    if revive:
        log.info("outbox: %d messages refused for a missing channel queued again", len(revive))
    return len(revive)


def missing_channels(store: Store) -> dict[str, int]:
    """Channels the bot is not in, by how many messages wait for it there (REVIVE_WITHIN)."""
    since = iso(store.clock() - REVIVE_WITHIN)
    with store.read() as tx:
        rows = tx.outbox.dead_destinations(MISSING_FROM_CHANNEL, since)
    counts: dict[str, int] = {}
    for payload, thread_channel in rows:
        channel = (payload or {}).get("channel") or thread_channel
        if isinstance(channel, str):
            counts[channel] = counts.get(channel, 0) + 1
    return counts


def _is_root_text(method: str, dedupe_key: str) -> bool:
    """A thread root's text: the relay's root message (key `build:IMAGE:SHA:root`, see
    bot.builds.relay) or one of its updates."""
    return method == "chat.update" or (
        dedupe_key.startswith("build:") and dedupe_key.endswith(":root")
    )


def _newest_root_texts(rows: list[Any]) -> dict[tuple[str, str], int]:
    """The id of the newest root text of each thread among ROWS (in queue order)."""
    newest: dict[tuple[str, str], int] = {}
    for row in rows:
        if _is_root_text(row.method, row.dedupe_key):
            newest[(row.thread_image, row.thread_sha)] = row.id
    return newest


def _plan(
    rows: list[Any], due: str, limit: int, admit: Callable[[Any], bool] = lambda row: True
) -> tuple[list[list[Any]], list[int]]:
    """What a pass sends, by thread in order (at most LIMIT rows, each one ADMIT lets go
    now), and the root updates that a newer one queued for the same thread makes pointless."""
    lanes: dict[tuple[Any, ...], list[Any]] = {}
    for row in rows:
        lanes.setdefault(_lane(row), []).append(row)
    superseded = [
        row.id
        for lane_rows in lanes.values()
        for index, row in enumerate(lane_rows)
        if _is_superseded(row, lane_rows[index + 1 :])
    ]
    skip = set(superseded)
    chosen: list[list[Any]] = []
    count = 0
    for lane_rows in lanes.values():
        # Messages of one thread keep their order: nothing overtakes an unsent one.
        lane: list[Any] = []
        for row in lane_rows:
            if row.id in skip:
                continue
            if row.next_attempt_at > due or count >= limit or not admit(row):
                break
            lane.append(row)
            count += 1
        if lane:
            chosen.append(lane)
    return chosen, superseded


def _destination(row: Any, threads: dict[tuple[str, str], ThreadRoot]) -> Destination:
    """The method and channel ROW will be sent with (see OutboxSender._prepare)."""
    thread = threads.get((row.thread_image, row.thread_sha)) if row.thread_image else None
    channel = thread.channel if thread is not None else row.channel
    method = row.method
    if method == "chat.update" and (thread is None or thread.ts is None):
        method = "chat.postMessage"  # an update whose root never made it opens the thread
    return method, str(channel or "")


def _given_back(row: Any, held_until: datetime | None = None) -> dict[str, Any]:
    """ROW as it was before it was claimed; due no sooner than HELD_UNTIL."""
    due = row.next_attempt_at
    if held_until is not None:
        due = max(due, iso(held_until))
    return {"status": row.status, "next_attempt_at": due}


def _mark(reason: str, unsure: bool) -> str:
    """last_error for REASON; marked when Slack may have the message (see UNSURE)."""
    return f"{UNSURE}{reason}" if unsure and not reason.startswith(UNSURE) else reason


def _lane(row: Any) -> tuple[Any, ...]:
    if row.thread_image is not None:
        return ("thread", row.thread_image, row.thread_sha)
    return ("message", row.id)


def _is_superseded(row: Any, later: list[Any]) -> bool:
    """A root update is pointless when a newer one for the same thread is queued."""
    return (
        row.method == "chat.update"
        and row.thread_image is not None
        and row.status == "pending"
        and any(other.method == "chat.update" for other in later)
    )


@dataclass(frozen=True)
class _Outcome:
    """A send attempt: the row's new values; Slack's RESPONSE when it was delivered."""

    values: dict[str, Any]
    payload: dict[str, Any]
    method: str
    response: dict[str, Any] | None = None
    paused_by: str | None = None  # an app-wide refusal: delivery pauses


def _opens_thread(row: Any, method: str, payload: dict[str, Any]) -> bool:
    """The first message delivered for (image, sha) is its thread's root."""
    return bool(method == "chat.postMessage" and row.thread_image and not payload.get("thread_ts"))
