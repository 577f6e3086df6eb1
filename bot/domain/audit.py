"""The hash chain of the audit log.

Each entry's hash covers its own fields and the previous entry's hash, so an edited,
deleted or reordered row breaks the chain at that row; the head (last seq and hash,
kept apart from the rows) catches a deleted tail.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    image: str | None
    sha: str | None
    outcome: str  # ok | refused | error
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""

    def concerned_shas(self) -> set[str]:
        """Every SHA this entry is about: the one it is filed under, and those it moved an
        environment from or to, or revoked (a rollback is filed under its target)."""
        shas = shas_in_details(self.details)
        if self.sha:
            shas.add(self.sha)
        return shas

    def computed_hash(self) -> str:
        return entry_hash(
            prev_hash=self.prev_hash,
            seq=self.seq,
            at=self.at,
            actor=self.actor,
            action=self.action,
            image=self.image,
            sha=self.sha,
            outcome=self.outcome,
            details=self.details,
        )


# The keys of an entry's details that name SHAs, as the service layer writes them.
_SHA_KEYS = ("revoked", "to", "production", "fallback")


def shas_in_details(details: Any) -> set[str]:
    """The SHAs named in DETAILS: under _SHA_KEYS (a SHA or a list of them) and in the
    old/new of each pointer change."""
    if not isinstance(details, dict):
        return set()
    found: list[Any] = []
    for key in _SHA_KEYS:
        value = details.get(key)
        found.extend(value if isinstance(value, list) else [value])
    changes = details.get("changes")
    for change in changes if isinstance(changes, list) else []:
        if isinstance(change, dict):
            found += [change.get("old"), change.get("new")]
    return {value for value in found if isinstance(value, str) and value}


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(
    *,
    prev_hash: str,
    seq: int,
    at: str,
    actor: str,
    action: str,
    image: str | None,
    sha: str | None,
    outcome: str,
    details: dict[str, Any],
) -> str:
    body = canonical_json(
        [prev_hash, seq, at, actor, action, image, sha, outcome, details]
    ).encode()
    return hashlib.sha256(body).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    ok: bool
    entries: int
    bad_seq: int | None = None
    problem: str | None = None

    def describe(self) -> str:
        if self.ok:
            return f"audit log intact: {self.entries} entries, hash chain verified"
        return f"audit log broken at entry {self.bad_seq}: {self.problem}"


def verify_chain(entries: Iterable[AuditEntry], head_seq: int, head_hash: str) -> ChainCheck:
    """Check ENTRIES (ordered by seq) against each other and against the head."""
    expected_seq = 1
    prev = GENESIS
    count = 0
    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            missing = expected_seq if entry.seq > expected_seq else entry.seq
            return ChainCheck(
                False,
                count,
                missing,
                f"expected entry {expected_seq}, found {entry.seq}: a row was deleted or reordered",
            )
        if entry.prev_hash != prev:
            return ChainCheck(
                False,
                count,
                entry.seq,
                "its link to the previous entry does not match: "
                "an earlier row was edited, deleted or reordered",
            )
        if entry.computed_hash() != entry.hash:
            return ChainCheck(
                False, count, entry.seq, "its contents do not match its hash: the row was edited"
            )
        prev = entry.hash
        expected_seq += 1
    last = expected_seq - 1
    if head_seq != last or (last and head_hash != prev):
        bad = min(head_seq, last) + 1 if head_seq != last else last
        return ChainCheck(
            False,
            count,
            bad,
            f"the log ends at entry {last} but {head_seq} were written: "
            "rows were deleted from the end",
        )
    return ChainCheck(True, count)
