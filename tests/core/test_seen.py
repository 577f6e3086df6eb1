"""The "changed since shown" rule on its own, without a database: a promote or rollback
decided on one picture of the environments does nothing once they moved, and says how."""

from __future__ import annotations

import pytest

from bot.domain.errors import Conflict
from bot.domain.model import ImageState, Pointer
from bot.domain.names import Env
from bot.domain.operations import Seen, pointers_text

A, B, C = "a" * 40, "b" * 40, "c" * 40


def state(staging: str | None, production: str | None, generation: int = 1) -> ImageState:
    return ImageState(
        "nlp",
        {
            Env.STAGING: Pointer(Env.STAGING, staging, generation=generation),
            Env.PRODUCTION: Pointer(Env.PRODUCTION, production, generation=generation),
        },
    )


def test_pointers_read_the_same_in_every_message() -> None:
    assert pointers_text(state(A, B).shas()) == (
        "staging `aaaaaaa`, production `bbbbbbb`, fallback `—`"
    )


def test_what_was_seen_still_holds_then_nothing_is_refused() -> None:
    seen = Seen.of(state(A, B), shown=True)
    seen.refuse_if_moved(state(A, B), "promote")


def test_moved_environments_refuse_with_what_is_there_now_and_what_was_seen() -> None:
    seen = Seen.of(state(A, B), shown=False)
    with pytest.raises(Conflict) as refused:
        seen.refuse_if_moved(state(C, B, generation=2), "promote")
    assert refused.value.message == (
        "the environments of nlp changed since you asked: staging `ccccccc`, production "
        "`bbbbbbb`, fallback `—` (you saw staging `aaaaaaa`, production `bbbbbbb`, "
        "fallback `—`). Nothing was changed; run `/nbenv promote nlp` again to see the "
        "new plan."
    )


def test_a_moved_generation_alone_is_a_move() -> None:
    """A pointer moved away and back has the same SHA but not the same generation."""
    with pytest.raises(Conflict, match="changed since this was shown"):
        Seen(state(A, B).generations()).refuse_if_moved(state(A, B, generation=3), "rollback")
