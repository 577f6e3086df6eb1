"""`nbenv serve`: the bot over HTTP, fit for Cloud Run — gunicorn + Flask + Bolt.

Routes: POST /slack/events (slash commands, interactivity, events), GET /healthz,
POST /pubsub/jobs (the job queue's push subscription, OIDC-verified; enabled when the
config sets gcp.jobs_audience). Listens on $PORT (default 8080).

The master checks the config and migrates the database before forking, so a mistake
stops the start with a one-line reason. Each worker builds the runtime, starts the
outbox delivery thread (and, on the local backend, the job worker thread) and stops
them cleanly on exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

log = logging.getLogger(__name__)

# This worker's background threads and answer process, stopped by the worker_exit hook.
_background: Any = None
_answers: Any = None


def create_web_app(bolt: Any, push: Any, background: Any = None) -> Any:
    """The Flask app: Bolt behind /slack/events, the health check, the job push endpoint."""
    from flask import Flask, request
    from slack_bolt.adapter.flask import SlackRequestHandler

    web = Flask("nbenv")
    handler = SlackRequestHandler(bolt)

    @web.post("/slack/events")
    def slack_events() -> Any:
        # Bolt's verifier would crash (500) on a timestamp that is not a number.
        if not request.headers.get("X-Slack-Request-Timestamp", "").isdigit():
            return {"error": "invalid request: no valid X-Slack-Request-Timestamp"}, 401
        return handler.handle(request)

    @web.get("/healthz")
    def healthz() -> Any:
        background_ok = background is None or background.running
        return {"ok": background_ok, "background": background_ok}, 200 if background_ok else 503

    @web.post("/pubsub/jobs")
    def pubsub_jobs() -> Any:
        if push is None:
            return "the job push endpoint is off: set gcp.jobs_audience in the config\n", 404
        result = push.handle(request.get_data(), request.headers.get("Authorization"))
        if result.status == 204:
            return "", 204
        return result.text + "\n", result.status

    return web


def build_worker_app(config_path: str | None, token: str, signing_secret: str) -> Any:
    """Everything one gunicorn worker serves (called in the worker, after the fork)."""
    global _background, _answers
    from bot.slack.answers import AnswerProcess

    # First, while this process has no thread and no database connection to inherit, and
    # early: it builds its runtime on the other core while this one imports the rest.
    _answers = AnswerProcess(config_path)

    from bot.bootstrap import build_runtime, recover_at_start
    from bot.slack.app import build_app
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
    _background = Background(runtime, sender, jobs=jobs).start()
    bolt = build_app(
        runtime.app,
        token=token,
        signing_secret=signing_secret,
        wake=_background.wake,
        answers=_answers,
    )
    return create_web_app(bolt, push, _background)


def _check_and_migrate(config_path: str | None) -> None:
    from bot.config import load_config
    from bot.store.database import make_engine, schema_is_current, upgrade

    load_config(config_path)  # a bad config stops here, with the file and the key
    engine = make_engine()
    if not schema_is_current(engine):
        upgrade(engine)
    engine.dispose()


def _preload() -> None:
    """What every worker imports: once, here, so the forked workers start ready."""
    import flask  # noqa: F401
    import slack_bolt.adapter.flask  # noqa: F401

    import bot.bootstrap
    import bot.slack.app
    import bot.slack.background
    import bot.slack.pubsub  # noqa: F401


def _prepare(config_path: str | None) -> None:
    """Check the config and bring the schema up to date before any worker starts.

    Cold start matters on Cloud Run, so the two halves of the start run side by side: a
    child process checks and migrates while this one imports what the workers need. A
    problem ends the start with the child's one-line reason and exit status.
    """
    from bot.domain.errors import NbenvError

    read_end, write_end = os.pipe()
    child = os.fork()  # no thread runs yet in this process: forking is safe
    if child == 0:
        os.close(read_end)
        code = 0
        try:
            _check_and_migrate(config_path)
        except NbenvError as error:
            os.write(write_end, error.message.encode())
            code = error.exit_code
        except Exception as error:  # the database is unreachable, say
            os.write(write_end, f"cannot prepare the database: {error}".encode())
            code = 1
        os._exit(code)
    os.close(write_end)
    try:
        _preload()
    finally:
        with os.fdopen(read_end, "rb") as reason:
            message = reason.read().decode(errors="replace").strip()
        _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        failure = NbenvError(message.splitlines()[0] if message else f"start-up failed ({code})")
        failure.exit_code = code
        raise failure


def _worker_exit(server: Any, worker: Any) -> None:
    if _background is not None:
        _background.stop()
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
    _prepare(args.config)

    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            settings = {
                "bind": f"{options.host}:{options.port}",
                "workers": options.workers,
                "worker_class": "gthread",
                "threads": options.threads,
                "timeout": 120,
                "graceful_timeout": 10,
                "keepalive": 75,  # longer than the load balancer's idle timeout
                "worker_exit": _worker_exit,
                "loglevel": "warning",
                "accesslog": None,
                "proc_name": "nbenv-serve",
            }
            for key, value in settings.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            return build_worker_app(args.config, token, signing_secret)

    print(
        f"nbenv: serving Slack on http://{options.host}:{options.port} "
        "(POST /slack/events, GET /healthz, POST /pubsub/jobs)",
        file=sys.stderr,
        flush=True,
    )
    Server().run()
    return 0
