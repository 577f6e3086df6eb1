"""What one `nbenv serve` worker serves: the Flask routes, and the runtime behind them.

POST /slack/events goes to the Bolt app; GET /healthz says whether the background
threads (outbox delivery, jobs) run; POST /pubsub/jobs takes the job queue's Pub/Sub
pushes when the config sets gcp.jobs_audience.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from flask import Flask, request
from slack_bolt.adapter.flask.handler import to_flask_response
from slack_sdk.signature import SignatureVerifier
from werkzeug.exceptions import RequestEntityTooLarge

from bot.bootstrap import build_runtime, recover_at_start
from bot.slack.answer_process import AnswerProcess
from bot.slack.app import build_app
from bot.slack.background import Background, job_step
from bot.slack.client import web_client
from bot.slack.inbound import MAX_BODY, MalformedRequest, bolt_request, timestamp_is_plain
from bot.slack.outbox import OutboxSender
from bot.slack.pubsub import JobPush

if TYPE_CHECKING:
    from collections.abc import Iterable

    from slack_bolt import App

    from bot.config import Config

log = logging.getLogger(__name__)


class Web:
    """What one gunicorn worker serves: a WSGI application (Flask routes around the Bolt
    app) and what runs behind it (the runtime, the background threads, the answer
    process). Built in the worker once it is forked (threads do not survive a fork);
    stopped by gunicorn's worker_exit hook."""

    def __init__(self, config: Config, token: str, signing_secret: str) -> None:
        # First, while this process has no thread: it forks.
        self.answers = AnswerProcess(config)
        try:
            self._start(config, token, signing_secret)
        except BaseException:
            self.answers.stop()  # gunicorn stops a worker that could not start
            raise

    def _start(self, config: Config, token: str, signing_secret: str) -> None:
        runtime = build_runtime(config=config, migrate=False)  # `nbenv serve` migrated
        recover_at_start(runtime)  # finish promotions a crash left half-synced (idempotent)
        self.push = JobPush.from_runtime(runtime)
        # Jobs run here from the store's queue, or travel through Pub/Sub and come back
        # through /pubsub/jobs when a push subscription is configured: never both.
        self.background = Background(
            runtime,
            OutboxSender(runtime.store, web_client(token)),
            jobs=job_step(runtime, pushed=self.push is not None),
        ).start()
        bolt = build_app(
            runtime.nbenv,
            token=token,
            signing_secret=signing_secret,
            wake=self.background.wake,
            answers=self.answers,
        )
        self.flask = self._routes(bolt, signing_secret)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return self.flask(environ, start_response)  # type: ignore[no-any-return]

    def stop(self) -> None:
        self.answers.stop()
        self.background.stop()

    def _routes(self, bolt: App, signing_secret: str) -> Flask:
        web = Flask("nbenv")
        # Werkzeug compares the announced length with this before reading a byte: a 413 at once.
        web.config["MAX_CONTENT_LENGTH"] = MAX_BODY
        verifier = SignatureVerifier(signing_secret)

        @web.errorhandler(RequestEntityTooLarge)
        def too_large(_error: Exception) -> Any:
            log.warning(
                "refused a request to %s: its body is over %d bytes", request.path, MAX_BODY
            )
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
            background = self.background
            health: dict[str, Any] = {"ok": background.running, "background": background.running}
            pause = background.sender.pause if background.sender else None
            if pause is not None:  # still serving: delivery resumes by itself once fixed
                health["slack_delivery"] = pause.describe()
            return health, 200 if background.running else 503

        @web.post("/pubsub/jobs")
        def pubsub_jobs() -> Any:
            if self.push is None:
                return "the job push endpoint is off: set gcp.jobs_audience in the config\n", 404
            result = self.push.handle(request.get_data(), request.headers.get("Authorization"))
            if result.status == 204:
                return "", 204
            return result.text + "\n", result.status

        return web
