"""Delivery of queued Slack messages: retries with backoff, honours 429 Retry-After, never
posts twice, survives a restart.

Every message is first committed to the `outbox` table together with the state change
that caused it. The sender claims due rows with a lease, calls the Web API and records
the outcome. Messages of one thread go out in order: a reply waits for its root's `ts`.
A row whose lease expired while it was being sent (the process died mid-call) is looked
up in Slack by its metadata key before it is sent again, so a crash cannot double-post.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.webhook import WebhookClient
from sqlalchemy import select, tuple_, update

from bot.slack.blocks import message_blocks
from bot.store import tables as t
from bot.store.uow import Store, Tx, iso

log = logging.getLogger(__name__)

LEASE = timedelta(seconds=60)
MAX_BACKOFF_S = 300
MAX_ATTEMPTS = 15
METADATA_EVENT = "nbenv_outbox"
_QUEUE_COLUMNS = (
    "id",
    "dedupe_key",
    "method",
    "thread_image",
    "thread_sha",
    "status",
    "attempts",
    "next_attempt_at",
)
# Errors that a retry cannot fix: the message is parked as `dead` with the reason.
PERMANENT_ERRORS = {
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "missing_scope",
    "invalid_blocks",
    "msg_too_long",
    "no_text",
    "cant_update_message",
    "message_not_found",
    "edit_window_closed",
    "unknown_method",
    "not_authed",
    "invalid_arguments",
}


class _Retry(Exception):
    def __init__(self, delay_s: float, reason: str, *, counts: bool = True) -> None:
        super().__init__(reason)
        self.delay_s = delay_s
        self.reason = reason
        self.counts = counts


class _Wait(Exception):
    """Not sendable yet (its thread root is not delivered): try again shortly."""


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

        One read finds the unsent rows and their threads; each message then costs two
        short transactions (claim, outcome), whatever the size of the queue.
        """
        now = self.store.clock()
        with self.store.read() as tx:
            rows = list(
                tx.connection.execute(
                    # Payloads are read by the claim, only for the rows sent in this pass.
                    select(*(t.outbox.c[name] for name in _QUEUE_COLUMNS))
                    .where(t.outbox.c.status.in_(("pending", "sending")))
                    .order_by(t.outbox.c.id)
                    .limit(limit * 5)
                )
            )
            keys = {(r.thread_image, r.thread_sha) for r in rows if r.thread_image is not None}
            threads = _threads(tx, keys)
        lanes: dict[tuple[Any, ...], list[Any]] = {}
        for row in rows:
            lanes.setdefault(_lane(row), []).append(row)
        superseded = [
            row.id
            for lane_rows in lanes.values()
            for index, row in enumerate(lane_rows)
            if _is_superseded(row, lane_rows[index + 1 :])
        ]
        if superseded:
            with self.store.write(audited=False) as tx:
                tx.connection.execute(
                    update(t.outbox)
                    .where(t.outbox.c.id.in_(superseded), t.outbox.c.status == "pending")
                    .values(status="superseded")
                )
        skip = set(superseded)
        due = iso(now)
        delivered = 0
        for lane_rows in lanes.values():
            # Messages of one thread keep their order: nothing overtakes an unsent one.
            for row in lane_rows:
                if row.id in skip:
                    continue
                if row.next_attempt_at > due or delivered >= limit:
                    break
                if not self._deliver(row, now, threads):
                    break
                delivered += 1
        return delivered

    def pending(self) -> int:
        with self.store.read() as tx:
            return len(
                list(
                    tx.connection.execute(
                        select(t.outbox.c.id).where(t.outbox.c.status.in_(("pending", "sending")))
                    )
                )
            )

    def drain(self, timeout_s: float = 30.0, poll_s: float = 0.05) -> int:
        """Deliver until nothing is pending or TIMEOUT_S passes; returns what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.deliver_due()
            left = self.pending()
            if left == 0 or time.monotonic() >= deadline:
                return left
            time.sleep(poll_s)

    # -- one message -------------------------------------------------------------------------

    def _claim(self, row: Any, now: datetime) -> dict[str, Any] | None:
        """Take ROW for sending (its payload), or None when another sender has it."""
        with self.store.write(audited=False) as tx:
            claimed = tx.connection.execute(
                update(t.outbox)
                .where(
                    t.outbox.c.id == row.id,
                    t.outbox.c.status == row.status,
                    t.outbox.c.next_attempt_at == row.next_attempt_at,
                )
                .values(status="sending", next_attempt_at=iso(now + LEASE))
                .returning(t.outbox.c.payload)
            ).first()
            return None if claimed is None else dict(claimed.payload)

    def _deliver(self, row: Any, now: datetime, threads: dict[tuple[str, str], Any]) -> bool:
        crashed_mid_send = row.status == "sending"
        stored = self._claim(row, now)
        if stored is None:
            return False
        try:
            payload = self._prepare(row, stored, threads)
            response: dict[str, Any] | None = None
            if crashed_mid_send and row.method == "chat.postMessage":
                response = self._find_posted(row, payload)
            if response is None:
                response = self._call(row.method, payload)
        except _Wait:
            self._mark(row.id, status="pending", next_attempt_at=iso(now + timedelta(seconds=1)))
            return False
        except _Retry as retry:
            attempts = row.attempts + (1 if retry.counts else 0)
            status = "dead" if attempts >= MAX_ATTEMPTS else "pending"
            log.warning(
                "outbox %s %s: %s (retry in %.1fs)", row.id, row.method, retry.reason, retry.delay_s
            )
            self._mark(
                row.id,
                status=status,
                attempts=attempts,
                last_error=retry.reason,
                next_attempt_at=iso(self.store.clock() + timedelta(seconds=retry.delay_s)),
            )
            return False
        except SlackApiError as error:
            reason = str(error.response.get("error") or error)
            log.error("outbox %s %s failed for good: %s", row.id, row.method, reason)
            self._mark(row.id, status="dead", attempts=row.attempts + 1, last_error=reason)
            return False
        root = self._sent(row, payload, response)
        if root is not None:
            threads[(row.thread_image, row.thread_sha)] = root
        return True

    def _prepare(
        self, row: Any, payload: dict[str, Any], threads: dict[tuple[str, str], Any]
    ) -> dict[str, Any]:
        buttons = payload.pop("buttons", None)
        if buttons and "blocks" not in payload:
            payload["blocks"] = message_blocks(payload.get("text", ""), buttons)
        if row.method == "response_url":
            return payload
        if row.method == "chat.postMessage":
            payload["metadata"] = {
                "event_type": METADATA_EVENT,
                "event_payload": {"key": row.dedupe_key},
            }
        if row.thread_image is None:
            return payload
        thread = threads.get((row.thread_image, row.thread_sha))
        if row.method == "chat.update":
            if thread is None or thread.ts is None:
                raise _Wait()
            payload["channel"] = thread.channel
            payload["ts"] = thread.ts
        elif row.method == "chat.postMessage" and thread is not None and thread.ts is not None:
            payload["thread_ts"] = thread.ts
            payload["channel"] = thread.channel
        return payload

    def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            if method == "response_url":
                url = payload.pop("url")
                result = self.webhook_factory(url).send_dict(payload)
                if result.status_code == 429:
                    raise _Retry(_retry_after(result.headers), "rate limited", counts=False)
                if result.status_code >= 500:
                    raise _Retry(5, f"HTTP {result.status_code}")
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
            code = error.response.get("error") if hasattr(error.response, "get") else None
            if status == 429 or code == "ratelimited":
                raise _Retry(
                    _retry_after(error.response.headers), "rate limited", counts=False
                ) from None
            if status >= 500 or code in {"internal_error", "fatal_error", "service_unavailable"}:
                raise _Retry(5, f"HTTP {status} {code or ''}".strip()) from None
            if code in PERMANENT_ERRORS:
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
        except SlackApiError:
            return None  # can't tell: sending again is better than losing the message
        for message in found.get("messages") or []:
            metadata = message.get("metadata") or {}
            if (
                metadata.get("event_type") == METADATA_EVENT
                and (metadata.get("event_payload") or {}).get("key") == row.dedupe_key
            ):
                return {"ok": True, "channel": payload["channel"], "ts": message["ts"]}
        return None

    def _sent(self, row: Any, payload: dict[str, Any], response: dict[str, Any]) -> Any:
        """Record the delivery; the thread's root (channel, ts) when this message opened it."""
        with self.store.write(audited=False) as tx:
            tx.connection.execute(
                update(t.outbox)
                .where(t.outbox.c.id == row.id)
                .values(
                    status="sent",
                    attempts=row.attempts + 1,
                    sent_at=tx.now,
                    last_error=None,
                    response={k: response.get(k) for k in ("channel", "ts") if k in response},
                )
            )
            if (
                row.method == "chat.postMessage"
                and row.thread_image
                and not payload.get("thread_ts")
            ):
                _set_root(tx, row.thread_image, row.thread_sha, response, payload)
                return _thread(tx, row.thread_image, row.thread_sha)
        return None

    def _mark(self, row_id: int, **values: Any) -> None:
        with self.store.write(audited=False) as tx:
            tx.connection.execute(update(t.outbox).where(t.outbox.c.id == row_id).values(**values))


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


def _threads(tx: Tx, keys: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    if not keys:
        return {}
    rows = tx.connection.execute(
        select(t.slack_threads).where(
            tuple_(t.slack_threads.c.image, t.slack_threads.c.sha).in_(sorted(keys))
        )
    )
    return {(row.image, row.sha): row for row in rows}


def _thread(tx: Tx, image: str, sha: str) -> Any:
    return tx.connection.execute(
        select(t.slack_threads).where(
            t.slack_threads.c.image == image, t.slack_threads.c.sha == sha
        )
    ).first()


def _set_root(
    tx: Tx, image: str, sha: str, response: dict[str, Any], payload: dict[str, Any]
) -> None:
    """The first message delivered for (image, sha) is its thread's root."""
    channel = response.get("channel") or payload["channel"]
    existing = _thread(tx, image, sha)
    if existing is None:
        tx.insert_ignore(
            t.slack_threads,
            {
                "image": image,
                "sha": sha,
                "channel": channel,
                "ts": response["ts"],
                "state": {},
                "status_rank": 0,
                "updated_at": tx.now,
            },
        )
    elif existing.ts is None:
        tx.connection.execute(
            update(t.slack_threads)
            .where(t.slack_threads.c.image == image, t.slack_threads.c.sha == sha)
            .values(ts=response["ts"], channel=channel)
        )


def _retry_after(headers: Any) -> float:
    try:
        value = headers.get("Retry-After") or headers.get("retry-after")
        return max(float(value), 0.0)
    except (AttributeError, TypeError, ValueError):
        return 1.0
