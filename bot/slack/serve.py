"""`nbenv serve`: the bot over HTTP, fit for Cloud Run — gunicorn + Flask + Bolt.

Routes: POST /slack/events (slash commands, interactivity, events), GET /healthz,
POST /pubsub/jobs (the job queue's push subscription, OIDC-verified; enabled when the
config sets gcp.jobs_audience). Listens on $PORT (default 8080).

Cold start matters on Cloud Run (an instance starts when a request is waiting), so the
start uses both cores:

* the master forks the first worker's answer process (bot.slack.answers) before it
  imports anything heavy; that process checks the config and migrates the database,
  reports to the master (a mistake stops the start with a one-line reason), then loads
  the service and the store, while the master loads Flask and Bolt;
* a worker serves as soon as Flask and Bolt are up: acking a slash command needs only
  the config's teams and images (bot.config_file, no pydantic), and answers are
  computed in the answer process. Its runtime (pydantic, SQLAlchemy,
  the service, the outbox delivery thread and, on the local backend, the job worker
  thread) loads on a thread of its own; whatever needs it waits until it is there.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bot.config import Config
    from bot.config_file import Access
    from bot.domain.commands import Command
    from bot.service.runtime import Runtime
    from bot.slack.answers import AnswerProcess
    from bot.slack.background import Background
    from bot.slack.pubsub import JobPush

log = logging.getLogger(__name__)

WORKER_BOOT_ERROR = 3  # gunicorn's Arbiter.WORKER_BOOT_ERROR: the master halts the server

# Started by the master for the first worker, which adopts it (see _post_fork).
_first_answers: AnswerProcess | None = None
_first_worker = False
# This worker's runtime and answer process, stopped by the worker_exit hook.
_worker: WorkerRuntime | None = None
_answers: AnswerProcess | None = None


class WorkerRuntime:
    """A worker's runtime, outbox delivery and job step, built on a thread of their own
    (loading SQLAlchemy and the service is most of a worker's start); `wait` for them.

    The first answers wait for the answer process, not for this: the thread lets that
    process have the CPU until it is ready (PATIENCE_S at most), unless a request needs
    the runtime sooner.
    """

    PATIENCE_S = 2.0

    def __init__(self, config_path: str | None, token: str, answers: AnswerProcess) -> None:
        self.runtime: Runtime | None = None
        self.background: Background | None = None
        self.push: JobPush | None = None
        self._needed = threading.Event()
        self._stopping = False
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._build,
            args=(config_path, token, answers),
            name="nbenv-start",
            daemon=True,
        )
        self._thread.start()

    def _build(self, config_path: str | None, token: str, answers: AnswerProcess) -> None:
        deadline = time.monotonic() + self.PATIENCE_S
        while not answers.ready() and time.monotonic() < deadline:
            if self._needed.wait(0.005):
                break
        if self._stopping:
            self._ready.set()
            return
        try:
            from bot.bootstrap import build_runtime, recover_at_start
            from bot.slack.background import Background, job_step
            from bot.slack.client import web_client
            from bot.slack.outbox import OutboxSender
            from bot.slack.pubsub import JobPush

            runtime = build_runtime(config_path, migrate=False)
            recover_at_start(runtime)  # finish promotions a crash left half-synced (idempotent)
            sender = OutboxSender(runtime.store, web_client(token))
            push = JobPush.from_runtime(runtime)
            # Jobs run here from the store's queue, or travel through Pub/Sub and come back
            # through /pubsub/jobs when a push subscription is configured: never both.
            jobs = job_step(runtime, pushed=push is not None)
            self.background = Background(runtime, sender, jobs=jobs).start()
            self.runtime, self.push = runtime, push
        except BaseException:
            # As a failure in gunicorn's load() would: the worker did not boot, and the
            # master stops the server rather than restart workers that cannot start.
            log.exception("the worker could not start")
            logging.shutdown()
            os._exit(WORKER_BOOT_ERROR)
        self._ready.set()

    def wait(self) -> WorkerRuntime:
        self._needed.set()
        self._ready.wait()
        return self

    def wake(self) -> None:
        if self.background is not None:  # before it starts, its first pass finds everything
            self.background.wake()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping = True  # not started yet: it never will
        self._needed.set()
        self._ready.wait(timeout_s)
        if self.background is not None:
            self.background.stop()


class WarmingService:
    """The worker's Nbenv as Bolt sees it: the check every command passes first is answered
    from the config's teams and images at once, so that `/nbenv status` is acked and handed
    to the answer process while the runtime still loads; anything else waits for the real
    service."""

    def __init__(self, access: Access, worker: WorkerRuntime) -> None:
        self._access = access
        self._worker = worker

    def check(self, actor: str, command: Command) -> None:
        from bot.service.access import check

        check(self._access, actor, command)

    def __getattr__(self, name: str) -> Any:
        runtime = self._worker.wait().runtime
        assert runtime is not None
        return getattr(runtime.nbenv, name)


def create_web_app(bolt: Any, worker: WorkerRuntime, signing_secret: str) -> Any:
    """The Flask app: Bolt behind /slack/events, the health check, the job push endpoint."""
    from flask import Flask, request
    from slack_bolt.adapter.flask.handler import to_flask_response
    from slack_sdk.signature import SignatureVerifier
    from werkzeug.exceptions import RequestEntityTooLarge

    from bot.slack.inbound import MAX_BODY, MalformedRequest, bolt_request, timestamp_is_plain

    web = Flask("nbenv")
    # Werkzeug compares the announced length with this before reading a byte: a 413 at once.
    web.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    verifier = SignatureVerifier(signing_secret)

    @web.errorhandler(RequestEntityTooLarge)
    def too_large(_error: Exception) -> Any:
        log.warning("refused a request to %s: its body is over %d bytes", request.path, MAX_BODY)
        return f"the request body is over {MAX_BODY} bytes\n", 413

    @web.post("/slack/events")
    def slack_events() -> Any:
        # Bolt's verifier crashes (500) on a timestamp that int() rejects (`²`) or that
        # float() cannot hold (400 digits): only a plain Unix time goes on.
        if not timestamp_is_plain(request.headers.get("X-Slack-Request-Timestamp")):
            return {"error": "invalid request: no valid X-Slack-Request-Timestamp"}, 401
        text = request.get_data(as_text=True)
        try:
            # Parsed once and checked, then handed to Bolt as its Flask adapter builds it.
            checked = bolt_request(text, request.query_string.decode("utf-8"), request.headers)
        except MalformedRequest as problem:
            # Unsigned junk is Bolt's 401 as usual; only a signed request hears what is wrong.
            if not verifier.is_valid_request(text, dict(request.headers)):
                return {"error": "invalid request"}, 401
            log.warning("refused a signed Slack request: %s", problem)
            return {"error": f"malformed request: {problem}; nothing was changed"}, 400
        return to_flask_response(bolt.dispatch(checked))

    @web.get("/healthz")
    def healthz() -> Any:
        background = worker.wait().background
        background_ok = background is None or background.running
        health: dict[str, Any] = {"ok": background_ok, "background": background_ok}
        pause = background.sender.pause if background and background.sender else None
        if pause is not None:  # still serving: delivery resumes by itself once fixed
            health["slack_delivery"] = pause.describe()
        return health, 200 if background_ok else 503

    @web.post("/pubsub/jobs")
    def pubsub_jobs() -> Any:
        push = worker.wait().push
        if push is None:
            return "the job push endpoint is off: set gcp.jobs_audience in the config\n", 404
        result = push.handle(request.get_data(), request.headers.get("Authorization"))
        if result.status == 204:
            return "", 204
        return result.text + "\n", result.status

    return web


def build_worker_app(config_path: str | None, token: str, signing_secret: str) -> Any:
    """Everything one gunicorn worker serves (called in the worker, after the fork)."""
    global _worker, _answers
    from bot.slack.answers import AnswerProcess

    if _first_worker and _first_answers is not None:
        _answers = _first_answers.adopt()  # started by the master: warm by now, or nearly
    else:
        # First, while this process has no thread and no database connection to inherit.
        _answers = AnswerProcess(config_path)

    from bot.config_file import read_access
    from bot.slack.app import build_app

    _worker = WorkerRuntime(config_path, token, _answers)
    bolt = build_app(
        WarmingService(read_access(config_path), _worker),  # type: ignore[arg-type]
        token=token,
        signing_secret=signing_secret,
        wake=_worker.wake,
        answers=_answers,
    )
    return create_web_app(bolt, _worker, signing_secret)


def _check_in_answer_process(config_path: str | None, report_read: int, report: int) -> Config:
    """FIRST of the master's answer process: check the config, then bring the schema up to
    date, and tell the master "CODE\nREASON" through REPORT (0: go on)."""
    from bot.config import load_config
    from bot.domain.errors import NbenvError

    os.close(report_read)
    code, reason, config = 0, "", None
    try:
        config = load_config(config_path)  # a bad config stops here, with the file and key
        from bot.store.database import make_engine, schema_is_current, upgrade

        engine = make_engine()
        if not schema_is_current(engine):
            upgrade(engine)
        engine.dispose()
    except NbenvError as error:
        code, reason = error.exit_code, error.message
    except Exception as error:  # the database is unreachable, say
        code, reason = 1, f"cannot prepare the database: {error}"
    with os.fdopen(report, "wb") as out:
        out.write(f"{code}\n{reason}".encode())
    if config is None or code != 0:
        os._exit(code or 1)
    return config


def _preload() -> None:
    """What every worker needs to serve: once, here, so the forked workers start ready.
    Not the service and the store: a worker loads them while it already serves."""
    import flask  # noqa: F401
    import gunicorn.app.base  # noqa: F401
    import slack_bolt.adapter.flask  # noqa: F401

    import bot.config_file
    import bot.service.access
    import bot.slack.app  # noqa: F401


def _prepare(config_path: str | None) -> AnswerProcess:
    """Check the config and bring the schema up to date before any worker starts.

    What both halves of the start need (Slack's SDK, YAML) is loaded first, once; then the
    first worker's answer process is started: it checks the config (pydantic), migrates,
    and loads the service and the store, while this process imports what workers need.
    A problem ends the start with a one-line reason and exit status.
    """
    # Loaded once, before the fork: both processes need them.
    import slack_sdk  # noqa: F401
    import yaml  # noqa: F401

    import bot.config_file  # noqa: F401
    from bot.domain.errors import NbenvError
    from bot.slack.answers import AnswerProcess

    report_read, report_write = os.pipe()
    # No thread runs yet in this process: forking is safe.
    answers = AnswerProcess(
        config_path, first=partial(_check_in_answer_process, config_path, report_read, report_write)
    )
    os.close(report_write)
    try:
        _preload()
    except BaseException:
        os.close(report_read)
        os.kill(answers.pid, signal.SIGTERM)  # nobody will ask it anything
        os.waitpid(answers.pid, 0)
        raise
    with os.fdopen(report_read, "rb") as report:
        outcome = report.read().decode(errors="replace")
    code_text, _, reason = outcome.partition("\n")
    code = int(code_text) if code_text.isdigit() else -1
    if code != 0:
        _, status = os.waitpid(answers.pid, 0)
        if code == -1:  # it ended before it could say why
            code = os.waitstatus_to_exitcode(status) or 1
        failure = NbenvError(
            reason.splitlines()[0] if reason.strip() else f"start-up failed ({code})"
        )
        failure.exit_code = code
        raise failure
    return answers


def _post_fork(server: Any, worker: Any) -> None:
    global _first_worker
    _first_worker = worker.age == 1  # the first worker gunicorn forks


def _worker_exit(server: Any, worker: Any) -> None:
    if _worker is not None:
        _worker.stop()
    if _answers is not None:
        _answers.stop()


def _options(rest: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="nbenv serve", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT") or 8080))
    parser.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY") or 1),
        help="processes (default $WEB_CONCURRENCY or 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=int(os.environ.get("NBENV_THREADS") or 16),
        help="request threads per process (default $NBENV_THREADS or 16)",
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=float(os.environ.get("NBENV_READ_TIMEOUT_S") or 10),
        help="seconds a client has to send a whole request (default $NBENV_READ_TIMEOUT_S or 10)",
    )
    return parser.parse_args(rest)


def main(args: argparse.Namespace, rest: list[str]) -> int:
    options = _options(rest)
    signing_secret = os.environ.get("SLACK_SIGNING_SECRET")
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not signing_secret:
        print(
            "nbenv serve: SLACK_SIGNING_SECRET is not set (Slack app → Basic Information → "
            "Signing Secret); without it no request can be verified",
            file=sys.stderr,
        )
        return 2
    if not token:
        print(
            "nbenv serve: SLACK_BOT_TOKEN is not set (Slack app → OAuth & Permissions → "
            "Bot User OAuth Token, xoxb-…)",
            file=sys.stderr,
        )
        return 2
    global _first_answers
    _first_answers = _prepare(args.config)

    from bot.slack.http_worker import NbenvServer, RequestBufferingWorker

    RequestBufferingWorker.read_timeout_s = options.read_timeout  # the workers fork from here
    settings = {
        "bind": f"{options.host}:{options.port}",
        "workers": options.workers,
        # gthread, but whole requests reach its threads: slow clients hold none.
        "worker_class": "bot.slack.http_worker.RequestBufferingWorker",
        "threads": options.threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 75,  # longer than the load balancer's idle timeout
        "post_fork": _post_fork,
        "worker_exit": _worker_exit,
        "loglevel": "warning",
        "accesslog": None,
        "proc_name": "nbenv-serve",
    }
    print(
        f"nbenv: serving Slack on http://{options.host}:{options.port} "
        "(POST /slack/events, GET /healthz, POST /pubsub/jobs)",
        file=sys.stderr,
        flush=True,
    )
    NbenvServer(settings, lambda: build_worker_app(args.config, token, signing_secret)).run()
    return 0
