"""What "changes nothing" means, read through the store: an image's environments (SHA and
generation), its versions, standing approvals and freeze, and the audit log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.domain.names import Env


@dataclass(frozen=True)
class Snapshot:
    pointers: tuple[tuple[str, str | None, int], ...]
    versions: tuple[tuple[str, bool, bool], ...]
    verdicts: tuple[tuple[str, str, bool, str | None], ...]  # sha, user, approved, reason
    freeze: tuple[str, str] | None
    audit: tuple[tuple[str, str, str, str | None, str], ...]  # actor, action, image, sha, outcome
    head: tuple[int, str] | None

    def new_audit(self, before: Snapshot) -> tuple[tuple[str, str, str, str | None, str], ...]:
        assert self.audit[: len(before.audit)] == before.audit, "the audit log was rewritten"
        return self.audit[len(before.audit) :]

    def same_but_refusals(self, before: Snapshot) -> bool:
        """Nothing changed but refusals logged (a refusal is itself audited)."""
        added = self.new_audit(before)
        return (
            (self.pointers, self.versions, self.verdicts, self.freeze)
            == (before.pointers, before.versions, before.verdicts, before.freeze)
            and all(entry[4] == "refused" for entry in added)
            and (self.head == before.head) == (not added)
        )

    def same_but(self, before: Snapshot, *, user: str, sha: str) -> bool:
        """Nothing changed but refusals logged and USER's word on SHA (approved or
        rejected): what the request does before it is broken."""
        added = self.new_audit(before)
        verdicts = set(self.verdicts) ^ set(before.verdicts)
        return (
            (self.pointers, self.versions, self.freeze)
            == (before.pointers, before.versions, before.freeze)
            and all(verdict[:2] == (sha, user) for verdict in verdicts)
            and all(e[4] == "refused" or (e[0], e[3]) == (user, sha) for e in added)
            and (self.head == before.head) == (not added)
        )


def snapshot(rt: Any, image: str) -> Snapshot:
    with rt.store.read() as tx:
        state = tx.pointers.state(image)
        versions = tx.versions.of_image(image)
        verdicts = [
            (version.sha, verdict.user, verdict.approved, verdict.reason)
            for version in versions
            for verdict in tx.approvals.standing(image, version.sha)
        ]
        freeze = tx.freezes.get(image)
        entries = tx.audit.entries(image=image)
        head = tx.audit.head()
    return Snapshot(
        pointers=tuple((env.value, state.sha(env), state.pointer(env).generation) for env in Env),
        versions=tuple(sorted((v.sha, v.tests_passed, v.revoked_at is not None) for v in versions)),
        verdicts=tuple(sorted(verdicts, key=repr)),
        freeze=None if freeze is None else (freeze.by, freeze.reason),
        audit=tuple((e.actor, e.action, e.image, e.sha, e.outcome) for e in entries),
        head=head,
    )
