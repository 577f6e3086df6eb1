"""Build relay throughput: events per second and p99 per event, side by side with a bare
functions-framework function that only decodes the event, and with the floor of any relay
that stores an event before acknowledging it (benchmarks/floor_function.py: decode, parse,
commit one row per event, writes grouped as the relay groups them).

Both run as Cloud Functions run them (functions-framework, gunicorn), fed the same
Pub/Sub CloudEvents over HTTP by CLIENTS concurrent senders; each sender posts the events
of its own commits in order, as Cloud Build publishes them. The relay writes to a SQLite
store and posts every message to a fake Slack Web API before it answers.

Also measured: the CPU each event costs (the function's processes, user + system) beside
the same two baselines, and the time from posting an event to the moment Slack has every
message it caused (builds sent one event at a time, the outbox polled until empty).

Targets: >= 500 events/s, p99 <= 20 ms, and within 3x of the bare function.

    python benchmarks/bench_relay.py [--commits N] [--clients C] [--database URL|sqlite] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from rows import Row, ms, p99, print_rows, process_cpu_seconds, ratio  # noqa: E402

from tests.builds.conftest import (  # noqa: E402 - after the path is set
    TOKEN,
    attributes_of,
    build_events,
    event_data,
    new_build_id,
)
from tests.builds.process import PUBSUB_SOURCE, PUBSUB_TYPE, FunctionProcess  # noqa: E402
from tests.conftest import TEST_CONFIG, sha_of  # noqa: E402
from tests.support.slack_api import FakeSlackApi  # noqa: E402

TARGET_RATE = 500.0
TARGET_P99_MS = 20.0
TARGET_RATIO = 3.0


def workload(commits: int, branch: str) -> list[list[bytes]]:
    """Per commit, the bodies of its build's events (QUEUED, each step, SUCCESS)."""
    streams = []
    for index in range(commits):
        sha = sha_of(f"bench {uuid.uuid4()} {index}")
        events = build_events(new_build_id(), sha, branch=branch)
        streams.append(
            [
                json.dumps(event_data(e, attributes_of(e), str(i))).encode()
                for i, e in enumerate(events)
            ]
        )
    return streams


def _headers() -> dict[str, str]:
    """A Pub/Sub CloudEvent's HTTP headers (binary mode), with a new event ID."""
    return {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": str(uuid.uuid4()),
        "ce-source": PUBSUB_SOURCE,
        "ce-type": PUBSUB_TYPE,
    }


def send_all(port: int, streams: list[list[bytes]], clients: int) -> tuple[float, list[float]]:
    """Post every stream (its events in order) from CLIENTS threads; wall time, latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    queue = list(streams)
    errors: list[str] = []

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine: list[float] = []
        while True:
            with lock:
                if not queue:
                    break
                stream = queue.pop()
            for body in stream:
                started = time.perf_counter()
                connection.request("POST", "/", body=body, headers=_headers())
                response = connection.getresponse()
                response.read()
                mine.append(time.perf_counter() - started)
                if response.status != 200:
                    errors.append(f"HTTP {response.status}")
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. {errors[0]}")
    return wall, latencies


def measure(
    function: FunctionProcess, streams: list[list[bytes]], clients: int, database: str | None
) -> dict[str, float]:
    warm = workload(2, "feature")  # the first requests build the relay: not measured
    send_all(function.port, warm, 1)
    if database:
        drained(database)
    assert function.process is not None
    cpu = process_cpu_seconds(function.process.pid)
    wall, latencies = send_all(function.port, streams, clients)
    total = wall + (drained(database) if database else 0.0)
    cpu = process_cpu_seconds(function.process.pid) - cpu
    ordered = sorted(latencies)
    return {
        "cpu_ms": cpu * 1000 / len(latencies),
        "events": len(latencies),
        "rate": len(latencies) / wall,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "delivered": len(latencies) / total,
    }


def to_slack(port: int, database: str, commits: int) -> list[float]:
    """Seconds from posting each event of COMMITS builds, one at a time, to the moment every
    message it queued was accepted by Slack (the outbox holds nothing left to send)."""
    from sqlalchemy import create_engine, func, select

    from bot.store import tables as t

    engine = create_engine(database)
    unsent = (
        select(func.count())
        .select_from(t.outbox)
        .where(t.outbox.c.status.in_(("pending", "sending")))
    )
    seconds = []
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for stream in workload(commits, "feature"):
            for body in stream:
                started = time.perf_counter()
                connection.request("POST", "/", body=body, headers=_headers())
                connection.getresponse().read()
                while True:
                    with engine.connect() as db:
                        if db.execute(unsent).scalar_one() == 0:
                            break
                    if time.perf_counter() - started > 30:
                        raise SystemExit("a message was not delivered within 30 s")
                    time.sleep(0.0005)
                seconds.append(time.perf_counter() - started)
    finally:
        connection.close()
        engine.dispose()
    return seconds


def drained(database: str, timeout_s: float = 300.0) -> float:
    """Seconds until nothing is left to send in the outbox (everything reached Slack)."""
    from sqlalchemy import create_engine, func, select

    from bot.store import tables as t

    engine = create_engine(database)
    started = time.perf_counter()
    try:
        while time.perf_counter() - started < timeout_s:
            with engine.connect() as connection:
                left = connection.execute(
                    select(func.count())
                    .select_from(t.outbox)
                    .where(t.outbox.c.status.in_(("pending", "sending")))
                ).scalar_one()
            if left == 0:
                return time.perf_counter() - started
            time.sleep(0.01)
        raise SystemExit(f"the outbox still held {left} messages after {timeout_s:.0f} s")
    finally:
        engine.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=300, help="commits (7 events each)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent senders")
    parser.add_argument(
        "--latency-commits", type=int, default=20, help="builds for event → Slack latency"
    )
    parser.add_argument("--quick", action="store_true", help="a few commits: a check it runs")
    parser.add_argument(
        "--database",
        help="SQLAlchemy URL, or `sqlite` for a new SQLite file (default: a throwaway "
        "PostgreSQL cluster, fsync off)",
    )
    args = parser.parse_args()
    if args.quick:
        args.commits, args.latency_commits = 30, 5
    return print_rows(measured_rows(args))


def measured_rows(args: argparse.Namespace) -> list[Row]:
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-relay-")))
        config = folder / "nbenv.yaml"
        config.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
        if args.database == "sqlite":
            database = f"sqlite:///{folder / 'nbenv.db'}"
        elif args.database:
            database = args.database
        else:
            # The deployed function shares the bot's PostgreSQL (Cloud SQL): measure that.
            from tests.support.postgres import PostgresCluster

            database = stack.enter_context(PostgresCluster()).create_database("bench")
        return run(args, folder, config, database)


def run(args: argparse.Namespace, folder: Path, config: Path, database: str) -> list[Row]:
    relays = []
    with FakeSlackApi(token=TOKEN) as slack:
        env = {
            "NBENV_CONFIG": str(config),
            "NBENV_DATABASE_URL": database,
            "SLACK_API_URL": slack.base_url,
            "SLACK_BOT_TOKEN": TOKEN,
            "NBENV_HOME": str(folder / "home"),
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "NO_GCE_CHECK": "True",
        }
        bare_source = REPO_ROOT / "benchmarks" / "bare_function.py"
        with FunctionProcess(env, source=bare_source, target="bare") as bare:
            baseline = measure(bare, workload(args.commits, "feature"), args.clients, None)
        floor_source = REPO_ROOT / "benchmarks" / "floor_function.py"
        with FunctionProcess(env, source=floor_source, target="floor") as floor:
            stored = measure(floor, workload(args.commits, "feature"), args.clients, None)
        for label, branch in (("build events", "feature"), ("staging builds", "staging")):
            # staging builds also publish each commit to staging through the core
            streams = workload(args.commits if branch == "feature" else args.commits // 3, branch)
            with FunctionProcess(env, log_path=folder / f"{branch}.log") as relay:
                figures = measure(relay, streams, args.clients, database)
                if branch == "feature":
                    delivery = to_slack(relay.port, database, args.latency_commits)
            relays.append((label, figures))
    kind = "PostgreSQL" if database.startswith("postgresql") else database.split(":")[0]
    setting = f"{args.commits} commits × 7 events, {args.clients} clients, {kind}"
    against = "bare function; store-write-only function"
    found = []
    for label, figures in relays:
        main = label == "build events"
        found += [
            Row(
                f"relay events/s, {label} ({setting})",
                f"{figures['rate']:.0f}/s",
                f"{baseline['rate']:.0f}/s; {stored['rate']:.0f}/s",
                f"{ratio(baseline['rate'], figures['rate'])}; "
                f"{ratio(stored['rate'], figures['rate'])} ({against}, ÷ relay)",
                f"≥ {TARGET_RATE:.0f}/s, ≤ {TARGET_RATIO:g}× bare" if main else "—",
                figures["rate"] >= TARGET_RATE
                and baseline["rate"] <= TARGET_RATIO * figures["rate"]
                if main
                else None,
            ),
            Row(
                f"relay answer p50 / p99 per event, {label}",
                f"{figures['p50']:.1f} / {figures['p99']:.1f} ms",
                f"{baseline['p99']:.1f} ms; {stored['p99']:.1f} ms (p99)",
                f"{ratio(figures['p99'], baseline['p99'])}; {ratio(figures['p99'], stored['p99'])}",
                f"p99 ≤ {TARGET_P99_MS:g} ms" if main else "—",
                figures["p99"] <= TARGET_P99_MS if main else None,
            ),
            Row(
                f"relay CPU per event, {label}",
                f"{figures['cpu_ms']:.2f} ms",
                f"{baseline['cpu_ms']:.2f} ms; {stored['cpu_ms']:.2f} ms",
                f"{ratio(figures['cpu_ms'], baseline['cpu_ms'])}; "
                f"{ratio(figures['cpu_ms'], stored['cpu_ms'])}",
            ),
        ]
    found.append(
        Row(
            f"event → Slack message p50 / p99 ({args.latency_commits} builds one at a time)",
            f"{ms(statistics.median(delivery))} / {ms(p99(delivery))}",
        )
    )
    return found


def rows(quick: bool = False) -> list[Row]:
    """The rows of `make bench` (benchmarks/run.py): on a throwaway PostgreSQL cluster."""
    args = argparse.Namespace(
        commits=30 if quick else 200, clients=4, database=None, latency_commits=5 if quick else 20
    )
    return measured_rows(args)


if __name__ == "__main__":
    sys.exit(main())
