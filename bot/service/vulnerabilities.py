"""What a promotion or rollback does to known vulnerabilities, for its plan; and the
counts of each version where the backend's scanner knows them (`versions`, App Home).

The scanner is an optional capability of the backend (`ScansImages`: Artifact Analysis
on gcp). Without it, or while a scan is not finished, the plan says so and blocks
nothing: the owner decides, knowing what is not known.
"""

from __future__ import annotations

from typing import Any

from bot.domain.errors import NbenvError
from bot.domain.names import short
from bot.domain.text import escape
from bot.domain.vulnerabilities import (
    Finding,
    Scan,
    ScanDelta,
    ScanState,
    Severity,
    compare,
    counts,
    counts_text,
    worst,
)
from bot.service.context import Context
from bot.service.ports import ScansImages

NO_SCANNER = "vulnerability scanning needs the gcp backend (Artifact Analysis)"
VERSIONS_SCANNED = 10  # newest versions whose scans `versions` reads


def scans_here(ctx: Context) -> bool:
    return isinstance(ctx.backend, ScansImages)


def scan_of(ctx: Context, image: str, sha: str) -> Scan:
    """SHA's scan as the backend knows it now; what went wrong becomes the scan's note."""
    backend = ctx.backend
    if not isinstance(backend, ScansImages):
        return Scan(ScanState.UNAVAILABLE, note=NO_SCANNER)
    try:
        return backend.vulnerability_scan(image, sha)
    except NbenvError as error:
        return Scan(ScanState.UNAVAILABLE, note=error.message)


def known_counts(ctx: Context, image: str, sha: str) -> dict[str, int] | None:
    """SHA's counts by severity if a finished scan was read lately (no remote call)."""
    backend = ctx.backend
    if not isinstance(backend, ScansImages):
        return None
    scan = backend.known_scan(image, sha)
    return scan.counts() if scan is not None and scan.done else None


def delta(ctx: Context, image: str, old_sha: str | None, new_sha: str) -> ScanDelta:
    """What moving from OLD_SHA (None: nothing yet) to NEW_SHA does to known vulnerabilities."""
    new = scan_of(ctx, image, new_sha)
    if new.state is ScanState.UNAVAILABLE:
        # No scanner, or it did not answer: the other side cannot make the move known,
        # and asking it would only make the owner wait once more.
        return compare(old_sha, None, new_sha, new)
    old = scan_of(ctx, image, old_sha) if old_sha else None
    return compare(old_sha, old, new_sha, new)


def delta_data(ctx: Context, image: str, moved: ScanDelta) -> dict[str, Any]:
    """MOVED as data, with "text" (mrkdwn) for the confirmation and `--dry-run`."""
    threshold = ctx.config.images[image].blocking_severity
    data = moved.as_dict()
    data["block_on_severity"] = threshold.name if threshold else None
    data["text"] = delta_text(moved, threshold)
    return data


def delta_text(moved: ScanDelta, threshold: Severity | None) -> str:
    old, new = f"`{short(moved.old_sha)}`", f"`{short(moved.new_sha)}`"
    title = f"*Known vulnerabilities* ({old} → {new}):"
    if moved.new.state is ScanState.UNAVAILABLE and moved.new.note == NO_SCANNER:
        return f"_Known vulnerabilities: {NO_SCANNER}._"
    if not moved.known:
        lines = [title]
        for sha, scan in moved.pending():
            lines.append(f"• ⏳ `{sha}`: {escape(scan.note or scan.state.value)}")
        lines.append(
            "• what this fixes or introduces is not known yet: decide with that in mind, "
            "or ask again in a few minutes"
        )
        if threshold is not None:
            lines.append(
                f"• block_on_severity {threshold.name} cannot be checked without both "
                "scans: nothing is blocked for it"
            )
        return "\n".join(lines)
    lines = [title]
    if moved.introduced:
        lines.append(f"• introduced: {_named(moved.introduced)}")
    if moved.fixed:
        lines.append(f"• fixed: {_named(moved.fixed)}")
    if not moved.introduced and not moved.fixed:
        lines.append(f"• no change (both: {counts_text(moved.new.counts())})")
    else:
        lines.append(f"• {new} has {counts_text(moved.new.counts())} in all")
    blocking = moved.at_or_above(threshold) if threshold is not None else []
    if blocking:
        lines.append(
            f"• ⛔ {len(blocking)} at or above block_on_severity {threshold.name}"  # type: ignore[union-attr]
        )
    for _, scan in ((moved.old_sha, moved.old), (moved.new_sha, moved.new)):
        if scan is not None and scan.note:
            lines.append(f"_{escape(scan.note)}_")
    return "\n".join(lines)


def _named(findings: tuple[Finding, ...]) -> str:
    shown = "; ".join(f.describe() for f in worst(findings))
    more = len(findings) - len(worst(findings))
    return f"{counts_text(counts(findings))} — {shown}" + (f"; and {more} more" if more else "")


def version_counts(ctx: Context, image: str, shas: list[str]) -> dict[str, dict[str, Any]]:
    """The scans of SHAS (the newest few) for `versions`: sha → state, counts when done."""
    if not isinstance(ctx.backend, ScansImages):
        return {}
    found: dict[str, dict[str, Any]] = {}
    for sha in shas[:VERSIONS_SCANNED]:
        scan = scan_of(ctx, image, sha)
        entry: dict[str, Any] = {"state": scan.state.value}
        if scan.done:
            entry["counts"] = scan.counts()
        if scan.state is ScanState.UNAVAILABLE:
            # The scanner refused or did not answer: asking again for each version would
            # only make the person wait as many times.
            entry["note"] = scan.note
            found[sha] = entry
            break
        found[sha] = entry
    return found


def counts_label(entry: dict[str, Any] | None) -> str:
    """A version's scan in a few words: `vulns: 1 critical, 2 high`, `scan pending`."""
    if not entry:
        return ""
    if "counts" in entry:
        return f"vulns: {counts_text(entry['counts'])}"
    return f"scan {entry['state']}"
