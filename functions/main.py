"""Cloud Function `relay_build_status`: build status and test reports → Slack threads.

Two Pub/Sub topics trigger it (DESIGN.md §5):

* `cloud-builds`: Cloud Build publishes each Build resource as it changes;
* `nbenv-reports` (config `gcp.topics.reports`): the staging pipeline's `deliver-report`
  step publishes the notebook test report, marked by the attribute `nbenv=test-report`
  and carrying `image`, `sha` and `buildId` (config/cloudbuild/publish_report.py).

Deploy from the repository root, so the `bot` package and requirements.txt ship with it::

    gcloud functions deploy nbenv-relay --gen2 --runtime=python311 --source=. \
        --entry-point=relay_build_status --trigger-topic=cloud-builds \
        --set-build-env-vars=GOOGLE_FUNCTION_SOURCE=functions/main.py \
        --set-env-vars=NBENV_CONFIG=config/nbenv.yaml \
        --set-secrets=SLACK_BOT_TOKEN=slack-bot-token:latest,NBENV_DATABASE_URL=nbenv-db:latest

and once more as `nbenv-report-relay` with `--trigger-topic=nbenv-reports`.

Bad events are logged in one line and acknowledged (the function returns normally): a
retry would fail the same way. Only what a later delivery can get past (the database
unreachable, a lock timeout) raises, so Pub/Sub redelivers the message later; after 10
attempts the subscription's dead-letter policy parks it in `nbenv-dead-letters`
(docs/deploy.md, step 9).
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path
from typing import Any

import flask
import functions_framework
from cloudevents.http import CloudEvent
from werkzeug.exceptions import HTTPException

try:
    import bot  # noqa: F401 - installed, or shipped beside this file
except ImportError:  # run from a checkout: the package is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.bootstrap import relay_from_env
from bot.builds.relay import BuildRelay

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
_log = logging.getLogger("relay")

_relay: BuildRelay | None = None
_lock = threading.Lock()


def _get_relay() -> BuildRelay:
    # Built on the first event, once per instance: config, migrations, Slack client.
    global _relay
    if _relay is None:
        with _lock:
            if _relay is None:
                _relay = relay_from_env()
    return _relay


@functions_framework.errorhandler(Exception)
def _unreadable_cloud_event(error: Exception) -> Any:
    """functions-framework reads the CloudEvent before the relay sees it, and answers what
    it cannot read (an attribute of the wrong type, JSON nested thousands deep) with a 500
    and a traceback: Pub/Sub would redeliver it for days. A clear 400 and one line instead.
    What the relay itself raises (only a fault a retry can get past) stays a 500."""
    if isinstance(error, HTTPException):  # the framework's own answer (a 400, say)
        return error
    if flask.g.get("relay_ran"):
        _log.error("relay: failed, Pub/Sub will deliver the event again", exc_info=error)
        return functions_framework.crash_handler(error)
    problem = " ".join(str(error).split())[:200]
    _log.warning(
        "relay: refused a CloudEvent it cannot read: %s: %s", type(error).__name__, problem
    )
    return f"not a CloudEvent that can be read ({type(error).__name__})\n", 400


@functions_framework.cloud_event
def relay_build_status(event: CloudEvent) -> None:
    flask.g.relay_ran = True
    _get_relay().handle_pubsub(event.get_data())
