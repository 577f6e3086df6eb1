"""What a promotion does to known vulnerabilities: Artifact Analysis occurrences of the
two image digests read at the wire (fake Container Analysis v1), shown in the plan,
`block_on_severity` enforced (forced only by an owner with a reason, both on record),
a scan not finished said and never silently blocking, counts in `versions` and App Home.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from bot.domain.commands import Promote, Rollback, to_fields
from bot.domain.errors import BadInput, ConfigError, Refused
from bot.slack import views
from bot.slack.home import home_view
from bot.slack.interactions import Interactions, Later
from bot.store import tables as t
from tests.conftest import IMAGE, OWNER, TESTER, history_of
from tests.gcp.conftest import REGISTRY, release, write_config
from tests.support.fake_google import FakeGoogleApis

OPENSSL = {
    "cve": "CVE-2024-0001",
    "severity": "CRITICAL",
    "package": "openssl",
    "installed": "3.0.11-1",
    "fixed": "3.0.13-1",
}
ZLIB = {"cve": "CVE-2023-0002", "severity": "MEDIUM", "package": "zlib1g", "installed": "1.2.13"}
LIBXML = {"cve": "CVE-2024-0003", "severity": "HIGH", "package": "libxml2", "fixed": None}
CURL = {
    "cve": "CVE-2024-0004",
    "severity": "CRITICAL",
    "package": "curl",
    "installed": "7.88.1-10",
    "fixed": "8.5.0-1",
}


def _runtime(db_url: str, tmp_path: Path, block_on: str | None = None) -> Any:
    from bot.bootstrap import build_runtime

    path = write_config(tmp_path)
    if block_on:
        text = path.read_text(encoding="utf-8")
        path.write_text(
            text.replace(
                "    channel: C01NLP\n",
                f"    channel: C01NLP\n    block_on_severity: {block_on}\n",
            ),
            encoding="utf-8",
        )
    return build_runtime(str(path), db_url)


def _in_production(runtime: Any, google: FakeGoogleApis) -> tuple[str, str]:
    """OLD in production, NEW approved in staging; both pushed, neither scanned yet."""
    old = release(runtime, google, "old")
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    new = release(runtime, google, "new")
    return old, new


def test_the_plan_shows_what_the_promotion_fixes_and_introduces_by_severity(
    db_url, tmp_path, google
) -> None:
    runtime = _runtime(db_url, tmp_path)
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [OPENSSL, ZLIB])
    google.scan(IMAGE, new, [ZLIB, LIBXML, CURL])

    reply = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")

    found = reply.data["vulnerabilities"]
    assert found["introduced"] == {"CRITICAL": 1, "HIGH": 1}
    assert found["fixed"] == {"CRITICAL": 1}
    assert [f["cve"] for f in found["worst_introduced"]] == ["CVE-2024-0004", "CVE-2024-0003"]
    assert (
        "introduced: 1 critical, 1 high — CVE-2024-0004 (critical) in `curl` 7.88.1-10, "
        "fixed in 8.5.0-1; CVE-2024-0003 (high) in `libxml2` 1.0-1, no fix yet"
    ) in reply.text
    assert "fixed: 1 critical — CVE-2024-0001 (critical) in `openssl` 3.0.11-1, fixed in " in (
        reply.text
    )
    # Read at the wire as Google's guide says: the image pinned to its digest.
    digest = google.tags(IMAGE)[new]
    filters = [r.query.get("filter") for r in google.requests() if r.api == "containeranalysis"]
    assert f'kind="VULNERABILITY" AND resourceUrl="https://{REGISTRY}/{IMAGE}@{digest}"' in (
        filters
    )


def test_the_rollback_plan_shows_what_going_back_reintroduces(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path)
    old, new = _in_production(runtime, google)
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    google.scan(IMAGE, old, [OPENSSL])
    google.scan(IMAGE, new, [])

    # What the Slack confirmation of `/nbenv rollback` is made of.
    preview = runtime.nbenv.preview(OWNER, Rollback(image=IMAGE))
    shown = json.dumps(views.confirmation(preview, {"name": "rollback"}, {}), ensure_ascii=False)

    assert preview["vulnerabilities"]["introduced"] == {"CRITICAL": 1}
    assert "introduced: 1 critical — CVE-2024-0001 (critical) in `openssl`" in shown


def test_block_on_severity_refuses_a_promotion_that_introduces_one_and_audits_it(
    db_url, tmp_path, google
) -> None:
    runtime = _runtime(db_url, tmp_path, block_on="critical")
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [ZLIB])
    google.scan(IMAGE, new, [ZLIB, CURL, LIBXML])

    with pytest.raises(Refused) as refused:
        runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert refused.value.message.startswith(
        f"{new[:7]} of {IMAGE} introduces 1 known vulnerability at or above CRITICAL "
        "(CVE-2024-0004 (critical) in `curl` 7.88.1-10, fixed in 8.5.0-1)"
    )
    assert "--force --reason R" in refused.value.message
    assert google.env_tags(IMAGE)["production"] == old
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE} {new}")
    refusal = next(e for e in history if e["action"] == "promote")
    assert refusal["outcome"] == "refused"
    assert "CVE-2024-0004" in refusal["details"]["reason"]

    runtime.nbenv.handle(OWNER, f"promote {IMAGE} --force --reason 'curl not reachable'")

    assert google.env_tags(IMAGE)["production"] == new
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE} {new}")
    forced = next(e for e in history if e["action"] == "promote" and e["outcome"] == "ok")
    assert forced["details"]["reason"] == "curl not reachable"
    assert [f["cve"] for f in forced["details"]["overridden_vulnerabilities"]] == ["CVE-2024-0004"]
    assert forced["details"]["overridden_vulnerability_count"] == 1
    with runtime.store.read() as tx:
        told = [r.payload["text"] for r in tx.connection.execute(select(t.outbox))]
    assert any(
        "forced over 1 known vulnerabilities (CVE-2024-0004): curl not reachable" in text
        for text in told
    )
    assert forced["details"]["vulnerabilities"] == {
        "known": True,
        "introduced": {"CRITICAL": 1, "HIGH": 1},
        "fixed": {},
    }


def test_the_slack_confirmation_shows_the_refusal_then_the_forced_plan(
    db_url, tmp_path, google
) -> None:
    runtime = _runtime(db_url, tmp_path, block_on="CRITICAL")
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [OPENSSL])
    google.scan(IMAGE, new, [CURL])
    slack = Interactions(runtime.nbenv)

    refused = json.dumps(slack.compute(Later(OWNER, to_fields(Promote(image=IMAGE)))))
    forced = slack.compute(
        Later(OWNER, to_fields(Promote(image=IMAGE, force=True, reason="curl unused")))
    )

    assert "at or above CRITICAL" in refused
    assert "CVE-2024-0004" in refused
    shown = json.dumps(forced, ensure_ascii=False)
    assert "*forced* over 1 known vulnerabilities (CVE-2024-0004)" in shown
    assert "introduced: 1 critical — CVE-2024-0004 (critical) in `curl`" in shown
    assert "fixed: 1 critical — CVE-2024-0001 (critical) in `openssl`" in shown
    assert "Promote to production" in shown
    assert google.env_tags(IMAGE)["production"] == old


def test_only_an_owner_can_force_past_block_on_severity(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path, block_on="HIGH")
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [])
    google.scan(IMAGE, new, [LIBXML])

    with pytest.raises(Refused):
        runtime.nbenv.handle(TESTER, f"promote {IMAGE} --force --reason 'trust me'")
    with pytest.raises(BadInput, match="--force needs --reason"):
        runtime.nbenv.handle(OWNER, f"promote {IMAGE} --force")

    assert google.env_tags(IMAGE)["production"] == old


def test_a_scan_not_finished_is_said_and_blocks_nothing(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path, block_on="CRITICAL")
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [OPENSSL])
    google.scan(IMAGE, new, status="SCANNING")

    plan = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")

    assert f"⏳ `{new[:7]}`: still being scanned (SCANNING)" in plan.text
    assert "not known yet: decide with that in mind" in plan.text
    assert "block_on_severity CRITICAL cannot be checked without both scans" in plan.text
    assert plan.data["vulnerabilities"]["known"] is False

    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert google.env_tags(IMAGE)["production"] == new
    history = history_of(runtime.nbenv, OWNER, f"history {IMAGE} {new}")
    promoted = next(e for e in history if e["action"] == "promote" and e["outcome"] == "ok")
    assert promoted["details"]["vulnerabilities"] == {
        "known": False,
        "from": "done",
        "to": "pending",
    }


def test_a_scanner_that_refuses_is_named_in_the_plan_and_blocks_nothing(
    db_url, tmp_path, google
) -> None:
    runtime = _runtime(db_url, tmp_path, block_on="CRITICAL")
    _old, new = _in_production(runtime, google)
    google.scan(IMAGE, new, [CURL])
    google.deny("containeranalysis.occurrences.list")

    plan = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")

    assert (
        "Artifact Analysis denied the bot permission to read the discovery of "
        f"{new[:7]}" in plan.text
    )
    assert "containeranalysis.occurrences.list (e.g. role " in plan.text
    assert "nothing is blocked for it" in plan.text
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    assert google.env_tags(IMAGE)["production"] == new


def test_a_rollback_carried_out_does_not_wait_for_the_scanner(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path)
    old, _new = _in_production(runtime, google)
    runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    google.reset_requests()

    runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --yes")

    assert google.env_tags(IMAGE)["production"] == old
    assert [r for r in google.requests() if r.api == "containeranalysis"] == []


def test_an_image_not_scanned_at_all_says_so(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path)
    _, new = _in_production(runtime, google)

    plan = runtime.nbenv.handle(OWNER, f"promote {IMAGE} --dry-run")

    assert f"⏳ `{new[:7]}`: not scanned yet" in plan.text
    assert "Container Scanning API" in plan.text


def test_versions_and_app_home_show_each_versions_counts(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path)
    old, new = _in_production(runtime, google)
    google.scan(IMAGE, old, [OPENSSL, ZLIB])

    reply = runtime.nbenv.handle(OWNER, f"versions {IMAGE}")

    rows = {row["sha"]: row["vulnerabilities"] for row in reply.data["items"]}
    assert rows[old] == {"state": "done", "counts": {"CRITICAL": 1, "MEDIUM": 1}}
    assert rows[new] == {"state": "pending"}
    assert f"`{old[:7]}` [production]" in reply.text
    assert "vulns: 1 critical, 1 medium" in reply.text
    assert "scan pending" in reply.text

    with runtime.nbenv.store.read() as tx:
        status = runtime.nbenv.image_status(tx, IMAGE)
    assert status["environments"]["production"]["vulnerabilities"] == {
        "CRITICAL": 1,
        "MEDIUM": 1,
    }
    home = str(home_view(OWNER, [status]))
    assert "vulns: 1 critical, 1 medium" in home


def test_versions_ask_a_failing_scanner_once_and_say_why(db_url, tmp_path, google) -> None:
    runtime = _runtime(db_url, tmp_path)
    _in_production(runtime, google)
    google.deny("containeranalysis.occurrences.list")
    google.reset_requests()

    reply = runtime.nbenv.handle(OWNER, f"versions {IMAGE}")

    assert len([r for r in google.requests() if r.api == "containeranalysis"]) == 1
    assert "_Known vulnerabilities: Artifact Analysis denied the bot permission" in reply.text


def test_the_container_analysis_api_refuses_a_malformed_filter(google) -> None:
    import requests

    base = f"{google.url}/v1/projects/nbenv-test/occurrences"
    for bad in (
        'kind="VULNERABILITY" AND',
        "kind=VULNERABILITY",
        'color="red"',
        'kind="NOPE"',
        '(kind="DISCOVERY"',
        'kind="DISCOVERY" OR kind="BUILD"',
    ):
        answer = requests.get(base, params={"filter": bad}, timeout=5)
        assert answer.status_code == 400, bad
        assert answer.json()["error"]["status"] == "INVALID_ARGUMENT"
    for good in ('kind="DISCOVERY"', '(kind="VULNERABILITY" AND resourceUrl="https://x@y")'):
        assert requests.get(base, params={"filter": good}, timeout=5).status_code == 200


def test_an_invalid_block_on_severity_is_a_clear_config_error(tmp_path) -> None:
    from bot.config import load_config

    path = write_config(tmp_path)
    path.write_text(
        path.read_text(encoding="utf-8").replace(
            "    channel: C01NLP\n", "    channel: C01NLP\n    block_on_severity: SEVERE\n"
        ),
        encoding="utf-8",
    )

    with pytest.raises(ConfigError) as error:
        load_config(path)

    message = error.value.message
    assert "block_on_severity" in message
    assert "expected one of CRITICAL, HIGH, MEDIUM, LOW, MINIMAL, not 'SEVERE'" in message
