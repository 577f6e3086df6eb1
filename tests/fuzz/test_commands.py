"""The slash command's text, fuzzed: whatever follows `/nbenv`, `parse` answers with a
command of the table or a one-line BadInput — nothing else escapes — in time linear in
the text; and through `Nbenv.handle`, on SQLite and PostgreSQL, text that is refused
changes nothing but the refusal it logs."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.domain.command_table import parse
from bot.domain.errors import BadInput, NbenvError
from tests.conftest import IMAGE, OWNER, STRANGER, TESTER, USER, sha_of
from tests.fuzz.state import snapshot
from tests.fuzz.strategies import (
    COMMAND_NAMES,
    assert_linear,
    command_text,
    huge_text,
    nasty_text,
    one_line,
)

any_command_text = st.one_of(command_text(), st.text(max_size=60), nasty_text, huge_text)


@settings(max_examples=400, deadline=None)
@given(text=any_command_text)
@example("reject nlp.t01 " + "'" * 3)
@example('freeze nlp.t01 "a \\')
@example("\x00")
@example("\ud800")
def test_parse_answers_a_command_or_one_line_of_bad_input(text: str) -> None:
    try:
        command = parse(text)
    except BadInput as error:
        assert one_line(error.message), repr(error.message)
        return
    assert command.name in COMMAND_NAMES


@pytest.mark.parametrize("brk", ["\u2028", "\x85", "\x0b", "\x0c", "\x1e"])
def test_an_unknown_option_is_named_on_one_line(brk: str) -> None:
    with pytest.raises(BadInput) as refused:
        parse(f"status --x{brk}y")
    assert one_line(refused.value.message), repr(refused.value.message)


@settings(max_examples=150, deadline=None)
@given(text=any_command_text)
def test_parse_is_the_same_each_time(text: str) -> None:
    def outcome() -> Any:
        try:
            return parse(text)
        except BadInput as error:
            return error.message

    assert outcome() == outcome()


def _repeated(size: int) -> str:
    # A reason of SIZE characters with every kind of quoting in it: within the limit.
    piece = 'a \'b c\' "d \\" e" f\\ g '
    return f"freeze {IMAGE} " + (piece * (size // len(piece) + 1))[:size]


def test_parse_takes_time_linear_in_the_text() -> None:
    def parse_many(text: str) -> None:
        for _ in range(50):
            with contextlib.suppress(BadInput):
                parse(text)

    assert_linear(parse_many, _repeated, 350)


# -- through the service, on both databases ---------------------------------------------------

ACTORS = [OWNER, TESTER, USER, STRANGER, "", "U", "build:x", "<@U01OWNER>", "U01OWNER\x00"]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(actor=st.sampled_from(ACTORS), text=any_command_text)
def test_text_that_is_refused_changes_nothing_but_the_refusal_it_logs(
    runtime: Any, actor: str, text: str
) -> None:
    # Something to act on: a version in staging, so that approve and promote could act.
    sha = sha_of("fuzz commands")
    if not snapshot(runtime, IMAGE).versions:
        runtime.nbenv.publish(OWNER, IMAGE, sha, report=None)
    before = snapshot(runtime, IMAGE)
    try:
        runtime.nbenv.handle(actor, text)
    except NbenvError as error:
        assert one_line(error.message), repr(error.message)
        assert snapshot(runtime, IMAGE).same_but_refusals(before), (actor, text)
