"""`nbenv socket`: the bot over Socket Mode — for trying it from a laptop, no public URL.

Needs SLACK_APP_TOKEN (an app-level token, xapp-…, with connections:write) and
SLACK_BOT_TOKEN. Requests arrive over the app's own authenticated WebSocket, so there is
no signing secret to check. The same Bolt app, outbox delivery and job worker as
`nbenv serve` run in this one process.

The connection is slack_sdk's Socket Mode client over websocket-client: it reconnects
when Slack asks (`disconnect`, e.g. refresh_requested) and as soon as the connection
drops; every envelope is acknowledged within Slack's 3 s; a command Slack delivers again
after a reconnect has one effect (the same idempotency key as over HTTP: the trigger_id
of a slash command, the action_ts of a button press).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from slack_bolt import App
    from slack_bolt.adapter.socket_mode.base_handler import BaseSocketModeHandler
    from slack_sdk.socket_mode.request import SocketModeRequest

log = logging.getLogger(__name__)

ACK_WITHIN_S = 2.5  # Slack waits 3 s for an ack
ACK_RETRY_S = 0.05


def main(args: argparse.Namespace, rest: list[str]) -> int:
    argparse.ArgumentParser(prog="nbenv socket", description=__doc__.split("\n")[0]).parse_args(
        rest
    )
    from bot.slack.client import bot_token, setting

    app_token = setting(
        "socket",
        "SLACK_APP_TOKEN",
        "Slack app → Basic Information → App-Level Tokens, scope connections:write, xapp-…",
    )
    if not app_token:
        return 2
    if not app_token.startswith("xapp-"):
        print(
            "nbenv socket: SLACK_APP_TOKEN must be an app-level token (xapp-…), "
            "not a bot or user token",
            file=sys.stderr,
        )
        return 2
    token = bot_token("socket")
    if not token:
        return 2

    from slack_sdk.errors import SlackApiError

    from bot.bootstrap import build_runtime, recover_at_start
    from bot.slack.app import build_app
    from bot.slack.background import Background
    from bot.slack.client import web_client
    from bot.slack.outbox import OutboxSender

    runtime = build_runtime(args.config)
    recover_at_start(runtime)
    background = Background(
        runtime,
        OutboxSender(runtime.store, web_client(token)),
        jobs=runtime.worker.run_once,
    ).start()
    handler: BaseSocketModeHandler | None = None
    try:  # from here on, Ctrl-C or a refusal stops the background threads too
        bolt = build_app(runtime.nbenv, token=token, signing_secret=None, wake=background.wake)
        handler = socket_mode_handler(bolt, app_token)
        # Ctrl-C (or a SIGTERM from a service manager) only sets STOP: raised as
        # KeyboardInterrupt inside the client's own threads or connect, it could be
        # swallowed there and leave the process running.
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        print("nbenv: connecting to Slack over Socket Mode (Ctrl-C to stop)", file=sys.stderr)
        handler.connect()  # the client reconnects by itself from here on
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    except SlackApiError as error:  # apps.connections.open refused the app-level token
        code = error.response.get("error") if error.response is not None else None
        print(
            f"nbenv socket: Slack refused to open a Socket Mode connection ({code or error}): "
            "check SLACK_APP_TOKEN (an app-level token with connections:write) and that "
            "Socket Mode is turned on for the app",
            file=sys.stderr,
        )
        return 2
    finally:
        if handler is not None:
            _close(handler)
        background.stop()
    return 0


def _close(handler: BaseSocketModeHandler, timeout_s: float = 5.0) -> None:
    """Close the Socket Mode client, giving up after TIMEOUT_S. When Ctrl-C comes while
    the client is (re)opening its connection, slack_sdk's close can wait forever for a
    reader thread stuck on the socket it just closed; that thread is a daemon, so not
    waiting for it lets the process exit."""
    closing = threading.Thread(target=handler.close, name="socket-mode-close", daemon=True)
    closing.start()
    closing.join(timeout_s)
    if closing.is_alive():
        log.warning("the Socket Mode client did not close within %.0fs: leaving it", timeout_s)


def socket_mode_handler(bolt: App, app_token: str) -> BaseSocketModeHandler:
    """Bolt's Socket Mode adapter (slack_sdk's client over websocket-client), with every
    envelope acknowledged in time.

    * Over HTTP a request the bot refuses (400) or has no listener for (404) still gets
      an answer. Bolt's adapter sends no ack at all for them, and an unacknowledged
      envelope is worse than a refusal: Slack shows the person an error or, for an event,
      sends it again up to three times. Here the ack goes out whatever Bolt answered.
    * When Slack asks for a refresh (`disconnect`), slack_sdk closes the old connection
      at once and the new one opens a moment later: the ack of a command the old
      connection had just delivered found no open connection, so the command was acted
      on but reported failed. The refresh now waits (briefly) for those acks, and an ack
      that still finds no connection is tried again until Slack's deadline is near.
    """
    from slack_bolt.adapter.socket_mode.internals import run_bolt_app, send_response
    from slack_bolt.adapter.socket_mode.websocket_client import SocketModeHandler
    from slack_sdk.socket_mode.response import SocketModeResponse
    from slack_sdk.socket_mode.websocket_client import SocketModeClient

    in_flight = _InFlight()

    class RefreshingClient(SocketModeClient):  # type: ignore[misc]
        def enqueue_message(self, message: str) -> None:
            in_flight.received(_envelope_id(message))
            super().enqueue_message(message)

        def connect_to_new_endpoint(self, force: bool = False) -> None:
            # force: Slack sent `disconnect` and the old connection is still open (a
            # dropped connection or a failed ping reconnects without force)
            if force:
                in_flight.wait_acknowledged()
            super().connect_to_new_endpoint(force)

    class AcknowledgingHandler(SocketModeHandler):  # type: ignore[misc]
        def __init__(self) -> None:  # Bolt's own, with the client above
            self.app = bolt
            self.app_token = app_token
            self.client = RefreshingClient(
                app_token=app_token, logger=bolt.logger, web_client=bolt.client
            )
            self.client.socket_mode_request_listeners.append(self.handle)

        def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:
            start = time.time()
            try:
                response = run_bolt_app(self.app, req)
                if response.status == 200:
                    _acknowledge(req, start, lambda: send_response(client, req, response, start))
                    return
                log.info(
                    "socket mode %s envelope answered %s by the app: acknowledged, %s",
                    req.type,
                    response.status,
                    response.body or "no listener",
                )
                ack = SocketModeResponse(envelope_id=req.envelope_id)
                _acknowledge(req, start, lambda: client.send_socket_mode_response(ack))
            finally:
                in_flight.done(req.envelope_id)

    return AcknowledgingHandler()


class _InFlight:
    """Envelopes received and not acknowledged yet (those older than Slack's deadline
    no longer count: an envelope no listener took must not hold a refresh up)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._received: dict[str, float] = {}

    def received(self, envelope_id: str | None) -> None:
        if envelope_id:
            with self._cond:
                self._received[envelope_id] = time.monotonic()

    def done(self, envelope_id: str | None) -> None:
        with self._cond:
            self._received.pop(envelope_id or "", None)
            self._cond.notify_all()

    def wait_acknowledged(self, timeout_s: float = ACK_WITHIN_S) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                now = time.monotonic()
                pending = [t for t in self._received.values() if now - t < ACK_WITHIN_S]
                if not pending or now >= deadline:
                    return
                self._cond.wait(deadline - now)


def _envelope_id(message: str) -> str | None:
    try:
        parsed = json.loads(message)
    except ValueError:
        return None
    envelope_id = parsed.get("envelope_id") if isinstance(parsed, dict) else None
    return envelope_id if isinstance(envelope_id, str) else None


def _acknowledge(req: SocketModeRequest, received: float, send: Callable[[], None]) -> None:
    """Send an ack, trying again while no connection is open, until ACK_WITHIN_S after
    the envelope came in (slack_sdk offers no event to wait on for its next connection,
    hence the short polling)."""
    while True:
        try:
            send()
            return
        except Exception as error:  # the client raises its transport's own errors
            if time.time() - received >= ACK_WITHIN_S:
                log.warning(
                    "socket mode %s envelope %s: ack not sent (%s)",
                    req.type,
                    req.envelope_id,
                    error,
                )
                return
            time.sleep(ACK_RETRY_S)
