"""What a group of events applied together sends: only the newest text of each root."""

from __future__ import annotations

from bot.builds.thread import Outgoing, coalesce

A, B = ("nlp.keras-batch", "a" * 40), ("nlp.keras-batch", "b" * 40)


def test_a_new_root_is_posted_once_with_the_newest_text() -> None:
    outgoing = [
        (A, Outgoing("root", "root", "QUEUED")),
        (A, Outgoing("update", "update:1", "WORKING 1/5")),
        (A, Outgoing("reply", "b1:started", "▶️ started")),
        (A, Outgoing("update", "update:2", "SUCCESS 5/5")),
        (A, Outgoing("reply", "b1:succeeded", "✅ succeeded")),
    ]

    assert [(m.kind, m.text) for _, m in coalesce(outgoing)] == [
        ("root", "SUCCESS 5/5"),
        ("reply", "▶️ started"),
        ("reply", "✅ succeeded"),
    ]


def test_only_the_last_update_of_each_thread_is_kept() -> None:
    outgoing = [
        (A, Outgoing("update", "update:1", "A working")),
        (B, Outgoing("update", "update:1", "B working")),
        (A, Outgoing("update", "update:2", "A failed")),
        (A, Outgoing("reply", "b1:failed", "❌ failed")),
    ]

    assert [(key, m.text) for key, m in coalesce(outgoing)] == [
        (B, "B working"),
        (A, "A failed"),
        (A, "❌ failed"),
    ]


def test_replies_are_never_dropped_or_reordered() -> None:
    outgoing = [(A, Outgoing("reply", f"r{i}", f"reply {i}")) for i in range(4)]

    assert coalesce(outgoing) == outgoing
