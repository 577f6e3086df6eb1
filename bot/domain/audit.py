"""The hash chain of the audit log.

Each entry's hash covers its own fields and the previous entry's hash, so an edited,
deleted or reordered row breaks the chain at that row; the head (last seq and hash,
kept apart from the rows) catches a deleted tail.

Two modes, recorded per entry (`key_id`):

* plain: the hash is SHA-256. It catches accidental damage and a careless edit, but
  anyone who can write the database can edit a row and recompute every later hash.
* sealed: with an audit key (NBENV_AUDIT_KEY) the hash is an HMAC-SHA256 under that
  key, and the entry records the key's ID. Without the key nobody can recompute a
  seal, so an edit anywhere before the newest sealed entry is caught even when every
  later hash is recomputed. Once an entry is sealed, every later one must be: a plain
  entry after a sealed one is a downgrade, and is reported.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bot.domain.errors import ConfigError

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str
    actor: str
    action: str
    image: str | None
    sha: str | None
    outcome: str  # ok | refused | failed
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    key_id: str | None = None  # the audit key that sealed it; None: a plain SHA-256 entry

    def concerned_shas(self) -> set[str]:
        """Every SHA this entry is about: the one it is filed under, and those it moved an
        environment from or to, or revoked (a rollback is filed under its target)."""
        shas = shas_in_details(self.details)
        if self.sha:
            shas.add(self.sha)
        return shas

    def computed_hash(self, key: AuditKey | None = None) -> str:
        """The entry's hash: plain SHA-256, or its seal under KEY (which must be the
        key of `key_id`)."""
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
            key=key if self.key_id is not None else None,
        )


@dataclass(frozen=True)
class UnreadableEntry:
    """A row of the log that cannot even be read as an entry (e.g. its details are not
    JSON): the chain is broken there."""

    seq: int
    problem: str


MIN_KEY_LENGTH = 32


@dataclass(frozen=True, repr=False)
class AuditKey:
    """The secret that seals audit entries, and its ID (recorded in each sealed entry).

    The ID is a hash of the key: it names the key without revealing it (the seals
    themselves would give away a guessable key just as well, so use a random one).
    """

    secret: bytes

    @classmethod
    def from_text(cls, text: str, *, source: str = "NBENV_AUDIT_KEY") -> AuditKey:
        if len(text) < MIN_KEY_LENGTH:
            raise ConfigError(
                f"{source} is too short ({len(text)} characters): use at least "
                f"{MIN_KEY_LENGTH} random ones, e.g. `openssl rand -hex 32`"
            )
        return cls(text.encode())

    @property
    def key_id(self) -> str:
        return hashlib.sha256(b"nbenv audit key id\0" + self.secret).hexdigest()[:16]

    def __repr__(self) -> str:  # never the secret, in a log or a traceback
        return f"AuditKey(id={self.key_id})"


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


# One encoder for every entry: json.dumps with options builds a new one per call, which
# costs a quarter of hashing an entry (`audit verify` hashes every entry of the log).
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


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
    details: Any,
    key: AuditKey | None = None,
) -> str:
    """SHA-256 of the entry's fields (plain), or their HMAC-SHA256 under KEY (sealed;
    the key's ID is part of what is sealed)."""
    fields: list[Any] = [prev_hash, seq, at, actor, action, image, sha, outcome, details]
    if key is None:
        return hashlib.sha256(canonical_json(fields).encode()).hexdigest()
    body = canonical_json([*fields, key.key_id]).encode()
    return hmac.new(key.secret, body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainCheck:
    """What `audit verify` found. STATUS: intact | broken (an entry was edited, deleted,
    reordered or downgraded) | unverifiable (sealed with a key that was not given) |
    unsealed (a key was given, but the newest entry is not sealed with it)."""

    status: str
    entries: int
    bad_seq: int | None = None
    problem: str | None = None
    sealed: tuple[int, int] | None = None  # the first and last sealed entries
    key_id: str | None = None
    head_hash: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "intact"

    def describe(self) -> str:
        if self.status == "broken":
            return f"audit log broken at entry {self.bad_seq}: {self.problem}"
        if self.status == "unverifiable":
            return f"audit log not verified from entry {self.bad_seq}: {self.problem}"
        if self.status == "unsealed":
            return f"audit log not sealed at its end (entry {self.bad_seq}): {self.problem}"
        text = f"audit log intact: {self.entries} entries, hash chain verified"
        if self.sealed:
            first, last = self.sealed
            text += f"; entries {first}-{last} sealed with audit key {self.key_id}"
        elif self.entries:
            text += " (plain SHA-256: set NBENV_AUDIT_KEY to seal new entries)"
        if self.entries and self.head_hash:
            text += f"; newest entry {self.entries}, hash {self.head_hash}"
        return text


def verify_chain(
    entries: Iterable[AuditEntry | UnreadableEntry],
    head: tuple[int, str] | None,
    key: AuditKey | None = None,
) -> ChainCheck:
    """Check ENTRIES (ordered by seq) against each other and against HEAD (the last seq
    and hash written; None when its row is gone). Streams: memory does not grow."""
    expected_seq = 1
    prev = GENESIS
    count = 0
    sealed: tuple[int, int] | None = None
    last_key: str | None = None
    # Entries sealed with a key not given: the first one, how many, and their key IDs.
    unverified_from: int | None = None
    unverified = 0
    unverified_keys: set[str] = set()

    def broken(seq: int, problem: str) -> ChainCheck:
        return ChainCheck("broken", count, seq, problem)

    for entry in entries:
        count += 1
        if entry.seq != expected_seq:
            missing = expected_seq if entry.seq > expected_seq else entry.seq
            return broken(
                missing,
                f"expected entry {expected_seq}, found {entry.seq}: a row was deleted or reordered",
            )
        if isinstance(entry, UnreadableEntry):
            return broken(entry.seq, entry.problem)
        if entry.prev_hash != prev:
            return broken(
                entry.seq,
                "its link to the previous entry does not match: "
                "an earlier row was edited, deleted or reordered",
            )
        if entry.key_id is None and sealed:
            return broken(
                entry.seq,
                f"it is not sealed, though entry {sealed[1]} before it is: it was written "
                "by a process without NBENV_AUDIT_KEY, or rewritten by someone without it",
            )
        if entry.key_id is not None and (key is None or key.key_id != entry.key_id):
            # Not ours to check: its links and seq still are, and the rest of the chain.
            unverified_from = unverified_from or entry.seq
            unverified += 1
            unverified_keys.add(entry.key_id)
        else:
            try:
                digest = entry.computed_hash(key)
            except (TypeError, ValueError, RecursionError):
                return broken(entry.seq, "its contents cannot be hashed: the row was edited")
            if not hmac.compare_digest(digest, entry.hash):
                seal = "seal" if entry.key_id else "hash"
                return broken(
                    entry.seq, f"its contents do not match its {seal}: the row was edited"
                )
        if entry.key_id is not None:
            sealed = (sealed[0] if sealed else entry.seq, entry.seq)
        last_key = entry.key_id
        prev = entry.hash
        expected_seq += 1
    last = expected_seq - 1
    if head is None:
        return broken(
            last + 1,
            f"the audit head (how many entries were written) is missing after entry {last}: "
            "rows at the end may have been deleted",
        )
    head_seq, head_hash = head
    if head_seq != last or (last and head_hash != prev):
        bad = min(head_seq, last) + 1 if head_seq != last else last
        return broken(
            bad,
            f"the log ends at entry {last} but {head_seq} were written: "
            "rows were deleted from the end",
        )
    if unverified_from is not None:
        given = (
            "NBENV_AUDIT_KEY is not set" if key is None else f"NBENV_AUDIT_KEY is key {key.key_id}"
        )
        return ChainCheck(
            "unverifiable",
            count,
            unverified_from,
            f"it is sealed with audit key {', '.join(sorted(unverified_keys))} "
            f"({unverified} entries from entry {unverified_from} on), but {given}: verify with "
            "the key they were written with (the links between all entries, and the other "
            "entries, are intact)",
        )
    if key is not None and last and last_key is None:
        return ChainCheck(
            "unsealed",
            count,
            last,
            f"NBENV_AUDIT_KEY (key {key.key_id}) is set, but the newest entry is not sealed "
            "with it: nothing was recorded since the key was set, or the log was rewritten "
            "by someone without the key",
        )
    key_id = key.key_id if key is not None and sealed else None
    return ChainCheck(
        "intact", count, sealed=sealed, key_id=key_id, head_hash=prev if last else None
    )
