"""Promote and rollback on gcp: the store is the truth, the registry tags follow it.

Fallback first, then production; a failed step leaves the operation failed and visible,
and `recover` finishes it. Nothing points at a version the registry does not have.
"""

from __future__ import annotations

import threading

import pytest

from bot.backends.gcp import GcpUnavailable
from bot.domain.errors import Refused
from bot.domain.names import Env, Pipeline
from tests.conftest import IMAGE, OWNER, TESTER, sha_of
from tests.gcp.conftest import PASSED, release


def _operations(runtime) -> list[dict]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from bot.store import tables as t

    with runtime.store.read() as tx:
        rows = tx.connection.execute(select(t.operations).order_by(t.operations.c.created_at))
        return [dict(row._mapping) for row in rows]


def _outbox_texts(runtime) -> list[str]:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from bot.store import tables as t

    with runtime.store.read() as tx:
        rows = tx.connection.execute(select(t.outbox.c.payload).order_by(t.outbox.c.id))
        return [row.payload.get("text", "") for row in rows]


def _audit(runtime) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    with runtime.store.read() as tx:
        return [(entry.action, entry.outcome) for entry in tx.audit.entries()]


def test_promote_moves_fallback_then_production_and_keeps_the_old_production(
    gcp_runtime, google
) -> None:
    first = release(gcp_runtime, google, "first")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    google.reset_requests()

    reply = gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert reply.data["synced"] is True
    assert google.env_tags(IMAGE) == {"staging": second, "production": second, "fallback": first}
    moves = [(r.method, r.path.rsplit("/", 1)[-1]) for r in google.mutations()]
    assert moves == [("POST", "tags"), ("PATCH", "production")]  # fallback (new), production
    assert google.mutations()[0].query["tagId"] == "fallback"
    assert [op["status"] for op in _operations(gcp_runtime)] == ["done"] * 4
    assert gcp_runtime.nbenv.verify_audit().ok


def test_rollback_points_production_back_at_fallback(gcp_runtime, google) -> None:
    first = release(gcp_runtime, google, "first")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    gcp_runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason broken")

    assert google.env_tags(IMAGE) == {"staging": second, "production": first, "fallback": first}


def test_publishing_a_sha_that_was_never_pushed_is_refused_and_changes_nothing(
    gcp_runtime, google
) -> None:
    sha = sha_of("not pushed")

    with pytest.raises(Refused) as refused:
        gcp_runtime.nbenv.publish(Pipeline("7"), IMAGE, sha, report=PASSED)

    assert "is not in the registry" in str(refused.value)
    with gcp_runtime.store.read() as tx:
        assert tx.pointers.state(IMAGE).sha(Env.STAGING) is None
    assert google.mutations() == []
    assert _operations(gcp_runtime) == []


def test_a_failed_step_is_recorded_announced_and_finished_by_recover(gcp_runtime, google) -> None:
    first = release(gcp_runtime, google, "first")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    google.deny("artifactregistry.tags.update")

    reply = gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    # The promotion is recorded (the store is the truth); the registry lags, visibly.
    assert reply.data["synced"] is False
    assert "Recorded, but the registry is not in line yet" in reply.text
    assert "artifactregistry.tags.update" in reply.text
    status = gcp_runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    assert status["environments"]["production"]["sha"] == second
    assert google.env_tags(IMAGE) == {"staging": second, "production": first, "fallback": first}
    failed = _operations(gcp_runtime)[-1]
    assert failed["status"] == "failed" and "artifactregistry.tags.update" in failed["error"]
    assert ("sync", "failed") in _audit(gcp_runtime)
    assert any(
        "moving the registry tag `production` failed" in t for t in _outbox_texts(gcp_runtime)
    )

    google.allow("artifactregistry.tags.update")
    assert gcp_runtime.nbenv.recover() == [failed["id"]]

    assert google.env_tags(IMAGE) == {"staging": second, "production": second, "fallback": first}
    assert [op["status"] for op in _operations(gcp_runtime)] == ["done"] * 4
    assert _audit(gcp_runtime)[-1] == ("sync", "ok")
    assert "are in line again" in _outbox_texts(gcp_runtime)[-1]
    assert gcp_runtime.nbenv.verify_audit().ok
    assert gcp_runtime.nbenv.recover() == []


def test_rollback_is_not_blocked_by_a_registry_that_is_down(gcp_runtime, google) -> None:
    first = release(gcp_runtime, google, "first")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    google.fail(503, times=None)

    reply = gcp_runtime.nbenv.handle(OWNER, f"rollback {IMAGE} --reason broken")

    assert reply.data["synced"] is False
    with gcp_runtime.store.read() as tx:
        assert tx.versions.get(IMAGE, second).revoked
    google.clear_faults()
    gcp_runtime.nbenv.recover()
    assert google.env_tags(IMAGE)["production"] == first


def test_a_promotion_while_the_registry_is_down_is_refused_and_changes_nothing(
    gcp_runtime, google
) -> None:
    release(gcp_runtime, google, "first")
    google.fail(503, times=None)

    with pytest.raises(GcpUnavailable) as down:
        gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert "Artifact Registry did not read tag" in str(down.value)
    status = gcp_runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    assert status["environments"]["production"] is None


def test_an_older_operation_never_overwrites_a_newer_one(gcp_runtime, google) -> None:
    """A rollback commits while the promote's production write is on the wire: the
    promote writes again, so the registry ends with what the store says last."""
    first = release(gcp_runtime, google, "first")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    second = release(gcp_runtime, google, "second")
    rolled_back = threading.Event()

    def rollback_meanwhile(_request) -> None:  # type: ignore[no-untyped-def]
        if not rolled_back.is_set():
            rolled_back.set()
            # Another owner, another thread, while the promote waits for this answer.
            worker = threading.Thread(
                target=gcp_runtime.nbenv.handle, args=(OWNER, f"rollback {IMAGE} --reason oops")
            )
            worker.start()
            worker.join(timeout=30)

    google.on(rollback_meanwhile, when="before", method="PATCH", path="/tags/production$")

    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    status = gcp_runtime.nbenv.handle(OWNER, f"status {IMAGE}").data
    assert status["environments"]["production"]["sha"] == first
    assert google.env_tags(IMAGE)["production"] == first
    assert google.env_tags(IMAGE)["fallback"] == first
    assert [op["status"] for op in _operations(gcp_runtime)] == ["done"] * 5
    assert second != first


def test_approvals_still_follow_the_policy_on_gcp(gcp_runtime, google) -> None:
    release(gcp_runtime, google, "first", approve=False)

    with pytest.raises(Refused):
        gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")
    gcp_runtime.nbenv.handle(TESTER, f"approve {IMAGE}")
    gcp_runtime.nbenv.handle(OWNER, f"promote {IMAGE}")

    assert google.env_tags(IMAGE)["production"] == sha_of("first")
