"""`nbenv serve`: the bot over HTTP, fit for Cloud Run — gunicorn + Flask + Bolt.

Routes: POST /slack/events (slash commands, interactivity, events), GET /healthz,
POST /pubsub/jobs (the job queue's push subscription, OIDC-verified; enabled when the
config sets gcp.jobs_audience). Listens on $PORT (default 8080).

The start, in the order it happens:

1. `main` checks the environment, reads the config and brings the database schema up
   to date, in the gunicorn master: a mistake stops the start with a one-line reason
   before any worker exists. The master then loads the code every worker runs.
2. `NbenvServer` (a gunicorn application) forks the workers (`--workers`, default 1),
   each a process with threads for requests (`RequestBufferingWorker`).
3. Each worker builds its `Web` (bot.slack.web): first it forks its answer process
   (bot.slack.answer_process), which computes the answers given after an ack; then the
   runtime (store, service), the outbox delivery and job threads, the Bolt app and the
   Flask routes around it; then it serves.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from gunicorn.app.base import BaseApplication

from bot.slack.client import bot_token, setting

if TYPE_CHECKING:
    from bot.config import Config

log = logging.getLogger(__name__)


def main(args: argparse.Namespace, rest: list[str]) -> int:
    # Python's recipe for a server that forks (the gc module's documentation): no
    # collection while the code loads — loading makes many objects and frees few, and
    # the start is about a tenth shorter (measured, `make bench`) — and what was loaded
    # frozen before the workers fork, so that their collections leave the memory they
    # share with the master alone.
    gc.disable()
    options = _options(rest)
    signing_secret = setting(
        "serve",
        "SLACK_SIGNING_SECRET",
        "Slack app → Basic Information → Signing Secret: without it no request can be verified",
    )
    if not signing_secret:
        return 2
    token = bot_token("serve")
    if not token:
        return 2
    config = prepare(args.config)
    # Loaded once, here: the workers fork with it and start serving at once.
    from bot.slack import http_worker, web

    http_worker.RequestBufferingWorker.read_timeout_s = options.read_timeout
    settings = {
        "bind": f"{options.host}:{options.port}",
        "workers": options.workers,
        # gthread, but whole requests reach its threads: slow clients hold none.
        "worker_class": "bot.slack.http_worker.RequestBufferingWorker",
        "threads": options.threads,
        "timeout": 120,
        "graceful_timeout": 10,
        "keepalive": 75,  # longer than the load balancer's idle timeout
        "worker_exit": _worker_exit,
        "loglevel": "warning",
        "accesslog": None,
        "proc_name": "nbenv-serve",
        # gunicorn's control socket sits at one path per user ($HOME/.gunicorn): two
        # servers on one host would take it from each other, and nbenv needs none.
        "control_socket_disable": True,
    }
    print(
        f"nbenv: serving Slack on http://{options.host}:{options.port} "
        "(POST /slack/events, GET /healthz, POST /pubsub/jobs)",
        file=sys.stderr,
        flush=True,
    )
    gc.freeze()
    gc.enable()
    NbenvServer(settings, lambda: web.Web(config, token, signing_secret)).run()
    return 0


def prepare(config_path: str | None) -> Config:
    """The config, checked, and the database schema brought up to date; a problem is an
    NbenvError with a one-line reason (the CLI prints it and exits with its status)."""
    from bot.config import load_config
    from bot.domain.errors import NbenvError
    from bot.store.database import make_engine, schema_is_current, upgrade

    config = load_config(config_path)  # a bad config stops here, with the file and key
    engine = make_engine()
    try:
        if not schema_is_current(engine):  # known without Alembic: it loads only to migrate
            upgrade(engine)
    except Exception as error:  # the database is unreachable, say
        raise NbenvError(f"cannot prepare the database: {error}") from None
    finally:
        engine.dispose()  # no connection may cross the fork into a worker
    return config


class NbenvServer(BaseApplication):  # type: ignore[misc]
    """`nbenv serve` as a gunicorn application: SETTINGS are gunicorn's, and each worker
    serves what LOAD makes once it is forked."""

    def __init__(self, settings: dict[str, Any], load: Any) -> None:
        self.settings = settings
        self.make_wsgi_application = load
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.settings.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.make_wsgi_application()


def _worker_exit(_server: Any, gunicorn_worker: Any) -> None:
    web = getattr(gunicorn_worker, "wsgi", None)  # None: the worker failed to start
    if web is not None:
        web.stop()


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
