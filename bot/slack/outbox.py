"""Delivery of queued Slack messages: retries with backoff, honours 429 Retry-After, never
posts twice, survives a restart.

Every message is first committed to the `outbox` table together with the state change
that caused it. The sender claims due rows with a lease, calls the Web API and records
the outcome. Messages of one thread go out in order: a reply waits for its root's `ts`.
A row whose lease expired while it was being sent (the process died mid-call) is looked
up in Slack by its metadata key before it is sent again, so a crash cannot double-post.

A message Slack refuses for good is parked as `dead` and never holds its thread up: the
messages behind it go out, and a root update whose root never made it is posted as the
thread's new root. Messages refused because the bot is not in the channel
(`not_in_channel`) are sent again once it is: on Slack's `member_joined_channel` event
and, should that event be missed, every REVIVE_EVERY (see `revive_missing_channel`).
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
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.webhook import WebhookClient

from bot.slack.blocks import fit_message, message_blocks
from bot.store.repositories.threads import ThreadRoot
from bot.store.uow import Store, iso

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_BACKOFF_S = 300
MAX_ATTEMPTS = 15
METADATA_EVENT = "nbenv_outbox"
# Errors that a retry cannot fix: the message is parked as `dead` with the reason.
PERMANENT_ERRORS = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_blocks",
    "msg_too_long",
    "no_text",
    "cant_update_message",
    "message_not_found",
    "edit_window_closed",
    "unknown_method",
    "invalid_arguments",
    "no_permission",
    "too_many_attachments",
    "ekm_access_denied",
}
# ...and so is every `restricted_action*` (a channel where posting is restricted).
PERMANENT_PREFIXES = ("restricted_action",)
# Errors that say the app cannot send anything right now, whatever the message: delivery
# pauses (nothing is discarded) until Slack takes messages again.
APP_WIDE_ERRORS = {
    "token_revoked",
    "token_expired",
    "account_inactive",
    "invalid_auth",
    "not_authed",
    "missing_scope",
}
PROBE_EVERY = timedelta(minutes=1)
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


class _Pause(Exception):
    """Slack refused for a reason that concerns the app, not the message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _Retry(Exception):
    def __init__(self, delay_s: float, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.reason = reason
        self.counts = counts


class OutboxSender:
    def __init__(
        self,
        store: Store,
        client: WebClient,
        *,
        webhook_factory: Callable[[str], WebhookClient] = WebhookClient,
    ) -> None:
        self.store = store
        self.client = client
        self.webhook_factory = webhook_factory

    # -- public ----------------------------------------------------------------------------

    def deliver_due(self, limit: int = 100) -> int:
        """Send what is due, in order; returns how many messages were delivered.

        Three short transactions a pass, whatever it sends: one read finds the unsent rows
        and their threads, one claims the due ones, one records the outcomes. A response_url
        answer, which Slack cannot be asked about after a crash, is recorded as soon as it
        is sent; a Web API message posted but not yet recorded when the process dies is
        found in Slack by its key before it is sent again.
        """
        now = self.store.clock()
        if not self._may_send(now):
            return 0
        rows, threads = self._queue(limit)
        lanes, superseded = _plan(rows, iso(now), limit)
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
                            values = {"status": row.status, "next_attempt_at": row.next_attempt_at}
                            outcomes.append((row, values))
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
                self.client.auth_test()
            except SlackApiError as error:
                code = _error_code(error)
                reason = code if code in APP_WIDE_ERRORS else pause.reason
                _pauses[self.store] = DeliveryPause(reason, pause.since, now + PROBE_EVERY)
                return False
            except (SlackRequestError, OSError):
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

    # -- one pass ------------------------------------------------------------------------

    def _queue(self, limit: int) -> tuple[list[Any], dict[tuple[str, str], ThreadRoot]]:
        """The unsent rows (without payloads), and the roots of their threads."""
        with self.store.read() as tx:
            rows = tx.outbox.unsent(limit * 5)
            keys = {(r.thread_image, r.thread_sha) for r in rows if r.thread_image is not None}
            return rows, tx.threads.roots(keys)

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
        crashed_mid_send = row.status == "sending"
        payload = stored
        method = row.method
        try:
            method, payload = self._prepare(row, stored, threads)
            response: dict[str, Any] | None = None
            if crashed_mid_send and method == "chat.postMessage":
                response = self._find_posted(row, payload)
            if response is None:
                response = self._call(method, payload)
        except _Pause as pause:
            # Not this message's fault: it keeps its place, its attempts and its due time.
            kept = {
                "status": "pending",
                "next_attempt_at": row.next_attempt_at,
                "last_error": pause.reason,
            }
            return _Outcome(kept, payload, method, paused_by=pause.reason)
        except _Retry as retry:
            attempts = row.attempts + (1 if retry.counts else 0)
            log.warning(
                "outbox %s %s: %s (retry in %.1fs)", row.id, row.method, retry.reason, retry.delay_s
            )
            later = self.store.clock() + timedelta(seconds=retry.delay_s)
            retry_values = {
                "status": "dead" if attempts >= MAX_ATTEMPTS else "pending",
                "attempts": attempts,
                "last_error": retry.reason,
                "next_attempt_at": iso(later),
            }
            return _Outcome(retry_values, payload, method)
        except SlackApiError as error:
            reason = str(error.response.get("error") or error)
            log.error("outbox %s %s failed for good: %s", row.id, method, reason)
            if reason in MISSING_FROM_CHANNEL:
                log.error(
                    "outbox: the bot is not in channel %s (%s): invite it there "
                    "(/invite @nbenv), or correct the channel ID in the config; its messages "
                    "are sent once it joins",
                    payload.get("channel"),
                    reason,
                )
            dead = {"status": "dead", "attempts": row.attempts + 1, "last_error": reason}
            return _Outcome(dead, payload, method)
        sent = {
            "status": "sent",
            "attempts": row.attempts + 1,
            "sent_at": self.store.now(),
            "last_error": None,
            "response": {k: response.get(k) for k in ("channel", "ts") if k in response},
        }
        return _Outcome(sent, payload, method, response)

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
            for row, payload, response in sorted(
                roots, key=lambda r: (r[0].thread_image, r[0].thread_sha)
            ):
                tx.threads.set_root(
                    row.thread_image,
                    row.thread_sha,
                    channel=response.get("channel") or payload["channel"],
                    ts=response["ts"],
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
                raise SlackApiError(
                    "no thread to update", {"ok": False, "error": "thread_not_found"}
                )
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

    def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            if method == "response_url":
                url = payload.pop("url")
                user = payload.pop("user", None)  # who asked, when the answer names them
                result = self.webhook_factory(url).send_dict(payload)
                if result.status_code == 429:
                    raise _Retry(_retry_after(result.headers), "rate limited", counts=False)
                if result.status_code >= 500:
                    raise _Retry(5, f"HTTP {result.status_code}")
                if result.status_code in (404, 410) and user:
                    # The response_url is gone (Slack: 30 minutes or 5 uses; it answers
                    # 404 expired_url): the answer goes to the person as a DM instead.
                    log.info("response_url gone (%s): answering %s directly", result.body, user)
                    direct = {k: payload[k] for k in ("text", "blocks") if k in payload}
                    return self.client.api_call(  # type: ignore[return-value]
                        "chat.postMessage", json={"channel": user, **direct}
                    ).data
                if result.status_code >= 400:
                    # An expired response_url (30 minutes, 5 uses) cannot be fixed by retrying.
                    raise SlackApiError(
                        f"response_url answered {result.status_code}",
                        {"ok": False, "error": f"http_{result.status_code}"},
                    )
                return {"ok": True}
            return self.client.api_call(method, json=payload).data  # type: ignore[return-value]
        except SlackApiError as error:
            status = getattr(error.response, "status_code", 200)
            code = _error_code(error)
            if code in APP_WIDE_ERRORS:
                raise _Pause(code) from None
            if status == 429 or code == "ratelimited":
                raise _Retry(
                    _retry_after(error.response.headers), "rate limited", counts=False
                ) from None
            if status >= 500 or code in {"internal_error", "fatal_error", "service_unavailable"}:
                raise _Retry(5, f"HTTP {status} {code or ''}".strip()) from None
            if code in PERMANENT_ERRORS or (code or "").startswith(PERMANENT_PREFIXES):
                raise
            raise _Retry(10, f"{code or status}") from None
        except (SlackRequestError, OSError) as error:
            raise _Retry(5, f"network: {error}") from None

    def _find_posted(self, row: Any, payload: dict[str, Any]) -> dict[str, Any] | None:
        """After a crash mid-send, look for the message in Slack before posting it again."""
        try:
            if payload.get("thread_ts"):
                found = self.client.conversations_replies(
                    channel=payload["channel"], ts=payload["thread_ts"], include_all_metadata=True
                )
            else:
                found = self.client.conversations_history(
                    channel=payload["channel"], include_all_metadata=True, limit=100
                )
        except SlackApiError as error:
            if _error_code(error) in APP_WIDE_ERRORS:
                raise _Pause(str(_error_code(error))) from None
            return None  # can't tell: sending again is better than losing the message
        for message in found.get("messages") or []:
            metadata = message.get("metadata") or {}
            if (
                metadata.get("event_type") == METADATA_EVENT
                and (metadata.get("event_payload") or {}).get("key") == row.dedupe_key
            ):
                return {"ok": True, "channel": payload["channel"], "ts": message["ts"]}
        return None


def revive_missing_channel(store: Store, channel: str | None = None) -> int:
    """Queue again the messages Slack refused because the bot was not in CHANNEL (in any
    channel when None), now that it may be; how many were queued again.

    In a thread that got a root meanwhile (an update opened it), root texts older than the
    newest one are retired instead: the root already shows what they said, and posting
    them would only repeat a stale status. Replies, announcements and their buttons go
    out, in their thread. Messages older than REVIVE_WITHIN are left as they are.
    """
    since = iso(store.clock() - REVIVE_WITHIN)
    with store.write(audited=False) as tx:
        rows = tx.outbox.dead(MISSING_FROM_CHANNEL, since)
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


def _plan(rows: list[Any], due: str, limit: int) -> tuple[list[list[Any]], list[int]]:
    """What a pass sends, by thread in order (at most LIMIT rows), and the root updates
    that a newer one queued for the same thread makes pointless."""
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
            if row.next_attempt_at > due or count >= limit:
                break
            lane.append(row)
            count += 1
        if lane:
            chosen.append(lane)
    return chosen, superseded


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


def _error_code(error: SlackApiError) -> str | None:
    response = error.response
    code = response.get("error") if hasattr(response, "get") else None
    return code if isinstance(code, str) else None


def _retry_after(headers: Any) -> float:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return max(float(value), 0.0)
    except (AttributeError, TypeError, ValueError):
        return 1.0
