"""What the use cases tell people, in domain words: the Slack adapter turns each into a
Web API call with Block Kit, the console into lines of text.

An `Offer` is a next step the reader may take from the message (a button in Slack).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class Act(StrEnum):
    """What an offer lets its reader do."""

    APPROVE = "approve"
    REJECT = "reject"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    REPLACE = "replace"  # start a replacement instance
    STOP = "stop"  # stop an instance
    MORE = "more"  # the next page of a listing, in place of this one


@dataclass(frozen=True)
class Offer:
    act: Act
    label: str
    image: str
    sha: str | None = None
    env: str | None = None
    name: str | None = None  # an instance's
    listing: str | None = None  # the command whose next page it is (versions, history)
    cursor: str | None = None  # where that page starts
    emphasis: Literal["primary", "danger"] | None = None

    def value(self) -> dict[str, Any]:
        """What the offer carries back when taken: its image, and what else it names."""
        carried = {
            "image": self.image,
            "sha": self.sha,
            "env": self.env,
            "name": self.name,
            "listing": self.listing,
            "cursor": self.cursor,
        }
        return {key: value for key, value in carried.items() if value is not None}


@dataclass(frozen=True)
class Announcement:
    """To the image's channel: in the thread of SHA when there is one (the first message
    of a thread opens it).

    LINK_PREVIEWS False: links in TEXT stay plain links, with no preview of the page under
    the message (a build's thread links its logs on every step).
    """

    channel: str
    image: str
    sha: str | None
    text: str
    offers: tuple[Offer, ...] = ()
    link_previews: bool = True


@dataclass(frozen=True)
class ThreadRootUpdate:
    """New TEXT for the message that opened the thread of SHA in the image's channel (the
    build relay keeps a build's progress there). Should that message never have gone out,
    TEXT opens the thread instead."""

    image: str
    sha: str
    text: str


@dataclass(frozen=True)
class DirectMessage:
    """To one person, privately (in Slack, the app's Messages tab)."""

    user: str
    text: str
    offers: tuple[Offer, ...] = ()


@dataclass(frozen=True)
class PrivateAnswer:
    """The late answer to what USER asked, where they asked it (REPLY_TO: the address the
    request came with, in Slack its response_url); to them directly should that place be
    gone."""

    reply_to: str
    user: str | None  # None: nobody to tell should REPLY_TO be gone
    text: str


Notification = Announcement | ThreadRootUpdate | DirectMessage | PrivateAnswer
