"""Group commit: concurrent inputs share a transaction, each caller gets its own answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from bot.store.group_commit import GroupCommit


class Recorder:
    """An APPLY that records its groups; the first group waits until released, so the
    callers arriving meanwhile must queue behind it."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: Sequence[str]) -> list[str]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.first_started.set()
            assert self.release.wait(10)
        if "bad" in items:
            raise ValueError("bad input")
        return [item.upper() for item in items]


def submit_all(group: GroupCommit[str, str], items: list[str]) -> dict[str, object]:
    answers: dict[str, object] = {}

    def call(item: str) -> None:
        try:
            answers[item] = group.submit(item)
        except ValueError as error:
            answers[item] = error

    threads = [threading.Thread(target=call, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    answers["_threads"] = threads
    return answers


def behind_a_running_group(items: list[str]) -> tuple[Recorder, GroupCommit[str, str], dict]:
    """Submit "first", and ITEMS while its group runs; every answer once all are done."""
    apply = Recorder()
    group = GroupCommit(apply)
    first = submit_all(group, ["first"])
    assert apply.first_started.wait(10)
    rest = submit_all(group, items)
    while len(group._queue) < len(items):  # all of them queued behind the running group
        threading.Event().wait(0.005)
    apply.release.set()
    for thread in [*first.pop("_threads"), *rest.pop("_threads")]:  # type: ignore[attr-defined]
        thread.join(10)
    return apply, group, {**first, **rest}


def test_a_caller_alone_is_applied_at_once() -> None:
    apply = Recorder()
    apply.release.set()
    group = GroupCommit(apply)

    assert group.submit("a") == "A"
    assert apply.groups == [["a"]]


def test_callers_arriving_during_a_group_share_the_next_one() -> None:
    apply, group, answers = behind_a_running_group(["b", "c", "d"])

    assert answers == {"first": "FIRST", "b": "B", "c": "C", "d": "D"}
    assert apply.groups[0] == ["first"]
    assert sorted(apply.groups[1]) == ["b", "c", "d"]  # one transaction for the three
    assert (group.groups, group.items) == (2, 4)


def test_a_bad_input_fails_only_its_own_caller() -> None:
    apply, _, answers = behind_a_running_group(["b", "bad", "d"])

    assert answers["b"] == "B" and answers["d"] == "D"
    assert isinstance(answers["bad"], ValueError)
    # The group failed as a whole, then each input was applied on its own.
    assert sorted(apply.groups[1]) == ["b", "bad", "d"]
    assert sorted(map(tuple, apply.groups[2:])) == [("b",), ("bad",), ("d",)]


def test_an_interrupted_group_leaves_nobody_waiting() -> None:
    def interrupted(items: Sequence[str]) -> list[str]:
        raise KeyboardInterrupt

    group: GroupCommit[str, str] = GroupCommit(interrupted)
    with pytest.raises(KeyboardInterrupt):
        group.submit("a")
    assert group._queue == [] and not group._leading
