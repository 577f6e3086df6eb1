"""verify_chain without a store: entries and the head in, what `audit verify` says out."""

from __future__ import annotations

from dataclasses import replace

from bot.domain.audit import GENESIS, AuditEntry, AuditKey, UnreadableEntry, verify_chain

KEY = AuditKey(b"k" * 32)
OTHER_KEY = AuditKey(b"o" * 32)


def chain(count: int, *, key: AuditKey | None = None, after: list[AuditEntry] | None = None):
    """COUNT linked entries (sealed with KEY), appended to AFTER."""
    entries = list(after or [])
    for _ in range(count):
        prev = entries[-1] if entries else None
        entry = AuditEntry(
            seq=prev.seq + 1 if prev else 1,
            at="2026-11-28T09:00:00.000000Z",
            actor="U01OWNER",
            action="promote",
            image="base",
            sha="a" * 40,
            outcome="ok",
            details={"n": len(entries)},
            prev_hash=prev.hash if prev else GENESIS,
            key_id=key.key_id if key else None,
        )
        entries.append(replace(entry, hash=entry.computed_hash(key)))
    return entries


def head(entries: list[AuditEntry]) -> tuple[int, str]:
    return (entries[-1].seq, entries[-1].hash) if entries else (0, GENESIS)


def test_an_untouched_chain_is_intact():
    entries = chain(3)
    result = verify_chain(entries, head(entries))
    assert result.ok and result.entries == 3 and result.head_hash == entries[-1].hash
    assert "3 entries, hash chain verified" in result.describe()


def test_an_empty_log_is_intact():
    assert verify_chain([], (0, GENESIS)).ok


def test_an_edited_entry_breaks_the_chain_there():
    entries = chain(3)
    entries[1] = replace(entries[1], actor="U66MALLORY")
    result = verify_chain(entries, head(entries))
    assert (result.status, result.bad_seq) == ("broken", 2)
    assert "do not match its hash" in result.problem


def test_an_entry_rewritten_with_a_fresh_hash_breaks_the_link_after_it():
    entries = chain(3)
    forged = replace(entries[1], actor="U66MALLORY")
    entries[1] = replace(forged, hash=forged.computed_hash())
    result = verify_chain(entries, head(entries))
    assert (result.status, result.bad_seq) == ("broken", 3)
    assert "link to the previous entry" in result.problem


def test_a_deleted_entry_in_the_middle_is_found():
    entries = chain(4)
    result = verify_chain([entries[0], entries[2], entries[3]], head(entries))
    assert (result.status, result.bad_seq) == ("broken", 2)
    assert "deleted or reordered" in result.problem


def test_entries_deleted_from_the_end_are_found_by_the_head():
    entries = chain(4)
    result = verify_chain(entries[:2], head(entries))
    assert (result.status, result.bad_seq) == ("broken", 3)
    assert "rows were deleted from the end" in result.problem


def test_a_missing_head_row_is_reported():
    entries = chain(2)
    result = verify_chain(entries, None)
    assert (result.status, result.bad_seq) == ("broken", 3)
    assert "audit head" in result.problem


def test_an_unreadable_row_breaks_the_chain_there():
    entries: list = chain(3)
    entries[1] = UnreadableEntry(2, "its details are not valid JSON: the row was edited")
    result = verify_chain(entries, head(entries))
    assert (result.status, result.bad_seq, result.problem) == (
        "broken",
        2,
        "its details are not valid JSON: the row was edited",
    )


def test_sealed_entries_verify_with_their_key():
    entries = chain(2, key=KEY, after=chain(2))
    result = verify_chain(entries, head(entries), KEY)
    assert result.ok and result.sealed == (3, 4) and result.key_id == KEY.key_id


def test_sealed_entries_without_their_key_are_unverifiable_not_broken():
    entries = chain(2, key=KEY, after=chain(1))
    for key in (None, OTHER_KEY):
        result = verify_chain(entries, head(entries), key)
        assert (result.status, result.bad_seq) == ("unverifiable", 2)
        assert KEY.key_id in result.problem


def test_a_seal_forged_without_the_key_is_found():
    entries = chain(2, key=KEY)
    forged = replace(entries[1], actor="U66MALLORY")
    entries[1] = replace(forged, hash=forged.computed_hash(OTHER_KEY))
    result = verify_chain(entries, head(entries), KEY)
    assert (result.status, result.bad_seq) == ("broken", 2)
    assert "do not match its seal" in result.problem


def test_a_plain_entry_after_sealed_ones_is_a_downgrade():
    entries = chain(1, after=chain(2, key=KEY))
    result = verify_chain(entries, head(entries), KEY)
    assert (result.status, result.bad_seq) == ("broken", 3)
    assert "not sealed, though entry 2 before it is" in result.problem


def test_a_key_given_for_a_log_never_sealed_with_it_says_unsealed():
    entries = chain(2)
    result = verify_chain(entries, head(entries), KEY)
    assert (result.status, result.bad_seq) == ("unsealed", 2)


def test_verification_streams_the_entries():
    """A generator is read once, in order: `audit verify` holds no list of the log."""
    entries = chain(5)
    assert verify_chain(iter(entries), head(entries)).ok
