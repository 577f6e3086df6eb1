"""Known vulnerabilities of two image versions, and what moving from one to the other does.

A scan is what an image scanner (Artifact Analysis on gcp) reports for one version: its
findings when the scan finished, or why there are none to show (not finished yet, failed,
not available on this backend). Comparing the version an environment runs now with the
one it would run says which vulnerabilities the move *fixes* and which it *introduces*.
A finding is one vulnerability (CVE) in one package: the same CVE in another package is
another finding, since fixing one does not fix the other.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Any

from bot.domain.names import short
from bot.domain.text import escape

WORST_NAMED = 3  # findings named by CVE in a plan, worst first


class Severity(IntEnum):
    """Grafeas' severities (`grafeas.v1.Severity`), ordered: worse is greater."""

    UNSPECIFIED = 0
    MINIMAL = 1
    LOW = 2
    MEDIUM = 3
    HIGH = 4
    CRITICAL = 5

    @classmethod
    def parse(cls, text: str) -> Severity:
        """TEXT as a severity (any case); ValueError naming the choices otherwise."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            choices = ", ".join(s.name for s in reversed(cls) if s is not cls.UNSPECIFIED)
            raise ValueError(f"expected one of {choices}, not {text[:40]!r}") from None

    @classmethod
    def of(cls, text: str | None) -> Severity:
        """A severity as an API spells it; anything unknown counts as UNSPECIFIED."""
        try:
            return cls[str(text or "").upper().removeprefix("SEVERITY_")]
        except KeyError:
            return cls.UNSPECIFIED


# The severities shown, worst first (UNSPECIFIED last, as "other").
SHOWN = tuple(sorted(Severity, key=lambda s: (s is Severity.UNSPECIFIED, -s)))


@dataclass(frozen=True)
class Finding:
    cve: str  # CVE-2024-1234 (or the scanner's ID for it)
    severity: Severity
    package: str
    installed: str | None = None
    fixed_in: str | None = None  # None: no fix known

    @property
    def key(self) -> tuple[str, str]:
        return (self.cve, self.package)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cve": self.cve,
            "severity": self.severity.name,
            "package": self.package,
            "installed": self.installed,
            "fixed_in": self.fixed_in,
        }

    def describe(self) -> str:
        fix = f"fixed in {escape(self.fixed_in)}" if self.fixed_in else "no fix yet"
        installed = f" {escape(self.installed)}" if self.installed else ""
        return (
            f"{escape(self.cve)} ({self.severity.name.lower()}) in "
            f"`{escape(self.package)}`{installed}, {fix}"
        )


class ScanState(Enum):
    DONE = "done"  # the scan finished: its findings are all there are
    PENDING = "pending"  # not scanned yet, or still scanning
    FAILED = "failed"  # the scanner could not analyse the image
    UNAVAILABLE = "unavailable"  # no scanner here, or it could not be asked


@dataclass(frozen=True)
class Scan:
    state: ScanState
    findings: tuple[Finding, ...] = ()
    note: str | None = None  # why there are no findings to show (plain text)

    @property
    def done(self) -> bool:
        return self.state is ScanState.DONE

    def counts(self) -> dict[str, int]:
        return counts(self.findings)


def counts(findings: Iterable[Finding]) -> dict[str, int]:
    """How many findings of each severity, worst first, severities with none left out."""
    tally = {severity: 0 for severity in SHOWN}
    for finding in findings:
        tally[finding.severity] += 1
    return {severity.name: n for severity, n in tally.items() if n}


def counts_text(tally: dict[str, int]) -> str:
    """`2 critical, 1 high` (or `none`)."""
    return ", ".join(f"{n} {name.lower()}" for name, n in tally.items()) or "none"


def worst(findings: Iterable[Finding], limit: int = WORST_NAMED) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.severity, f.cve, f.package))[:limit]


def unique(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """One finding per (CVE, package): a scanner may report one per affected file."""
    kept: dict[tuple[str, str], Finding] = {}
    for finding in findings:
        seen = kept.get(finding.key)
        if seen is None or finding.severity > seen.severity:
            kept[finding.key] = finding
    return tuple(kept.values())


@dataclass(frozen=True)
class ScanDelta:
    """What moving an environment from OLD_SHA to NEW_SHA does to known vulnerabilities."""

    old_sha: str | None
    new_sha: str
    old: Scan | None  # None: the environment runs nothing yet
    new: Scan
    fixed: tuple[Finding, ...] = field(default=())
    introduced: tuple[Finding, ...] = field(default=())

    @property
    def known(self) -> bool:
        """Both sides were scanned, so FIXED and INTRODUCED are the whole story."""
        return self.new.done and (self.old is None or self.old.done)

    def at_or_above(self, threshold: Severity) -> list[Finding]:
        """The introduced findings at THRESHOLD or worse, worst first."""
        if not self.known:
            return []
        return worst((f for f in self.introduced if f.severity >= threshold), len(self.introduced))

    def pending(self) -> list[tuple[str, Scan]]:
        """The sides (short SHA, scan) without findings to show."""
        sides = [(self.old_sha, self.old), (self.new_sha, self.new)]
        return [(short(sha), scan) for sha, scan in sides if scan is not None and not scan.done]

    def summary(self) -> dict[str, Any]:
        """What was known when the move was decided, for its audit entry."""
        if not self.known:
            sides = (("from", self.old), ("to", self.new))
            return {
                "known": False,
                **{side: scan.state.value for side, scan in sides if scan is not None},
            }
        return {"known": True, "introduced": counts(self.introduced), "fixed": counts(self.fixed)}

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "from": self.old_sha,
            "to": self.new_sha,
            "known": self.known,
            "scans": {
                side: None if scan is None else _scan_dict(scan)
                for side, scan in (("from", self.old), ("to", self.new))
            },
        }
        if self.known:
            data["fixed"] = counts(self.fixed)
            data["introduced"] = counts(self.introduced)
            data["worst_introduced"] = [f.as_dict() for f in worst(self.introduced)]
            data["worst_fixed"] = [f.as_dict() for f in worst(self.fixed)]
        return data


def _scan_dict(scan: Scan) -> dict[str, Any]:
    data: dict[str, Any] = {"state": scan.state.value}
    if scan.done:
        data["counts"] = scan.counts()
    if scan.note:
        data["note"] = scan.note
    return data


def compare(old_sha: str | None, old: Scan | None, new_sha: str, new: Scan) -> ScanDelta:
    """OLD (None: nothing runs yet) against NEW; fixed and introduced when both are known."""
    fixed: tuple[Finding, ...] = ()
    introduced: tuple[Finding, ...] = ()
    if new.done and (old is None or old.done):
        before = {f.key: f for f in unique(old.findings)} if old is not None else {}
        after = {f.key: f for f in unique(new.findings)}
        fixed = tuple(f for key, f in before.items() if key not in after)
        introduced = tuple(f for key, f in after.items() if key not in before)
    return ScanDelta(old_sha, new_sha, old, new, fixed, introduced)


def blocked_text(image: str, sha: str, blocking: Sequence[Finding], threshold: Severity) -> str:
    """Why a promotion is refused by the image's `block_on_severity`."""
    named = "; ".join(f.describe() for f in blocking[:WORST_NAMED])
    more = f" and {len(blocking) - WORST_NAMED} more" if len(blocking) > WORST_NAMED else ""
    return (
        f"{short(sha)} of {image} introduces {len(blocking)} known "
        f"vulnerabilit{'y' if len(blocking) == 1 else 'ies'} at or above "
        f"{threshold.name} ({named}{more}): the image's policy block_on_severity refuses it; "
        "an owner may promote with --force --reason R"
    )
