"""The baseline for bench_relay.py: a CloudEvent function that only decodes the event."""

from __future__ import annotations

import base64
import json

import functions_framework
from cloudevents.http import CloudEvent


@functions_framework.cloud_event
def bare(event: CloudEvent) -> None:
    message = event.get_data()["message"]
    json.loads(base64.b64decode(message["data"]))
