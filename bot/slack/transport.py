"""Where the outbox's messages go: Slack's Web API (or the console), and what each of
Slack's answers means for a message — sent, refused for good, refused for the whole app,
rate-limited, or unsure (Slack may have it: look it up before sending again).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from http.client import HTTPException
from typing import Any, Protocol, runtime_checkable
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.webhook import WebhookClient

log = logging.getLogger(__name__)

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
# Answers that may come after Slack did the work (Slack, of fatal_error: "It's possible
# some aspect of the operation succeeded"): a message is looked up before it is sent again.
MAYBE_DONE_ERRORS = {"fatal_error", "internal_error", "request_timeout", "service_unavailable"}
MAX_RETRY_AFTER_S = 3600.0  # a Retry-After beyond an hour is read as an hour
LOOKUP_LIMIT = 200  # messages read back when looking one up (the newest in its channel)

# -- where messages go -------------------------------------------------------------------


class DeliveryError(Exception):
    """A call that delivered nothing for sure; REASON is Slack's error code or the network's."""

    def __init__(self, reason: str, delay_s: float = 5.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class AppRefused(DeliveryError):
    """Slack refuses the app, whatever the message (APP_WIDE_ERRORS): delivery pauses."""


class Refused(DeliveryError):
    """Slack refused this message for good (PERMANENT_ERRORS): it is parked as `dead`."""


class RateLimited(DeliveryError):
    """HTTP 429: nothing was done; the method waits DELAY_S (Retry-After) in that channel."""


class NotSent(DeliveryError):
    """Clearly not carried out (Slack answered an error; no connection was made): sending
    again after DELAY_S is safe."""


class Unsure(DeliveryError):
    """Perhaps carried out: the request reached Slack, no clear answer came back (a read
    time-out, a dropped connection, HTTP 5xx, MAYBE_DONE_ERRORS). A message is looked up
    in Slack before it is sent again."""


@runtime_checkable
class Transport(Protocol):
    """Where the outbox delivers: Slack's Web API (`WebApiTransport`) or the console
    (bot.slack.shell). Each method returns, or raises a DeliveryError saying how it failed."""

    def send(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Carry out METHOD, a Web API method or "response_url" (the URL in PAYLOAD["url"]);
        Slack's answer."""
        ...

    def find_posted(self, channel: str, thread_ts: str | None, key: str) -> dict[str, Any] | None:
        """The message posted in CHANNEL (in the thread THREAD_TS) with the outbox KEY in its
        metadata, as {"ok", "channel", "ts"}; None when it is not there."""
        ...

    def check(self) -> None:
        """Return when Slack takes the app's calls again; raise AppRefused while it does not."""
        ...


class WebApiTransport:
    """Slack's Web API through slack_sdk, every outcome sorted into success or a DeliveryError."""

    def __init__(
        self, client: WebClient, *, webhook_factory: Callable[[str], WebhookClient] = WebhookClient
    ) -> None:
        # The outbox does the retrying, after looking the message up: slack_sdk's own retry
        # after a dropped connection would post again a message Slack may have stored.
        self.client = copy.copy(client)
        self.client.retry_handlers = []
        self.webhook_factory = webhook_factory

    def send(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        if method == "response_url":
            return self._respond(payload)
        return self._api(method, payload)

    def find_posted(self, channel: str, thread_ts: str | None, key: str) -> dict[str, Any] | None:
        # conversations.history lists a channel's top-level messages newest first; a reply
        # is only in its thread (conversations.replies). Both show metadata only when asked.
        if thread_ts:
            arguments = {"channel": channel, "ts": thread_ts, "limit": LOOKUP_LIMIT}
            found = self._api("conversations.replies", {**arguments, "include_all_metadata": True})
        else:
            arguments = {"channel": channel, "limit": LOOKUP_LIMIT}
            found = self._api("conversations.history", {**arguments, "include_all_metadata": True})
        for message in found.get("messages") or []:
            if isinstance(message, dict) and _carries_key(message, key):
                return {"ok": True, "channel": channel, "ts": message.get("ts")}
        return None

    def check(self) -> None:
        self._api("auth.test", {})

    def _api(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.client.api_call(method, json=payload).data  # type: ignore[return-value]
        except SlackApiError as error:
            raise _api_error(error) from None
        except (SlackRequestError, OSError, HTTPException) as error:
            raise _network_error(error) from None

    def _respond(self, payload: dict[str, Any]) -> dict[str, Any]:
        url = payload.pop("url")
        user = payload.pop("user", None)  # who asked, when the answer names them
        if not (isinstance(url, str) and url.startswith(("https://", "http://"))):
            # Nowhere to answer (a press that came without a response_url): the person
            # hears it directly, or the answer is set aside in one line.
            if user:
                return self._direct(user, payload)
            raise Refused("no_response_url")
        try:
            result = self.webhook_factory(url).send_dict(payload)
        except (SlackRequestError, OSError, HTTPException) as error:
            raise _network_error(error) from None
        if result.status_code == 429:
            raise RateLimited("rate limited", _retry_after(result.headers))
        if result.status_code >= 500:
            raise Unsure(f"HTTP {result.status_code}")
        if result.status_code in (404, 410) and user:
            # The response_url is gone (Slack: 30 minutes or 5 uses; it answers 404
            # expired_url): the answer goes to the person as a DM instead.
            log.info("response_url gone (%s): answering %s directly", result.body, user)
            return self._direct(user, payload)
        if result.status_code >= 400:
            # An expired response_url (30 minutes, 5 uses) cannot be fixed by retrying.
            raise Refused(f"http_{result.status_code}")
        return {"ok": True}

    def _direct(self, user: str, payload: dict[str, Any]) -> dict[str, Any]:
        """An answer meant for a response_url, as a direct message to USER."""
        direct = {k: payload[k] for k in ("text", "blocks") if k in payload}
        return self._api("chat.postMessage", {"channel": user, **direct})


def _api_error(error: SlackApiError) -> DeliveryError:
    """What Slack's error answer means for delivery."""
    status = getattr(error.response, "status_code", 200)
    code = _error_code(error) or ""
    if code in APP_WIDE_ERRORS:
        return AppRefused(code)
    if status == 429 or code in ("ratelimited", "rate_limited"):
        return RateLimited("rate limited", _retry_after(error.response.headers))
    if status >= 500 or code in MAYBE_DONE_ERRORS:
        return Unsure(f"HTTP {status} {code}".strip())
    if code in PERMANENT_ERRORS or code.startswith(PERMANENT_PREFIXES):
        return Refused(code)
    return NotSent(code or f"HTTP {status}", delay_s=10)


def _network_error(error: Exception) -> DeliveryError:
    """urllib wraps what fails while the request is being made (no connection, a refused
    or half-sent request: Slack did nothing) in URLError; a time-out or a dropped
    connection while waiting for the answer comes bare: Slack may have done it."""
    if isinstance(error, (URLError, SlackRequestError)):
        return NotSent(f"network: {error}")
    return Unsure(f"no answer: {error!r}")


def _carries_key(message: dict[str, Any], key: str) -> bool:
    metadata = message.get("metadata")
    if not isinstance(metadata, dict) or metadata.get("event_type") != METADATA_EVENT:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("key") == key


def _error_code(error: SlackApiError) -> str | None:
    response = error.response
    code = response.get("error") if hasattr(response, "get") else None
    return code if isinstance(code, str) else None


def _retry_after(headers: Any) -> float:
    """Slack's Retry-After in seconds, within 1..MAX_RETRY_AFTER_S (1 when unreadable):
    never less than a second, so what the 429 holds cannot go out in the same pass."""
    try:
        value = float(headers.get("Retry-After") or headers.get("retry-after"))
    except (AttributeError, TypeError, ValueError):
        return 1.0
    return min(max(value, 1.0), MAX_RETRY_AFTER_S) if math.isfinite(value) else 1.0
