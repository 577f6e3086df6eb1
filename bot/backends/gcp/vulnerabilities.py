"""Artifact Analysis: the known vulnerabilities of a pushed image version.

Artifact Analysis scans every image pushed to Artifact Registry (when the Container
Scanning API is on) and records what it finds as Grafeas *occurrences* of the image's
URL pinned to its digest, `https://REGISTRY/IMAGE@sha256:…`: one DISCOVERY occurrence
saying how far the scan got (`analysisStatus`), and one VULNERABILITY occurrence per
vulnerable package. Both are read with `projects.occurrences.list` and a filter
`kind="…" AND resourceUrl="…"`, as Google's guide to getting vulnerabilities does.

The client (google-cloud-containeranalysis's Grafeas client on the REST transport, see
`Clients.grafeas`) is made the first time a scan is asked for, never on Slack's ack
path. A scan read when it is finished is kept a few minutes per process, so App Home
and `versions` can show counts without asking Google each time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.backends.gcp.registry import ArtifactRegistry, RegistryPath
from bot.domain.names import short
from bot.domain.vulnerabilities import Finding, Scan, ScanState, Severity

SERVICE = "Artifact Analysis"
PERMISSION = "containeranalysis.occurrences.list"
VIEWER = "roles/containeranalysis.occurrences.viewer"
PAGE_SIZE = 1000  # the most the API gives per page
MAX_OCCURRENCES = 20_000  # an image with more is cut short, and says so
KEPT_FOR = 300.0  # seconds a finished scan is reused in this process
_DONE = {"FINISHED_SUCCESS", "COMPLETE"}
_FAILED = {"FINISHED_FAILED", "FINISHED_UNSUPPORTED"}


class ArtifactAnalysis:
    def __init__(
        self,
        path: RegistryPath,
        registry: ArtifactRegistry,
        clients: Clients,
        caller: Caller,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.registry = registry
        self.clients = clients
        self.caller = caller
        self.clock = clock
        self._lock = threading.Lock()
        self._kept: dict[tuple[str, str], tuple[float, Scan]] = {}

    def resource_url(self, image: str, digest: str) -> str:
        return f"https://{self.path.image_url(image)}@{digest}"

    def known(self, image: str, sha: str) -> Scan | None:
        with self._lock:
            kept = self._kept.get((image, sha))
        if kept is None or self.clock() - kept[0] > KEPT_FOR:
            return None
        return kept[1]

    def scan(self, image: str, sha: str) -> Scan:
        kept = self.known(image, sha)
        if kept is not None:
            return kept
        digest = self.registry.version_of(image, sha).rsplit("/", 1)[-1]
        url = self.resource_url(image, digest)
        discovery = self._occurrences("DISCOVERY", url, short(sha))
        status = _analysis_status(discovery)
        if status is None:
            return Scan(
                ScanState.PENDING,
                note=f"not scanned yet ({digest[:19]}…): Artifact Analysis scans an image "
                "minutes after its push (if the Container Scanning API is on)",
            )
        if status in _FAILED:
            return Scan(ScanState.FAILED, note=f"Artifact Analysis could not scan it ({status})")
        if status not in _DONE:
            return Scan(ScanState.PENDING, note=f"still being scanned ({status})")
        occurrences = self._occurrences("VULNERABILITY", url, short(sha))
        findings = tuple(f for occurrence in occurrences for f in _findings(occurrence))
        note = None
        if len(occurrences) >= MAX_OCCURRENCES:
            note = f"only the first {MAX_OCCURRENCES} findings were read"
        scan = Scan(ScanState.DONE, findings, note)
        with self._lock:
            self._kept[(image, sha)] = (self.clock(), scan)
        return scan

    def _occurrences(self, kind: str, url: str, what: str) -> list[Any]:
        from grafeas.grafeas_v1 import ListOccurrencesRequest

        client = self.clients.grafeas()
        parent = f"projects/{self.path.project}"
        request = ListOccurrencesRequest(
            parent=parent,
            filter=f'kind="{kind}" AND resourceUrl="{url}"',
            page_size=PAGE_SIZE,
        )

        def every_page(**options: Any) -> list[Any]:
            found = []
            for occurrence in client.list_occurrences(request=request, **options):
                found.append(occurrence)
                if len(found) >= MAX_OCCURRENCES:
                    break
            return found

        op = Op(SERVICE, f"read the {kind.lower()} of {what}", url, PERMISSION, VIEWER)
        return self.caller.call(op, every_page)


def _analysis_status(discovery: list[Any]) -> str | None:
    """How far the scan got; None without a discovery occurrence (not scanned yet)."""
    statuses = [o.discovery.analysis_status.name for o in discovery if "discovery" in o]
    if not statuses:
        return None
    for status in ("FINISHED_SUCCESS", "COMPLETE", "FINISHED_FAILED", "FINISHED_UNSUPPORTED"):
        if status in statuses:
            return status
    return statuses[0]


def _version(version: Any) -> str | None:
    if not version or version.kind.name in ("MINIMUM", "MAXIMUM"):
        return None  # MAXIMUM as fixed version: no fix is known
    if version.full_name:
        return str(version.full_name)
    name = str(version.name or "")
    return f"{name}-{version.revision}" if version.revision else name or None


def _findings(occurrence: Any) -> list[Finding]:
    vulnerability = occurrence.vulnerability
    cve = str(occurrence.note_name).rsplit("/", 1)[-1] or str(vulnerability.short_description)
    overall = Severity.of(vulnerability.effective_severity.name)
    if overall is Severity.UNSPECIFIED:
        overall = Severity.of(vulnerability.severity.name)
    found = []
    for issue in vulnerability.package_issue:
        severity = Severity.of(issue.effective_severity.name)
        found.append(
            Finding(
                cve=cve[:100],
                severity=severity if severity is not Severity.UNSPECIFIED else overall,
                package=str(issue.affected_package or issue.fixed_package or "?")[:200],
                installed=(_version(issue.affected_version) or "")[:100] or None,
                fixed_in=(_version(issue.fixed_version) or "")[:100] or None,
            )
        )
    if not found:
        found.append(Finding(cve=cve[:100], severity=overall, package="?"))
    return found
