"""One table describes every command; what reads it agrees with it.

The parser, help, the Slack routing, role checks and audit subjects all come from
`bot.domain.commands.COMMANDS`; the service's explicit handler map covers exactly it.
"""

from __future__ import annotations

import dataclasses

import pytest

from bot.domain.command_table import (
    COMMANDS,
    Answered,
    from_fields,
    help_text,
    parse,
    reads_only,
    spec_of,
)
from bot.domain.commands import to_fields
from bot.domain.errors import BadInput
from bot.domain.policy import Role
from bot.service.handlers import HANDLERS

IMAGE = "nlp.keras-batch"
SHA = "a" * 40

# One typed example of each command (and of each option it takes).
EXAMPLES = {
    "help": ["help"],
    "status": ["status", f"status {IMAGE} --json"],
    "versions": [f"versions {IMAGE}", f"versions {IMAGE} --json"],
    "build": [f"build {IMAGE}", f"build {IMAGE} main"],
    "approve": [f"approve {IMAGE}", f"approve {IMAGE} {SHA[:7]}"],
    "reject": [f"reject {IMAGE} broken", f"reject {IMAGE} {SHA} --reason it is broken"],
    "promote": [
        f"promote {IMAGE}",
        f"promote {IMAGE} --dry-run",
        f"promote {IMAGE} --force --reason ok --yes",
    ],
    "rollback": [f"rollback {IMAGE}", f"rollback {IMAGE} --to {SHA} --force --reason r --yes"],
    "instance": [f"instance {IMAGE}", f"instance {IMAGE} --env staging --name my-box"],
    "instances": ["instances", f"instances {IMAGE} --stop my-box --json"],
    "history": [f"history {IMAGE}", f"history {IMAGE} {SHA[:9]} --json"],
    "diff": [f"diff {IMAGE}", f"diff {IMAGE} production {SHA}"],
    "freeze": [f"freeze {IMAGE} release week", f"freeze {IMAGE} --reason release week"],
    "unfreeze": [f"unfreeze {IMAGE}"],
}


def test_every_command_of_the_table_has_a_handler_and_an_example() -> None:
    assert {spec.type for spec in COMMANDS.values()} == set(HANDLERS)
    assert set(EXAMPLES) == set(COMMANDS)


@pytest.mark.parametrize("text", [text for texts in EXAMPLES.values() for text in texts])
def test_a_command_survives_the_trip_through_a_button_or_a_job(text: str) -> None:
    command = parse(text)
    assert from_fields(to_fields(command), allowed=lambda spec: True) == command


def test_help_lists_every_command_with_its_usage() -> None:
    shown = help_text()
    for spec in COMMANDS.values():
        assert f"`/nbenv {spec.usage}`" in shown


def test_an_option_a_command_does_not_take_is_refused_with_its_usage() -> None:
    for name, spec in COMMANDS.items():
        if name == "help":
            continue
        for option in {"--json", "--force", "--to", "--stop"} - spec.options:
            with pytest.raises(BadInput, match=f"does not apply to {name}. Usage"):
                parse(f"{name} {IMAGE} {option}{'=x' if option in ('--to', '--stop') else ''}")


def test_stopping_an_instance_changes_something_and_listing_does_not() -> None:
    # They had drifted apart: `instances --stop` was taken as read-only, so a retried
    # request was not recognised as one.
    assert reads_only(parse(f"instances {IMAGE}"))
    assert not reads_only(parse(f"instances {IMAGE} --stop my-box"))
    assert reads_only(parse(f"promote {IMAGE} --dry-run"))
    assert not reads_only(parse(f"promote {IMAGE}"))


def test_slack_answers_reads_later_small_writes_at_once_and_slow_changes_in_a_job() -> None:
    texts = [text for examples in EXAMPLES.values() for text in examples]
    answered = {text: spec_of(parse(text)).answered_for(parse(text)) for text in texts}
    assert answered["help"] is Answered.AT_ONCE
    assert answered[f"approve {IMAGE}"] is Answered.AT_ONCE
    assert answered[f"status {IMAGE} --json"] is Answered.LATER
    assert answered[f"promote {IMAGE}"] is Answered.LATER  # the plan, to confirm
    assert answered[f"promote {IMAGE} --force --reason ok --yes"] is Answered.QUEUED
    assert answered[f"instances {IMAGE} --stop my-box --json"] is Answered.QUEUED
    for text, way in answered.items():
        if way is Answered.AT_ONCE and text != "help":
            assert not reads_only(parse(text)), f"{text}: only writes are answered in the ack"


def test_each_command_needs_the_role_the_table_gives() -> None:
    texts = [text for examples in EXAMPLES.values() for text in examples]
    roles = {text: spec_of(parse(text)).role_for(parse(text)) for text in texts}
    assert roles["help"] is None
    assert roles[f"instance {IMAGE}"] is Role.USER
    assert roles[f"instance {IMAGE} --env staging --name my-box"] is Role.TESTER
    assert roles[f"promote {IMAGE}"] is Role.OWNER
    assert roles[f"approve {IMAGE}"] is Role.TESTER


@pytest.mark.parametrize(
    "data",
    [
        None,
        [],
        {"name": "no-such-command"},
        {"name": "promote"},  # no image
        {"name": "promote", "image": IMAGE, "force": "yes"},
        {"name": "promote", "image": 7},
        {"name": "rollback", "image": IMAGE, "to": "not-a-sha"},
        {"name": "instance", "image": IMAGE, "env": "nowhere"},
        {"name": "instance", "image": IMAGE, "instance_name": "Bad Name"},
        {"name": "reject", "image": IMAGE, "reason": "r" * 5000},
        {"name": "promote", "image": "../../etc"},
    ],
)
def test_a_malformed_button_or_job_is_refused_in_one_line(data: object) -> None:
    with pytest.raises(BadInput):
        from_fields(data, allowed=lambda spec: True)


def test_a_button_may_carry_only_the_commands_allowed_that_way() -> None:
    with pytest.raises(BadInput):
        from_fields({"name": "freeze", "image": IMAGE, "reason": "x"}, allowed=lambda s: s.confirm)


def test_every_command_is_checked_however_it_is_made() -> None:
    for spec in COMMANDS.values():
        if spec.name in ("help", "status", "instances"):
            continue  # no image needed
        fields = {field.name for field in dataclasses.fields(spec.type)}
        given = {"image": "Not An Image", "reason": "r"}
        with pytest.raises(BadInput):
            spec.type(**{k: v for k, v in given.items() if k in fields})


def test_a_button_carrying_a_field_its_command_does_not_take_is_refused() -> None:
    with pytest.raises(BadInput, match="'env', which promote does not take"):
        from_fields({"name": "promote", "image": IMAGE, "env": "qa"}, allowed=lambda s: True)
