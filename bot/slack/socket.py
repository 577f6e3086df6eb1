"""`nbenv socket`: the bot over Socket Mode — for trying it from a laptop, no public URL.

Needs SLACK_APP_TOKEN (an app-level token, xapp-…, with connections:write) and
SLACK_BOT_TOKEN. Requests arrive over the app's own authenticated WebSocket, so there is
no signing secret to check. The same Bolt app, outbox delivery and job worker as
`nbenv serve` run in this one process.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(args: argparse.Namespace, rest: list[str]) -> int:
    argparse.ArgumentParser(prog="nbenv socket", description=__doc__.split("\n")[0]).parse_args(
        rest
    )
    app_token = os.environ.get("SLACK_APP_TOKEN")
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not app_token:
        print(
            "nbenv socket: SLACK_APP_TOKEN is not set (Slack app → Basic Information → "
            "App-Level Tokens, scope connections:write, xapp-…)",
            file=sys.stderr,
        )
        return 2
    if not app_token.startswith("xapp-"):
        print(
            "nbenv socket: SLACK_APP_TOKEN must be an app-level token (xapp-…), "
            "not a bot or user token",
            file=sys.stderr,
        )
        return 2
    if not token:
        print(
            "nbenv socket: SLACK_BOT_TOKEN is not set (Slack app → OAuth & Permissions → "
            "Bot User OAuth Token, xoxb-…)",
            file=sys.stderr,
        )
        return 2

    from slack_bolt.adapter.socket_mode import SocketModeHandler

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
    bolt = build_app(runtime.app, token=token, signing_secret=None, wake=background.wake)
    handler = SocketModeHandler(bolt, app_token)
    print("nbenv: connecting to Slack over Socket Mode (Ctrl-C to stop)", file=sys.stderr)
    try:
        handler.start()  # blocks until interrupted
    except KeyboardInterrupt:
        pass
    finally:
        handler.close()
        background.stop()
    return 0
