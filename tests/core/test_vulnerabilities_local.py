"""The local backend has no image scanner: the plan and `versions` say that scanning
known vulnerabilities needs the gcp backend, and `block_on_severity` blocks nothing."""

from __future__ import annotations

from bot.domain.names import Pipeline
from tests.conftest import IMAGE, OWNER, TESTER, sha_of
from tests.core.test_scenarios import PASSED_REPORT

OLD, NEW = sha_of("local old"), sha_of("local new")
PIPELINE = Pipeline("0f5e6a7b-1111-2222-3333-444455556666")
NO_SCANNER = "Known vulnerabilities: vulnerability scanning needs the gcp backend"


def _release(runtime, sha: str) -> None:  # type: ignore[no-untyped-def]
    runtime.nbenv.publish(PIPELINE, IMAGE, sha, report=PASSED_REPORT, branch="staging")
    runtime.nbenv.handle(TESTER, f"approve {IMAGE} {sha}")


def test_the_local_backend_says_scanning_needs_the_gcp_backend(runtime) -> None:
    _release(runtime, OLD)
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    _release(runtime, NEW)

    plan = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")
    versions = runtime.nbenv.handle(OWNER, f"versions {IMAGE}")

    assert NO_SCANNER in plan.text
    assert plan.data["vulnerabilities"]["known"] is False
    assert plan.data["vulnerabilities"]["scans"]["to"]["state"] == "unavailable"
    assert NO_SCANNER in versions.text
    assert all(row["vulnerabilities"] is None for row in versions.data["items"])
