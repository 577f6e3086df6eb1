"""Who may do what, and when a version may go to production."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from bot.domain.errors import Refused
from bot.domain.text import mention

EVERYONE = "*"  # in a team's users (config): every Slack user of the workspace


class Role(IntEnum):
    """Ordered: each role may do all that the roles below it may."""

    USER = 1
    TESTER = 2
    OWNER = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class TeamRoles:
    owners: frozenset[str]
    testers: frozenset[str]
    users: frozenset[str]

    def role_of(self, user: str) -> Role | None:
        if user in self.owners:
            return Role.OWNER
        if user in self.testers or EVERYONE in self.testers:
            return Role.TESTER
        if user in self.users or EVERYONE in self.users:
            return Role.USER
        return None


@dataclass(frozen=True)
class Verdict:
    """A tester's latest word on a version."""

    user: str
    approved: bool
    reason: str | None
    at: str


def standing_verdicts(history: Iterable[Verdict]) -> list[Verdict]:
    """Each person's latest word on a version, from its verdicts oldest first."""
    latest: dict[str, Verdict] = {}
    for verdict in history:
        latest[verdict.user] = verdict
    return list(latest.values())


def kept_by_revocation(history: Sequence[Verdict]) -> list[bool]:
    """For each verdict of HISTORY (oldest first), whether it still stands once the
    version is revoked.

    A revocation voids approvals: the version needs fresh ones. A rejection that is a
    person's latest word stays open (rolling back does not answer it), but one that the
    same person withdrew by approving later stays withdrawn: voiding that approval must
    not bring it back.
    """
    latest = {verdict.user: index for index, verdict in enumerate(history)}
    return [
        index == latest[verdict.user] and not verdict.approved
        for index, verdict in enumerate(history)
    ]


@dataclass(frozen=True)
class PolicyCheck:
    required: int
    counted: tuple[str, ...]  # approvers who count towards the policy
    not_counted: tuple[str, ...]  # approvals that do not count, e.g. the promoter's own
    rejections: tuple[Verdict, ...]

    @property
    def approvals_met(self) -> bool:
        return len(self.counted) >= self.required

    @property
    def met(self) -> bool:
        return self.approvals_met and not self.rejections

    def summary(self) -> str:
        text = f"{len(self.counted)}/{self.required} approvals"
        if self.counted:
            text += " (" + ", ".join(mention(u) for u in self.counted) + ")"
        if self.rejections:
            text += "; rejected by " + ", ".join(mention(v.user) for v in self.rejections)
        return text


def check_policy(
    verdicts: Iterable[Verdict],
    *,
    required: int,
    roles: TeamRoles,
    promoter: str | None,
    owner_approval_counts: bool,
) -> PolicyCheck:
    """Apply the approval policy to the latest verdict of each person.

    Only people who are testers (or owners) *now* count: someone removed from the
    team since approving no longer vouches for the version.
    """
    counted: list[str] = []
    not_counted: list[str] = []
    rejections: list[Verdict] = []
    for verdict in verdicts:
        role = roles.role_of(verdict.user)
        if role is None or role < Role.TESTER:
            continue
        if not verdict.approved:
            rejections.append(verdict)
        elif verdict.user == promoter and not owner_approval_counts:
            not_counted.append(verdict.user)
        else:
            counted.append(verdict.user)
    return PolicyCheck(
        required=required,
        counted=tuple(sorted(counted)),
        not_counted=tuple(sorted(not_counted)),
        rejections=tuple(sorted(rejections, key=lambda v: v.user)),
    )


def require_role(
    roles: TeamRoles, user: str, needed: Role, *, action: str, image: str, team: str
) -> Role:
    """The user's role when it is at least NEEDED; otherwise a Refused that says what is missing."""
    role = roles.role_of(user)
    if role is None or role < needed:
        has = f"you are a {role.label}" if role else f"you are not in team {team}"
        raise Refused(f"{action} on {image} needs the {needed.label} role in team {team}; {has}")
    return role
