"""Build relay throughput: events per second and p99 per event, side by side with a bare
functions-framework function that only decodes the event, and with the floor of any relay
that stores an event before acknowledging it (benchmarks/floor_function.py: decode, parse,
commit one row per event, writes grouped as the relay groups them).

Both run as Cloud Functions run them (functions-framework, gunicorn), fed the same
Pub/Sub CloudEvents over HTTP by CLIENTS concurrent senders; each sender posts the events
of its own commits in order, as Cloud Build publishes them. The relay writes to a SQLite
store and posts every message to a fake Slack Web API before it answers.

Targets: >= 500 events/s, p99 <= 20 ms, and within 3x of the bare function.

    python benchmarks/bench_relay.py [--commits N] [--clients C] [--database URL|sqlite]
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
                headers = {
                    "Content-Type": "application/json",
                    "ce-specversion": "1.0",
                    "ce-id": str(uuid.uuid4()),
                    "ce-source": PUBSUB_SOURCE,
                    "ce-type": PUBSUB_TYPE,
                }
                started = time.perf_counter()
                connection.request("POST", "/", body=body, headers=headers)
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
    wall, latencies = send_all(function.port, streams, clients)
    total = wall + (drained(database) if database else 0.0)
    ordered = sorted(latencies)
    return {
        "events": len(latencies),
        "rate": len(latencies) / wall,
        "p50": statistics.median(ordered) * 1000,
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        "delivered": len(latencies) / total,
    }


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
        "--database",
        help="SQLAlchemy URL, or `sqlite` for a new SQLite file (default: a throwaway "
        "PostgreSQL cluster, fsync off)",
    )
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-relay-"))
    config = folder / "nbenv.yaml"
    config.write_text(textwrap.dedent(TEST_CONFIG), encoding="utf-8")
    with contextlib.ExitStack() as stack:
        if args.database == "sqlite":
            database = f"sqlite:///{folder / 'nbenv.db'}"
        elif args.database:
            database = args.database
        else:
            # The deployed function shares the bot's PostgreSQL (Cloud SQL): measure that.
            from tests.support.postgres import PostgresCluster

            database = stack.enter_context(PostgresCluster()).create_database("bench")
        return run(args, folder, config, database)


def run(args: argparse.Namespace, folder: Path, config: Path, database: str) -> int:
    rows = []
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
        for label, branch in (
            ("relay, build events", "feature"),
            ("relay, staging builds", "staging"),
        ):
            # staging builds also publish each commit to staging through the core
            streams = workload(args.commits if branch == "feature" else args.commits // 3, branch)
            with FunctionProcess(env, log_path=folder / f"{branch}.log") as relay:
                calls = len(slack.calls())
                figures = measure(relay, streams, args.clients, database)
                figures["calls"] = (len(slack.calls()) - calls) / figures["events"]
            rows.append((label, figures))
        threads = sum(1 for m in slack.messages().values() if not m.is_reply)
    print(
        f"relay: {args.commits} commits x 7 events, {args.clients} clients, "
        f"{database.split(':')[0]}; p50/p99: until the function answered; delivered: "
        "until every message reached Slack"
    )
    print(
        f"{'':22} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'delivered/s':>12} "
        f"{'Slack calls/event':>18} {'rate vs bare':>13} {'p99 vs bare':>12}"
    )
    print(
        f"{'bare function':22} {baseline['rate']:9.0f} {baseline['p50']:7.2f} "
        f"{baseline['p99']:7.2f} {baseline['rate']:12.0f} {'-':>18} {'1.00x':>13} {'1.00x':>12}"
    )
    print(
        f"{'store write only':22} {stored['rate']:9.0f} {stored['p50']:7.2f} "
        f"{stored['p99']:7.2f} {'-':>12} {'-':>18} {baseline['rate'] / stored['rate']:12.2f}x "
        f"{stored['p99'] / baseline['p99']:11.2f}x"
    )
    verdict = []
    for label, figures in rows:
        rate_ratio = baseline["rate"] / figures["rate"]
        p99_ratio = figures["p99"] / baseline["p99"]
        print(
            f"{label:22} {figures['rate']:9.0f} {figures['p50']:7.2f} {figures['p99']:7.2f} "
            f"{figures['delivered']:12.0f} {figures['calls']:18.2f} {rate_ratio:12.2f}x "
            f"{p99_ratio:11.2f}x"
        )
        if not verdict:
            verdict = [
                f"events/s {figures['rate']:.0f} >= {TARGET_RATE:.0f}: "
                + ("yes" if figures["rate"] >= TARGET_RATE else "NO"),
                f"p99 {figures['p99']:.1f} ms <= {TARGET_P99_MS:.0f} ms: "
                + ("yes" if figures["p99"] <= TARGET_P99_MS else "NO"),
                f"within {TARGET_RATIO:.0f}x of bare ({rate_ratio:.2f}x): "
                + ("yes" if rate_ratio <= TARGET_RATIO else "NO"),
            ]
    print(f"threads opened in fake Slack: {threads}")
    print("targets, build events: " + "; ".join(verdict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
