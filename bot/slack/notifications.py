"""Notifications (`bot.domain.notifications`) as Slack Web API calls in the outbox.

The use cases say what happened; this says how Slack shows it: the method, the channel,
the thread, the buttons. Queued in the same transaction as the change they tell of.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bot.domain.notifications import (
    Act,
    Announcement,
    DirectMessage,
    Notification,
    Offer,
    ThreadRootUpdate,
)
from bot.slack.views import button

if TYPE_CHECKING:
    from bot.store.repositories.outbox import Message
    from bot.store.uow import Tx

ACTION_PREFIX = "nbenv_"  # a button's action_id: nbenv_approve, nbenv_stop, …


def action_id(act: Act) -> str:
    return ACTION_PREFIX + act.value


def offer_buttons(offers: tuple[Offer, ...]) -> list[dict[str, Any]]:
    """OFFERS as Block Kit buttons."""
    return [
        button(action_id(offer.act), offer.label, offer.value(), offer.emphasis) for offer in offers
    ]


def buttons(offers: tuple[Offer, ...]) -> list[dict[str, Any]]:
    """OFFERS as the outbox keeps buttons (drawn as Block Kit when sent)."""
    return [
        {
            "action_id": action_id(offer.act),
            "text": offer.label,
            "value": json.dumps(offer.value()),
            "style": offer.emphasis,
        }
        for offer in offers
    ]


class SlackNotifier:
    """The service's `Notifier` port for Slack (and the console, which reads the same
    outbox)."""

    def notify(self, tx: Tx, key: str, notification: Notification) -> None:
        key, method, payload, thread = web_api_call(key, notification)
        tx.outbox.enqueue(key, method, payload, thread=thread)

    def notify_many(self, tx: Tx, notifications: Iterable[tuple[str, Notification]]) -> None:
        tx.outbox.enqueue_many(web_api_call(key, told) for key, told in notifications)


def web_api_call(key: str, notification: Notification) -> Message:
    """NOTIFICATION as the outbox row that sends it: (KEY, method, payload, thread)."""
    if isinstance(notification, Announcement):
        payload: dict[str, Any] = {"channel": notification.channel, "text": notification.text}
        if notification.offers:
            payload["buttons"] = buttons(notification.offers)
        if not notification.link_previews:
            payload["unfurl_links"] = False
        thread = (notification.image, notification.sha) if notification.sha else None
        return key, "chat.postMessage", payload, thread
    if isinstance(notification, ThreadRootUpdate):
        # The sender fills in the root's channel and ts when it sends the update (and
        # posts it instead should the root never have gone out: bot.slack.outbox).
        thread = (notification.image, notification.sha)
        return key, "chat.update", {"text": notification.text}, thread
    if isinstance(notification, DirectMessage):
        # A user ID as the channel: Slack delivers it in the app's Messages tab.
        payload = {"channel": notification.user, "text": notification.text}
        if notification.offers:
            payload["buttons"] = buttons(notification.offers)
        return key, "chat.postMessage", payload, None
    answer = {
        "url": notification.reply_to,
        "text": notification.text,
        "response_type": "ephemeral",
    }
    if notification.user:
        answer["user"] = notification.user  # told directly if the URL expired
    return key, "response_url", answer, None
