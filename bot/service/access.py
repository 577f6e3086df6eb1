"""Who may ask about what, from the config alone: the check every command passes first
(a known user, a known image), and who acts as the pipeline."""

from __future__ import annotations

from bot.config import Config
from bot.domain.commands import Command
from bot.domain.errors import BadInput
from bot.domain.names import Actor, Person, Pipeline


def is_pipeline(actor: Actor | str) -> bool:
    """The pipeline's rights come with a `Pipeline`, made by the build relay and `nbenv
    publish --build-id`; never with a name that merely looks like one (`build:x`)."""
    return isinstance(actor, Pipeline)


def as_actor(actor: Actor | str) -> Actor:
    """ACTOR as the service takes it: anything but a Pipeline must be a Slack user ID."""
    return actor if isinstance(actor, Person | Pipeline) else Person(actor)


def check_actor(config: Config, actor: Actor | str) -> None:
    actor = as_actor(actor)
    if is_pipeline(actor):
        return
    if not config.knows_user(actor):
        raise BadInput(f"unknown user {actor}: not an owner, tester or user of any team")


def check_image(config: Config, image: str) -> None:
    if image not in config.images:
        known = ", ".join(sorted(config.images))
        raise BadInput(f"unknown image {image!r}; known images: {known}")


def check(config: Config, actor: Actor | str, command: Command) -> None:
    """A known user and a known image."""
    check_actor(config, actor)
    if command.image is not None:
        check_image(config, command.image)
