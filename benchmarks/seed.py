"""Seed a database with a big history, in bulk, through the store's schema.

Run: ``python benchmarks/seed.py DATABASE_URL [--images 100] [--versions 1000] [--audit 100000]``

Writes IMAGES images (`bench.image-000`, ...), each with VERSIONS versions (one approval
each, the newest three on staging, production and fallback) and AUDIT hash-chained audit
entries spread over the images in the order they would have happened (interleaved), with
the audit head set to the last one: `nbenv audit verify` finds the log intact. Rows go in
with multi-row INSERTs, not by replaying commands one at a time (which would take hours).
The database is migrated first and must hold no history yet.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, update

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bot.domain.audit import GENESIS, AuditEntry, AuditKey  # noqa: E402
from bot.domain.names import Env  # noqa: E402
from bot.store import tables as t  # noqa: E402
from bot.store.database import make_engine, upgrade  # noqa: E402
from bot.store.uow import iso  # noqa: E402

OWNER = "U01OWNER"
TESTER = "U02TESTER"
START = datetime(2024, 1, 1, tzinfo=UTC)
BATCH = 5_000  # rows per INSERT round trip


def image_name(index: int) -> str:
    return f"bench.image-{index:03d}"


def sha_of(image: str, number: int) -> str:
    return hashlib.sha1(f"{image}/{number}".encode()).hexdigest()


def config_yaml(images: int) -> str:
    """A configuration naming the seeded images (one team, OWNER and TESTER)."""
    lines = [
        "backend: local",
        "teams:",
        "  bench:",
        f"    owners: [{OWNER}]",
        f"    testers: [{TESTER}]",
        '    users: ["*"]',
        "images:",
    ]
    for index in range(images):
        lines += [f"  {image_name(index)}:", "    team: bench", "    channel: C01BENCH"]
    return "\n".join(lines) + "\n"


def _batches(rows: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def seed(
    engine: Engine,
    *,
    images: int = 100,
    versions: int = 1000,
    audit: int = 100_000,
    key: AuditKey | None = None,
) -> None:
    """Write the history described in the module's docstring into ENGINE's database."""
    names = [image_name(index) for index in range(images)]

    def moment(index: int) -> str:  # one version a second, interleaved over the images
        return iso(START + timedelta(seconds=index))

    def version_rows() -> Iterator[dict[str, Any]]:
        for number in range(versions):
            for index, image in enumerate(names):
                yield {
                    "image": image,
                    "sha": sha_of(image, number),
                    "tests_passed": True,
                    "created_at": moment(number * images + index),
                    "recorded_by": "build:bench",
                    "subject": f"Bump dependencies, round {number}",
                    "branch": "main",
                    "build_id": f"build-{number}",
                    "report": {"notebooks": [{"name": "smoke.ipynb", "status": "passed"}]},
                }

    def verdict_rows() -> Iterator[dict[str, Any]]:
        for number in range(versions):
            for index, image in enumerate(names):
                yield {
                    "image": image,
                    "sha": sha_of(image, number),
                    "user_id": TESTER,
                    "approved": True,
                    "reason": None,
                    "at": moment(number * images + index),
                    "void": False,
                }

    def environment_rows() -> Iterator[dict[str, Any]]:
        newest = {Env.STAGING: 1, Env.PRODUCTION: 2, Env.FALLBACK: 3}
        for image in names:
            for env, back in newest.items():
                number = versions - back
                yield {
                    "image": image,
                    "env": env.value,
                    "sha": sha_of(image, number) if number >= 0 else None,
                    "generation": versions if number >= 0 else 0,
                    "updated_at": moment(versions * images) if number >= 0 else None,
                    "updated_by": OWNER if number >= 0 else None,
                }

    head = (0, GENESIS)

    def audit_rows() -> Iterator[dict[str, Any]]:
        nonlocal head
        prev = GENESIS
        for seq in range(1, audit + 1):
            index = (seq - 1) % images
            number = ((seq - 1) // images) % max(versions, 1)
            image = names[index]
            sha = sha_of(image, number)
            action, details = _event(image, number, seq)
            entry = AuditEntry(
                seq=seq,
                at=moment(seq),
                actor=OWNER if action == "promote" else TESTER,
                action=action,
                image=image,
                sha=sha,
                outcome="ok",
                details=details,
                prev_hash=prev,
                key_id=key.key_id if key else None,
            )
            prev = entry.computed_hash(key)
            head = (seq, prev)
            yield {**asdict(entry), "hash": prev}

    with engine.begin() as connection:
        for table, rows in (
            (t.versions, version_rows()),
            (t.verdicts, verdict_rows()),
            (t.environments, environment_rows()),
            (t.audit_log, audit_rows()),
        ):
            for batch in _batches(rows):
                connection.execute(table.insert(), batch)
        connection.execute(
            update(t.audit_head).where(t.audit_head.c.id == 1).values(seq=head[0], hash=head[1])
        )
    # A database that has been running has its planner statistics (PostgreSQL's autovacuum
    # keeps them), a freshly bulk-loaded one not yet: measure the former.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(
            "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
        )


def _event(image: str, number: int, seq: int) -> tuple[str, dict[str, Any]]:
    """What the SEQth entry records: a publish to staging, an approval or a promotion."""
    kind = seq % 3
    if kind == 0:
        old = sha_of(image, number - 1) if number else None
        return "publish", {
            "changes": [{"env": "staging", "old": old, "new": sha_of(image, number)}]
        }
    if kind == 1:
        return "approve", {"reason": None}
    return "promote", {
        "changes": [
            {
                "env": "production",
                "old": sha_of(image, max(number - 1, 0)),
                "new": sha_of(image, number),
            }
        ],
        "approvals": [TESTER],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("database_url")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--versions", type=int, default=1000)
    parser.add_argument("--audit", type=int, default=100_000)
    args = parser.parse_args()
    engine = make_engine(args.database_url)
    upgrade(engine)
    started = time.perf_counter()
    seed(engine, images=args.images, versions=args.versions, audit=args.audit)
    print(
        f"seeded {args.images} images x {args.versions} versions, {args.audit} audit entries "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
