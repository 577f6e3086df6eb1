"""Notifications (`bot.domain.notifications`) as Slack Web API calls in the outbox.

The use cases say what happened; this says how Slack shows it: the method, the channel,
the thread, the buttons. Queued in the same transaction as the change they tell of.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bot.domain.notifications import Act, Announcement, DirectMessage, Notification, Offer
from bot.slack.views import button

if TYPE_CHECKING:
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
        if isinstance(notification, Announcement):
            payload: dict[str, Any] = {"channel": notification.channel, "text": notification.text}
            if notification.offers:
                payload["buttons"] = buttons(notification.offers)
            thread = (notification.image, notification.sha) if notification.sha else None
            tx.outbox.enqueue(key, "chat.postMessage", payload, thread=thread)
        elif isinstance(notification, DirectMessage):
            # A user ID as the channel: Slack delivers it in the app's Messages tab.
            payload = {"channel": notification.user, "text": notification.text}
            if notification.offers:
                payload["buttons"] = buttons(notification.offers)
            tx.outbox.enqueue(key, "chat.postMessage", payload)
        else:
            answer = {
                "url": notification.reply_to,
                "text": notification.text,
                "response_type": "ephemeral",
            }
            if notification.user:
                answer["user"] = notification.user  # told directly if the URL expired
            tx.outbox.enqueue(key, "response_url", answer)
