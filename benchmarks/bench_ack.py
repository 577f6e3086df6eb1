"""Benchmark of Slack acks: nbenv's bot beside a bare Bolt app on the same server.

Run: ``python benchmarks/bench_ack.py [--requests N] [--rounds N] [--quick]``

Both are gunicorn (1 worker, gthread, 16 threads) + Flask + Bolt with
``process_before_response=True``, started as separate processes and sent the same
signed slash-command requests over HTTP (keep-alive, one connection per client
thread). The bare app acks with an empty body; nbenv runs `/nbenv TEXT` as it does in
Slack, on SQLite with the Web API pointed at a local fake.

Printed side by side, with ratios nbenv / bare:

* ack p50 / p99 at concurrency 1, 10 and 50, for `/nbenv help`
  (answered in the ack), `/nbenv status IMAGE` and `/nbenv promote IMAGE` (acked at
  once; the status, or the plan to confirm, is computed right after in nbenv's answer
  process and posted to the response_url);
* process start to the first ack (bare) and to the first `/nbenv status` answer
  received on the response_url (nbenv);
* resident memory of all the server's processes after the first request (nbenv: the
  gunicorn master, its worker and the worker's answer process).

Targets: help ≤ 1.3×, status and promote ≤ 2× (p50 at each concurrency), start to first
status ≤ 2.5× the bare app's first ack, no status or promote ack over 3 s at concurrency
50. Exit status 1 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from rows import Row, ms, print_rows, ratio  # noqa: E402

SECRET = "bench-signing-secret"
TOKEN = "xoxb-bench"
IMAGE = "nlp.keras-batch"
OWNER = "U01OWNER"
TESTER = "U02TESTER"
THREADS = 16
CONFIG = f"""
backend: local
teams:
  nlp:
    owners: [{OWNER}]
    testers: [{TESTER}]
    users: ["*"]
images:
  {IMAGE}: {{team: nlp, channel: C01NLP}}
  nlp.transformers: {{team: nlp, channel: C01NLP, approvals: 2}}
  nlp.spacy: {{team: nlp, channel: C01NLP}}
"""
TARGETS = {"help": 1.3, "status": 2.0, "promote": 2.0}
START_TARGET = 2.5
MAX_ACK_S = 3.0


# -- the bare app (this file, run with --bare-server) ------------------------------------------


def bare_server(port: int) -> None:
    from flask import Flask, request
    from gunicorn.app.base import BaseApplication
    from slack_bolt import App
    from slack_bolt.adapter.flask import SlackRequestHandler
    from slack_bolt.authorization import AuthorizeResult
    from slack_sdk import WebClient

    def load() -> Flask:
        def authorize(enterprise_id: Any, team_id: Any, user_id: Any) -> AuthorizeResult:
            return AuthorizeResult(
                enterprise_id=enterprise_id, team_id=team_id, user_id=user_id, bot_token=TOKEN
            )

        bolt = App(
            signing_secret=SECRET,
            authorize=authorize,
            client=WebClient(token=TOKEN, base_url=os.environ["SLACK_API_URL"]),
            process_before_response=True,
        )

        @bolt.command("/nbenv")
        def nbenv(ack: Any) -> None:
            ack()

        web = Flask("bare")
        handler = SlackRequestHandler(bolt)

        @web.post("/slack/events")
        def events() -> Any:
            return handler.handle(request)

        return web

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"127.0.0.1:{port}",
                "workers": 1,
                "worker_class": "gthread",
                "threads": THREADS,
                "keepalive": 75,
                "loglevel": "warning",
            }.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return load()

    Server().run()


# -- clients ------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slash_request(text: str, response_url: str) -> tuple[bytes, dict[str, str]]:
    from slack_sdk.signature import SignatureVerifier

    body = urlencode(
        {
            "team_id": "T0BENCH",
            "channel_id": "C01NLP",
            "user_id": OWNER,
            "command": "/nbenv",
            "text": text,
            "response_url": response_url,
            "trigger_id": f"{time.time_ns()}.{uuid.uuid4().hex}",
        }
    ).encode()
    ts = str(int(time.time()))
    return body, {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body),
    }


class Client:
    """One keep-alive connection, as one of the concurrent callers."""

    def __init__(self, port: int, response_url: str) -> None:
        import http.client

        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.response_url = response_url

    def slash(self, text: str) -> tuple[float, int, bytes]:
        body, headers = slash_request(text, self.response_url)
        started = time.perf_counter()
        self.connection.request("POST", "/slack/events", body, headers)
        response = self.connection.getresponse()
        data = response.read()
        return time.perf_counter() - started, response.status, data


@dataclass
class Load:
    p50_ms: float
    p99_ms: float
    max_ms: float
    per_s: float


def load(port: int, text: str, concurrency: int, requests: int, url: str) -> tuple[list, float]:  # type: ignore[type-arg]
    """REQUESTS acks of `/nbenv TEXT` from CONCURRENCY clients: their times, the wall time."""
    local = threading.local()

    def one(_: int) -> float:
        if not hasattr(local, "client"):
            local.client = Client(port, url)
        seconds, status, data = local.client.slash(text)
        if status != 200:
            raise RuntimeError(f"{text!r}: HTTP {status} {data[:200]!r}")
        return seconds

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(concurrency * 2)))  # connect and warm up every client
        started = time.perf_counter()
        times = list(pool.map(one, range(requests)))
        return times, time.perf_counter() - started


def compare(
    ports: dict[str, int], text: str, concurrency: int, requests: int, url: str, slices: int
) -> dict[str, Load]:
    """Both servers, in alternating slices, so that drift in machine load hits both."""
    times: dict[str, list[float]] = {name: [] for name in ports}
    wall = dict.fromkeys(ports, 0.0)
    for _ in range(slices):
        for name, port in ports.items():
            some, seconds = load(port, text, concurrency, max(requests // slices, 1), url)
            times[name] += some
            wall[name] += seconds
    results = {}
    for name, values in times.items():
        values.sort()
        results[name] = Load(
            p50_ms=statistics.median(values) * 1000,
            p99_ms=values[min(len(values) - 1, int(len(values) * 0.99))] * 1000,
            max_ms=values[-1] * 1000,
            per_s=len(values) / wall[name],
        )
    return results


# -- processes ------------------------------------------------------------------------------


class FakeSlack:
    """tests.support.slack_api.FakeSlackApi in a process of its own, so that serving the
    bot's Web API calls and response_url posts does not slow down the measuring client."""

    SCRIPT = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from tests.support.slack_api import FakeSlackApi\n"
        "with FakeSlackApi() as slack:\n"
        "    print(slack.root_url, flush=True)\n"
        "    for line in sys.stdin:\n"
        "        print(len(slack.calls(line.strip())), flush=True)\n"
    )

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, str(REPO)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        self.root_url = self.process.stdout.readline().strip()
        self.base_url = f"{self.root_url}/api/"

    def response_url(self, name: str) -> str:
        return f"{self.root_url}/response/{name}"

    def calls(self, method: str) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(method + "\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(10)


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    port: int
    first_s: float
    rss_mb: float


def rss_mb(master_pid: int) -> float:
    """Resident memory of the server's processes: gunicorn's master and all it started
    (for nbenv: the worker and its answer process)."""
    total, pending = 0, [str(master_pid)]
    while pending:
        pid = pending.pop()
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
        for task in Path(f"/proc/{pid}/task").iterdir():
            pending += (task / "children").read_text().split()
    return total / 1024


def start(
    command: list[str],
    env: dict[str, str],
    port: int,
    text: str,
    url: str,
    answered: Callable[[], bool] | None = None,
) -> Started:
    """Start a server: the time from process start to the first ack, or with ANSWERED to
    the first answer (nbenv posts it to the response_url right after the ack)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{command} exited with {process.returncode}")
        try:
            _, status, data = Client(port, url).slash(text)
        except OSError:
            time.sleep(0.002)
            continue
        if status != 200:
            raise RuntimeError(f"first request: HTTP {status} {data[:200]!r}")
        while answered is not None and not answered():
            if time.perf_counter() - started > 60:
                raise RuntimeError("no answer on the response_url")
            time.sleep(0.001)
        first = time.perf_counter() - started
        return Started(process, port, first, rss_mb(process.pid))


def stop(started: Started) -> None:
    started.process.send_signal(signal.SIGINT)
    try:
        started.process.wait(15)
    except subprocess.TimeoutExpired:
        started.process.kill()


def prepare(env: dict[str, str]) -> None:
    """A migrated database with something in staging, approved: promote has a plan."""
    subprocess.run(
        [sys.executable, "-m", "bot", "db", "upgrade"], env=env, check=True, capture_output=True
    )
    from bot.bootstrap import build_runtime

    runtime = build_runtime(env["NBENV_CONFIG"], env["NBENV_DATABASE_URL"], migrate=False)
    report = {
        "python": "3.11",
        "packages": [],
        "notebooks": [{"path": "t.ipynb", "status": "passed", "duration_s": 1, "failure": None}],
    }
    runtime.nbenv.publish(OWNER, IMAGE, "a" * 40, report=report)
    runtime.nbenv.handle(TESTER, f"approve {IMAGE}")


# -- the report ---------------------------------------------------------------------------------


def run(
    options: argparse.Namespace, slack: FakeSlack, home: Path
) -> tuple[list[tuple[str, int, dict[str, Load]]], dict[str, list[float]], dict[str, float]]:
    (home / "nbenv.yaml").write_text(CONFIG, encoding="utf-8")
    env = {
        **os.environ,
        "SLACK_SIGNING_SECRET": SECRET,
        "SLACK_BOT_TOKEN": TOKEN,
        "SLACK_API_URL": slack.base_url,
        "NBENV_CONFIG": str(home / "nbenv.yaml"),
        "NBENV_DATABASE_URL": f"sqlite:///{home / 'nbenv.db'}",
        "NBENV_HOME": str(home),
    }
    prepare(env)
    url = slack.response_url("bench")

    def bare() -> Started:
        port = free_port()
        command = [sys.executable, __file__, "--bare-server", str(port)]
        return start(command, env, port, "help", url)

    def nbenv() -> Started:
        port = free_port()
        command = [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1"]
        command += ["--port", str(port), "--threads", str(THREADS)]
        first = f"first-{port}"
        return start(
            command,
            env,
            port,
            f"status {IMAGE}",
            slack.response_url(first),
            lambda: slack.calls(f"response_url:/response/{first}") > 0,
        )

    # Cold starts, interleaved so that drift in machine load hits both.
    firsts: dict[str, list[float]] = {"bare": [], "nbenv": []}
    memory: dict[str, float] = {}
    for _ in range(options.rounds):
        for name, starter in (("bare", bare), ("nbenv", nbenv)):
            server = starter()
            firsts[name].append(server.first_s)
            memory[name] = server.rss_mb
            stop(server)

    servers = {"bare": bare(), "nbenv": nbenv()}
    time.sleep(1.0)  # let nbenv deliver what `prepare` queued: measure acks, not that
    rows = []
    try:
        ports = {name: server.port for name, server in servers.items()}
        for text in ("help", f"status {IMAGE}", f"promote {IMAGE}"):
            for concurrency in (1, 10, 50):
                requests = max(options.requests, concurrency * 4)
                results = compare(ports, text, concurrency, requests, url, options.slices)
                rows.append((text.split()[0], concurrency, results))
    finally:
        for server in servers.values():
            stop(server)
    return rows, firsts, memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bare-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=400, help="per level (default 400)")
    parser.add_argument("--rounds", type=int, default=5, help="cold starts (default 5)")
    parser.add_argument("--slices", type=int, default=4, help="alternations per level")
    parser.add_argument("--quick", action="store_true", help="a few requests: a check it runs")
    options = parser.parse_args()
    if options.bare_server:
        bare_server(options.bare_server)
        return 0
    if options.quick:
        options.requests, options.rounds, options.slices = QUICK
    return print_rows(measured_rows(options))


QUICK = (40, 1, 2)  # requests per level, cold starts, alternations


def rows(quick: bool = False) -> list[Row]:
    """The rows of `make bench` (benchmarks/run.py)."""
    requests, rounds, slices = QUICK if quick else (200, 5, 4)  # within make bench's 10 min
    return measured_rows(argparse.Namespace(requests=requests, rounds=rounds, slices=slices))


def measured_rows(options: argparse.Namespace) -> list[Row]:
    slack = FakeSlack()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            levels, firsts, memory = run(options, slack, Path(tmp))
    finally:
        slack.close()
    found = []
    for command, concurrency, results in levels:
        bare, nbenv = results["bare"], results["nbenv"]
        target = TARGETS[command]
        slow = concurrency == 50 and command != "help"
        found.append(
            Row(
                f"`/nbenv {command}` ack p50 / p99, concurrency {concurrency}",
                f"{nbenv.p50_ms:.1f} / {nbenv.p99_ms:.1f} ms"
                + (f" (slowest {nbenv.max_ms:.0f} ms)" if slow else ""),
                f"{bare.p50_ms:.1f} / {bare.p99_ms:.1f} ms (bare Bolt)",
                f"{ratio(nbenv.p50_ms, bare.p50_ms)} / {ratio(nbenv.p99_ms, bare.p99_ms)}",
                f"p50 ≤ {target:g}×" + ("; slowest < 3 s" if slow else ""),
                nbenv.p50_ms <= target * bare.p50_ms
                and (not slow or nbenv.max_ms < MAX_ACK_S * 1000),
            )
        )
    bare_first = statistics.median(firsts["bare"])
    nbenv_first = statistics.median(firsts["nbenv"])
    found.append(
        Row(
            "start → first `/nbenv status` answer (median of cold starts)",
            ms(nbenv_first),
            f"{ms(bare_first)} (bare Bolt's first ack)",
            ratio(nbenv_first, bare_first),
            f"≤ {START_TARGET:g}×",
            nbenv_first <= START_TARGET * bare_first,
        )
    )
    found.append(
        Row(
            "RSS after the first answer (all the server's processes)",
            f"{memory['nbenv']:.0f} MB",
            f"{memory['bare']:.0f} MB (bare Bolt)",
            ratio(memory["nbenv"], memory["bare"]),
        )
    )
    return found


if __name__ == "__main__":
    sys.exit(main())
