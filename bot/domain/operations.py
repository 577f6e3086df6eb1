"""Turn a request into pointer changes, or a refusal that says why.

Nothing here reads or writes anything: the service layer loads the state, asks for a
plan and applies it with compare-and-swap on each environment's generation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bot.domain.errors import Conflict, Refused
from bot.domain.freeze_windows import WindowTime
from bot.domain.model import ImageState, Version
from bot.domain.names import Env, short
from bot.domain.policy import PolicyCheck
from bot.domain.text import escape, mention
from bot.domain.vulnerabilities import ScanDelta, Severity, blocked_text


@dataclass(frozen=True)
class PointerChange:
    env: Env
    old: str | None
    new: str
    expected_generation: int


@dataclass(frozen=True)
class Plan:
    action: str
    image: str
    sha: str
    changes: tuple[PointerChange, ...]
    revoke: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def change(self, env: Env) -> PointerChange | None:
        return next((c for c in self.changes if c.env == env), None)

    def describe(self) -> str:
        if not self.changes:
            return "no environment changes"
        return "; ".join(f"{c.env.value} {short(c.old)} → {short(c.new)}" for c in self.changes)


def pointers_text(shas: Mapping[str, str | None]) -> str:
    """Where each environment points (SHAS: environment name → SHA), as every message that
    shows them says it: staging `abc1234`, production `def5678`, fallback `—`."""
    return ", ".join(f"{env.value} `{short(shas.get(env.value))}`" for env in Env)


@dataclass(frozen=True)
class Seen:
    """The environments of an image as the owner saw them when they decided.

    A promote or rollback that runs later (a confirmation pressed, a `--yes` queued as a
    job) applies only while the environments are still so: same generations (each move
    of a pointer counts one) and, where known, same SHAs. Otherwise it does nothing.
    """

    generations: Mapping[str, int]
    shas: Mapping[str, str | None] | None = None
    shown: bool = True  # a plan was shown (a confirmation), else asked for with --yes

    @classmethod
    def of(cls, state: ImageState, *, shown: bool) -> Seen:
        return cls(state.generations(), state.shas(), shown)

    def moved(self, state: ImageState) -> bool:
        generations = state.generations()
        if generations != {env: self.generations.get(env, 0) for env in generations}:
            return True
        return self.shas is not None and any(
            self.shas.get(env.value) != state.sha(env) for env in Env
        )

    def refuse_if_moved(self, state: ImageState, action: str) -> None:
        """Refuse ACTION when the environments moved since they were seen; say how."""
        if not self.moved(state):
            return
        now = pointers_text(state.shas())
        since = "this was shown" if self.shown else "you asked"
        saw = f" (you saw {pointers_text(self.shas)})" if self.shas is not None else ""
        raise Conflict(
            f"the environments of {state.image} changed since {since}: {now}{saw}. "
            f"Nothing was changed; run `/nbenv {action} {state.image}` again to see "
            "the new plan."
        )


def _change(state: ImageState, env: Env, new: str) -> PointerChange:
    pointer = state.pointer(env)
    return PointerChange(env=env, old=pointer.sha, new=new, expected_generation=pointer.generation)


def _refuse_if_frozen(state: ImageState, action: str) -> None:
    if state.freeze:
        freeze = state.freeze
        raise Refused(
            f"{state.image} is frozen by {mention(freeze.by)} ({escape(freeze.reason)}): "
            f"{action} is blocked until an owner runs `unfreeze {state.image}`"
        )


def _refuse_if_in_window(
    image: str, window: WindowTime | None, action: str, *, force: bool, how: str
) -> dict[str, Any]:
    """Refused inside a recurring freeze window, unless forced (then what was overridden,
    for the audit entry)."""
    if window is None:
        return {}
    if not force:
        raise Refused(
            f"{image} is in its freeze window {escape(window.describe())}: {action} is "
            f"blocked until then; an owner may {how} with --force --reason R"
        )
    return {"overridden_window": window.window.describe()}


def plan_publish(state: ImageState, version: Version) -> Plan:
    """staging := SHA, for a version whose automated tests passed."""
    if not version.tests_passed:
        raise Refused(
            f"{short(version.sha)} of {state.image} failed its automated tests: "
            "it cannot go to staging"
        )
    changes: tuple[PointerChange, ...] = ()
    if state.sha(Env.STAGING) != version.sha:
        changes = (_change(state, Env.STAGING, version.sha),)
    return Plan("publish", state.image, version.sha, changes)


def plan_promote(
    state: ImageState,
    staging: Version | None,
    policy: PolicyCheck,
    *,
    force: bool = False,
    reason: str | None = None,
    window: WindowTime | None = None,
    vulnerabilities: ScanDelta | None = None,
    block_on: Severity | None = None,
) -> Plan:
    """fallback := production (when there is one and it differs); production := staging.

    WINDOW: the recurring freeze window it is now, if any. VULNERABILITIES: what the move
    does to known vulnerabilities; with BLOCK_ON (the image's `block_on_severity`), one
    that introduces a vulnerability that bad or worse is refused unless forced. A scan
    not finished blocks nothing: the plan says so and the owner decides."""
    image = state.image
    staging_sha = state.sha(Env.STAGING)
    production_sha = state.sha(Env.PRODUCTION)
    if staging_sha is None or staging is None:
        raise Refused(f"{image} has nothing in staging to promote")
    if staging_sha == production_sha:
        raise Refused(f"{short(staging_sha)} is already in production for {image}")
    _refuse_if_frozen(state, "promotion")
    if force and not (reason and reason.strip()):
        raise Refused("--force needs --reason R: say why the rejection is overridden")
    overridden = _refuse_if_in_window(image, window, "promotion", force=force, how="promote")
    if policy.rejections and not force:
        who = ", ".join(
            f"{mention(v.user)} ({escape(v.reason)})" if v.reason else mention(v.user)
            for v in policy.rejections
        )
        raise Refused(
            f"{short(staging_sha)} of {image} is rejected by {who}: it stays blocked until they "
            "approve, or an owner promotes with --force --reason R"
        )
    if not policy.approvals_met:
        revoked = (
            f" It was revoked ({escape(staging.revoked_reason) or 'rolled back'})"
            " and needs fresh approvals."
            if staging.revoked
            else ""
        )
        not_counted = (
            " Your own approval does not count for " + image + "." if policy.not_counted else ""
        )
        raise Refused(
            f"{short(staging_sha)} of {image} has {len(policy.counted)} of {policy.required} "
            f"required approvals.{revoked}{not_counted}"
        )
    blocking = vulnerabilities.at_or_above(block_on) if vulnerabilities and block_on else []
    if blocking and not force:
        assert block_on is not None
        raise Refused(blocked_text(image, staging_sha, blocking, block_on))
    changes = []
    if production_sha is not None:
        changes.append(_change(state, Env.FALLBACK, production_sha))
    changes.append(_change(state, Env.PRODUCTION, staging_sha))
    # A fallback equal to the new production would protect nothing; keep the old one.
    changes = [c for c in changes if c.old != c.new]
    details: dict[str, Any] = {
        "production": [production_sha, staging_sha],
        "fallback": [state.sha(Env.FALLBACK), production_sha or state.sha(Env.FALLBACK)],
        "approvals": list(policy.counted),
    }
    if vulnerabilities is not None:
        details["vulnerabilities"] = vulnerabilities.summary()
    if force:
        details["forced"] = True
        details["reason"] = reason
        details["overridden_rejections"] = [v.user for v in policy.rejections]
        details.update(overridden)
        if blocking:
            # The worst few on record (an image may have hundreds), and how many there were.
            details["overridden_vulnerabilities"] = [f.as_dict() for f in blocking[:20]]
            details["overridden_vulnerability_count"] = len(blocking)
    return Plan("promote", image, staging_sha, tuple(changes), details=details)


def plan_rollback(state: ImageState, *, reason: str | None = None) -> Plan:
    """production := fallback; the SHA that was in production is revoked.

    Allowed while frozen: it is the emergency exit.
    """
    image = state.image
    production_sha = state.sha(Env.PRODUCTION)
    fallback_sha = state.sha(Env.FALLBACK)
    if production_sha is None:
        raise Refused(f"{image} has nothing in production to roll back")
    if fallback_sha is None:
        raise Refused(
            f"{image} has no fallback: use `rollback {image} --to SHA` with a version "
            f"from `versions {image}`"
        )
    if fallback_sha == production_sha:
        raise Refused(
            f"production of {image} already is the fallback {short(fallback_sha)}: use "
            f"`rollback {image} --to SHA` to go further back"
        )
    return Plan(
        "rollback",
        image,
        fallback_sha,
        (_change(state, Env.PRODUCTION, fallback_sha),),
        revoke=production_sha,
        details={"production": [production_sha, fallback_sha], "reason": reason},
    )


def plan_rollback_to(
    state: ImageState,
    target: Version,
    *,
    force: bool = False,
    reason: str | None = None,
    window: WindowTime | None = None,
) -> Plan:
    """production := an earlier version whose tests passed; refused while frozen, and in
    a freeze window unless forced."""
    image = state.image
    production_sha = state.sha(Env.PRODUCTION)
    _refuse_if_frozen(state, "rollback to a chosen SHA")
    overridden = _refuse_if_in_window(
        image, window, "rollback to a chosen SHA", force=force, how="roll back to it"
    )
    if not target.tests_passed:
        raise Refused(f"{short(target.sha)} of {image} failed its automated tests")
    if target.sha == production_sha:
        raise Refused(f"{short(target.sha)} already is in production for {image}")
    if target.revoked and not force:
        raise Refused(
            f"{short(target.sha)} of {image} was revoked "
            f"({escape(target.revoked_reason) or 'rolled back'})"
            ": add --force --reason R to use it anyway"
        )
    revoke = production_sha if production_sha and production_sha != target.sha else None
    return Plan(
        "rollback",
        image,
        target.sha,
        (_change(state, Env.PRODUCTION, target.sha),),
        revoke=revoke,
        details={
            "production": [production_sha, target.sha],
            "to": target.sha,
            "reason": reason,
            **overridden,
        },
    )
