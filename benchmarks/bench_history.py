"""Benchmark of a big history: status, a page of versions, a page of history, audit verify.

Run: ``python benchmarks/bench_history.py [--quick]``

Seeds (benchmarks/seed.py, in bulk) 100 images × 1,000 versions × 100,000 audit entries
into SQLite and into a throwaway PostgreSQL cluster (when its server programs are
installed), then measures in process, on the bot's own code:

* `status IMAGE` as a person asks it (`Nbenv.handle`, parse to text), p50 over images;
* a page of `versions IMAGE` (20, newest first) and a page of `history IMAGE` and
  `history IMAGE SHA`, each the first page and one deep in the list (bot.service.pages),
  beside reading all of an image's versions or history at once, as the commands did
  before paging;
* `audit verify` of the whole log (streamed).

Targets: status and each page ≤ 20 ms p50; audit verify ≤ 2 s. `--quick`: a tenth of the
scale (a check that it runs, not the figures).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rows import Row, ms, p50, p99, print_rows, ratio  # noqa: E402
from seed import OWNER, config_yaml, image_name, seed, sha_of  # noqa: E402

PAGE_TARGET = 0.020
VERIFY_TARGET = 2.0
SAMPLES = 200
BASELINE_SAMPLES = 10  # the unpaged reads take 100× longer


@contextmanager
def databases(folder: Path) -> Iterator[list[tuple[str, str]]]:
    """(label, URL) of an empty SQLite database and, when PostgreSQL is installed, an
    empty database on a throwaway cluster (stopped on the way out)."""
    found = [("SQLite", f"sqlite:///{folder / 'history.db'}")]
    try:
        from tests.support.postgres import PostgresCluster, find_postgres_bin
    except ImportError:  # pragma: no cover - run from a checkout: always there
        yield found
        return
    if find_postgres_bin() is None:
        print("PostgreSQL server programs not found: SQLite only", file=sys.stderr)
        yield found
        return
    with PostgresCluster() as cluster:
        yield [*found, ("PostgreSQL", cluster.create_database("bench_history"))]


def timed(action: Callable[[], object], samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return times


def measure(
    label: str, url: str, folder: Path, *, images: int, versions: int, audit: int
) -> list[Row]:
    from bot.bootstrap import build_runtime
    from bot.domain.names import Env
    from bot.service import render
    from bot.service.pages import history_page, versions_page

    config = folder / "nbenv.yaml"
    config.write_text(config_yaml(images), encoding="utf-8")
    runtime = build_runtime(str(config), url)
    started = time.perf_counter()
    seed(runtime.store.engine, images=images, versions=versions, audit=audit)
    seeded = time.perf_counter() - started
    print(f"{label}: seeded in {seeded:.1f} s", file=sys.stderr)
    nbenv, store = runtime.nbenv, runtime.store
    pick = random.Random(14)

    def some_image() -> str:
        return image_name(pick.randrange(images))

    def status() -> None:
        reply = nbenv.handle(OWNER, f"status {some_image()}")
        assert "staging" in reply.text, reply.text

    deep: dict[str, str] = {}
    with store.read() as tx:  # a cursor halfway down each list, for a deep page
        image = image_name(0)
        cursor = None
        for _ in range(versions // 40):
            cursor = versions_page(tx, image, before=cursor)["next"]
        deep["versions"] = cursor or ""
        cursor = None
        for _ in range(audit // images // 40):
            cursor = history_page(tx, image, before=cursor)["next"]
        deep["history"] = cursor or ""

    def page(
        read: Callable[..., dict], before: str | None = None, **extra: str
    ) -> Callable[[], None]:
        def run() -> None:
            with store.read() as tx:
                image = image_name(0) if before else some_image()
                shown = read(tx, image, before=before, **extra)
                assert shown["items"], f"empty page of {image}"

        return run

    def sha_page() -> None:
        with store.read() as tx:
            number = pick.randrange(images)
            shown = history_page(tx, image_name(number), sha_of(image_name(number), versions - 1))
            assert shown["items"]

    def unpaged_versions() -> None:  # what `versions IMAGE` read before paging
        with store.read() as tx:
            image = some_image()
            state = tx.pointers.state(image)
            for version in tx.versions.of_image(image):
                envs = [env.value for env in Env if state.sha(env) == version.sha]
                render.version_data(version, envs, tx.approvals.standing(image, version.sha))

    def unpaged_history() -> None:  # what `history IMAGE` read before paging
        with store.read() as tx:
            [render.audit_data(entry) for entry in tx.audit.entries(image=some_image())]

    status()  # warm: first query, config caches
    figures = [
        ("status IMAGE", status, None),
        ("versions page (newest)", page(versions_page), (unpaged_versions, versions)),
        ("versions page (halfway down)", page(versions_page, deep["versions"]), None),
        ("history page (newest)", page(history_page), (unpaged_history, audit // images)),
        ("history page (halfway down)", page(history_page, deep["history"]), None),
        ("history IMAGE SHA page", sha_page, None),
    ]
    rows = []
    for name, action, unpaged in figures:
        action()
        times = timed(action, SAMPLES)
        baseline = timed(unpaged[0], BASELINE_SAMPLES) if unpaged else None
        rows.append(
            Row(
                f"{name}, {label} ({images}×{versions}, {audit:,} entries) p50 / p99",
                f"{ms(p50(times))} / {ms(p99(times))}",
                f"{ms(p50(baseline))} (all {unpaged[1]:,} at once, as before paging)"
                if unpaged and baseline
                else "—",
                ratio(p50(times), p50(baseline)) if baseline else "—",
                target="≤ 20 ms p50",
                met=p50(times) <= PAGE_TARGET,
            )
        )
    started, cpu = time.perf_counter(), time.process_time()
    check = nbenv.verify_audit()
    verify, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert check.ok and check.entries == audit, check.describe()
    rows.append(
        Row(
            f"audit verify of {audit:,} entries, {label}",
            f"{verify:.2f} s (CPU of this process {cpu:.2f} s)",
            target="≤ 2 s",
            met=verify <= VERIFY_TARGET,
        )
    )
    runtime.store.engine.dispose()
    return rows


def rows(quick: bool = False) -> list[Row]:
    scale = {
        "images": 100,
        "versions": 100 if quick else 1000,
        "audit": 10_000 if quick else 100_000,
    }
    found: list[Row] = []
    with (
        tempfile.TemporaryDirectory(prefix="nbenv-bench-history-") as folder,
        databases(Path(folder)) as urls,
    ):
        for label, url in urls:
            found += measure(label, url, Path(folder), **scale)
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the scale")
    args = parser.parse_args()
    return print_rows(rows(quick=args.quick))


if __name__ == "__main__":
    sys.exit(main())
