"""What a successful build does, decided by the branch it built. Pure.

Only a build of a branch acts on success: the staging branch's build is published to
staging, the production branch's is promoted under the approval policy. A build of
anything else (another branch, a tag, an explicit commit SHA) is test only: the version
is recorded with its test report and no environment moves, on every backend. An
explicit SHA says nothing about which branch the commit belongs to now, and moving
staging to an arbitrary commit is what `nbenv publish` (an owner's, audited) is for.
"""

from __future__ import annotations

PUBLISH = "publish"
PROMOTE = "promote"


def success_action(branch: str | None, staging_branch: str, production_branch: str) -> str | None:
    """`publish`, `promote` or None (test only) for a build of BRANCH (None: not a branch)."""
    if not branch:
        return None
    if branch == staging_branch:
        return PUBLISH
    if branch == production_branch:
        return PROMOTE
    return None


def what_a_build_will_do(
    ref: str, *, is_branch: bool, staging_branch: str, production_branch: str
) -> str:
    """The promise the `build` reply makes: what happens when the build of REF succeeds."""
    action = success_action(ref if is_branch else None, staging_branch, production_branch)
    if action == PUBLISH:
        return "if it succeeds it is published to staging"
    if action == PROMOTE:
        return "if it succeeds it is promoted to production under the approval policy"
    return (
        "test only: the version and its test report are recorded, no environment moves "
        f"(to publish, build the `{staging_branch}` branch)"
    )
