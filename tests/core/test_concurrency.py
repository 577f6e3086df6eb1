"""Several OS processes promote and roll back one image at once against PostgreSQL.

Every pointer change is a compare-and-swap on the environment's generation: one
winner per generation, a history that is a valid sequence, fallback never lost.
"""

from __future__ import annotations

import itertools
import multiprocessing
import random
from pathlib import Path

import pytest

from tests.conftest import IMAGE, OWNER, TESTER, TESTER2, sha_of

pytestmark = pytest.mark.postgres

WORKERS = 6
ROUNDS = 15


def _racer(config: str, url: str, seed: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from bot.bootstrap import build_runtime
    from bot.domain.errors import Conflict, Refused

    runtime = build_runtime(config, url, migrate=False)
    rng = random.Random(seed)
    outcomes: list[tuple[str, str]] = []

    def attempt(text: str, who: str = OWNER) -> None:
        try:
            runtime.nbenv.handle(who, text)
            outcomes.append((text.split()[0], "ok"))
        except Conflict:
            outcomes.append((text.split()[0], "conflict"))
        except Refused:
            outcomes.append((text.split()[0], "refused"))

    barrier.wait()
    attempt(f"promote {IMAGE}")  # everyone at once, on the same generation
    for _ in range(ROUNDS):
        choice = rng.random()
        if choice < 0.4:
            attempt(f"promote {IMAGE}")
        elif choice < 0.7:
            attempt(f"rollback {IMAGE}")
        else:
            attempt(f"approve {IMAGE}", rng.choice([TESTER, TESTER2]))
    results.put((seed, outcomes))
    runtime.store.engine.dispose()


def test_concurrent_promotions_and_rollbacks(pg_cluster, config_file: Path):
    from bot.bootstrap import build_runtime

    url = pg_cluster.create_database()
    runtime = build_runtime(str(config_file), url)
    app = runtime.nbenv
    old, new = sha_of("old"), sha_of("new")
    app.publish(OWNER, IMAGE, old)
    app.handle(TESTER, f"approve {IMAGE}")
    app.handle(OWNER, f"promote {IMAGE}")
    app.publish(OWNER, IMAGE, new)
    app.handle(TESTER, f"approve {IMAGE}")

    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    results = context.Queue()
    processes = [
        context.Process(target=_racer, args=(str(config_file), url, seed, barrier, results))
        for seed in range(WORKERS)
    ]
    for process in processes:
        process.start()
    collected = [results.get(timeout=240) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    first_round = [outcomes[0] for _, outcomes in collected]
    assert first_round.count(("promote", "ok")) == 1, first_round
    # The losers were told the environments changed, or (having read after the
    # winner committed) that the SHA already is in production.
    assert all(
        o in {("promote", "conflict"), ("promote", "refused")}
        for o in first_round
        if o != ("promote", "ok")
    )

    with runtime.store.read() as tx:
        history = tx.pointers.history(IMAGE)
        entries = tx.audit.entries(image=IMAGE)
    by_env: dict[str, list[dict]] = {}
    for row in history:
        by_env.setdefault(row["env"], []).append(row)
    for env, rows in by_env.items():
        # One winner per generation: generations 1..n with no gap and no repeat…
        assert [r["generation"] for r in rows] == list(range(1, len(rows) + 1)), env
        # …and each change starts from where the previous one left the pointer.
        for before, after in itertools.pairwise(rows):
            assert after["old_sha"] == before["new_sha"], env
    # Fallback, once set, is never lost.
    assert all(r["new_sha"] is not None for r in by_env["fallback"])
    state = app.handle(OWNER, f"status {IMAGE}").data["environments"]
    assert state["fallback"] is not None and state["production"] is not None
    # Every successful change is on record exactly once.
    applied = sum(
        1
        for _, outcomes in collected
        for action, result in outcomes
        if result == "ok" and action in {"promote", "rollback"}
    )
    audited = [e for e in entries if e.action in {"promote", "rollback"} and e.outcome == "ok"]
    assert len(audited) == applied + 1  # + the set-up promotion
    assert app.verify_audit().ok
