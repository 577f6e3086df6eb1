"""The text after `/nbenv` is read in linear time, bounded, and a reason needs no quotes."""

from __future__ import annotations

import random
import shlex
import time
from collections.abc import Callable

import pytest

from bot.domain.command_table import MAX_COMMAND, help_text, parse
from bot.domain.commands import MAX_REASON, Reject
from bot.domain.errors import BadInput
from bot.domain.words import split_words

IMAGE = "nlp.keras-batch"


def _cpu_seconds(work: Callable[[], object]) -> float:
    """The least CPU time of a few runs: what the work costs, not what the machine's other
    load costs it."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
    return max(best, 1e-4)


# Texts that are hard for a tokenizer: one huge word, quoted, escaped, many small words.
HARD_TEXTS = {
    "one long word": lambda n: "a" * n,
    "double-quoted with escapes": lambda n: '"' + 'ab\\"' * (n // 4) + '"',
    "single-quoted pieces": lambda n: "x'y'" * (n // 4),
    "backslash escapes": lambda n: "\\a" * (n // 2),
    "many words": lambda n: "ab " * (n // 3),
}


@pytest.mark.parametrize("shape", HARD_TEXTS)
def test_reading_a_command_takes_time_linear_in_its_length(shape: str) -> None:
    """A signed 1 MB command pinned a worker's CPU for 23 s (shlex is quadratic). Ten times
    the text must cost about ten times the work, not a hundred."""
    make = HARD_TEXTS[shape]
    small, large = make(50_000), make(500_000)

    ratio = _cpu_seconds(lambda: split_words(large)) / _cpu_seconds(lambda: split_words(small))

    assert ratio < 30, f"{shape}: 10x the text took {ratio:.0f}x the time"


def test_words_are_cut_exactly_as_a_posix_shell_cuts_them() -> None:
    rng = random.Random(10)
    alphabet = "ab '\"\\\t\n-="
    for _ in range(10_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        try:
            expected: object = shlex.split(text)
        except ValueError as error:
            expected = f"could not read the command: {error}"
        try:
            got: object = split_words(text)
        except BadInput as error:
            got = error.message
        assert got == expected, repr(text)


def test_a_command_longer_than_the_limit_is_refused_with_the_limit() -> None:
    with pytest.raises(BadInput, match=f"at most {MAX_COMMAND:,}"):
        parse(f"freeze {IMAGE} " + "x" * 10_000_000)


@pytest.mark.parametrize(
    "text",
    [
        f"freeze {IMAGE} " + "x" * (MAX_REASON + 1),
        f"reject {IMAGE} " + "y " * MAX_REASON,
        f"promote {IMAGE} --force --reason " + "z" * (MAX_REASON + 1),
        f"rollback {IMAGE} --reason=" + "w" * (MAX_REASON + 1),
    ],
    ids=["freeze", "reject", "promote --force", "rollback"],
)
def test_a_reason_longer_than_the_reject_dialog_allows_is_refused(text: str) -> None:
    with pytest.raises(BadInput, match=f"the reason is .* at most {MAX_REASON:,}"):
        parse(text)


def test_a_reason_of_the_dialogs_full_length_is_accepted() -> None:
    assert parse(f"freeze {IMAGE} " + "x" * MAX_REASON).reason == "x" * MAX_REASON


def test_commands_made_without_parsing_are_held_to_the_same_limit() -> None:
    """Buttons, the reject dialog and queued jobs build a Command directly."""
    with pytest.raises(BadInput, match="the reason is"):
        Reject(image=IMAGE, reason="r" * (MAX_REASON + 1))


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"promote {IMAGE} --force --reason security fix upstream", "security fix upstream"),
        (f"promote {IMAGE} --reason known issue --force --yes", "known issue"),
        (f"rollback {IMAGE} --reason kernel dies on import", "kernel dies on import"),
        (f"rollback {IMAGE} --reason=kernel dies --to abcdef1", "kernel dies"),
        (f"freeze {IMAGE} --reason release week", "release week"),
        (f'rollback {IMAGE} --reason "quoted still works"', "quoted still works"),
    ],
)
def test_a_reason_of_several_words_needs_no_quotes(text: str, reason: str) -> None:
    assert parse(text).reason == reason


def test_an_unknown_option_after_a_reason_is_still_an_error() -> None:
    with pytest.raises(BadInput, match="unknown option --bogus"):
        parse(f"promote {IMAGE} --force --reason why not --bogus")


def test_rollback_force_and_reason_are_in_the_help() -> None:
    text = help_text()
    assert "rollback IMAGE [--to SHA [--force]] [--reason R]" in text
    assert "promote IMAGE [--dry-run] [--force --reason R]" in text
    assert "quotes" in text  # how a reason is typed
