"""Deliver a notebook test report to the build relay through Pub/Sub.

The staging pipeline's `deliver-report` step runs this in a plain Python image, after
the tests and before the step that fails the build, so a failing notebook's details
reach the commit's Slack thread. It uses only the standard library: Pub/Sub's REST
API, with the build's service-account token from the metadata server (or no token at
all when PUBSUB_EMULATOR_HOST points at the emulator).

The message: data = the report JSON; attributes `nbenv=test-report`, `image`, `sha`,
`buildId` (what functions/main.py expects).

Exit status: 0 delivered, or no report to deliver (the runner never wrote one: the
next step fails the build with the runner's status); 1 Pub/Sub refused it (a report too
big for one message is first cut by the runner's rules, `truncated` saying so); 2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

METADATA_TOKEN_URL = (
    "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
)
PUBSUB_URL = "https://pubsub.googleapis.com"
# Pub/Sub takes 10 MB per publish request (cloud.google.com/pubsub/quotas#resource_limits),
# and the REST API carries the data in base64, a third larger: 7 MB of report is 9.3 MB.
MAX_DATA_BYTES = 7_000_000
# The runner's own bound_report: one way of cutting a report, wherever it is cut. It is
# in this checkout, beside this file, and imports only the standard library at the top.
RUNNER = Path(__file__).resolve().parents[2] / "bot" / "runner" / "notebook_tests.py"
ATTEMPTS = 5


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--report", required=True, type=Path, help="test report JSON file")
    parser.add_argument("--project", required=True, help="Google Cloud project of the topic")
    parser.add_argument("--topic", required=True, help="Pub/Sub topic, e.g. nbenv-reports")
    parser.add_argument("--image", required=True, help="the image name (_IMAGE_NAME)")
    parser.add_argument("--sha", required=True, help="the commit SHA the image was built from")
    parser.add_argument("--build-id", required=True, help="the Cloud Build ID ($BUILD_ID)")
    return parser


def _token() -> str | None:
    if os.environ.get("PUBSUB_EMULATOR_HOST"):
        return None
    request = urllib.request.Request(METADATA_TOKEN_URL, headers={"Metadata-Flavor": "Google"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.load(response)["access_token"])


def bound_report(report: dict[str, Any], limit: int) -> dict[str, Any]:
    """REPORT cut to LIMIT bytes of JSON by the runner's rules, marked `truncated`."""
    spec = importlib.util.spec_from_file_location("nbenv_notebook_tests", RUNNER)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {RUNNER}")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    return dict(runner.bound_report(report, limit))


def publish(url: str, body: bytes, token: str | None) -> str:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    delay = 1.0
    for attempt in range(1, ATTEMPTS + 1):
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return str(json.load(response)["messageIds"][0])
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            if error.code not in (429, 500, 502, 503, 504) or attempt == ATTEMPTS:
                raise RuntimeError(f"Pub/Sub answered HTTP {error.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError) as error:
            if attempt == ATTEMPTS:
                raise RuntimeError(f"Pub/Sub unreachable: {error}") from None
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        report = json.loads(args.report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        print(f"no test report to deliver ({args.report}: {error})", file=sys.stderr)
        return 0
    data = json.dumps(report).encode()
    if len(data) > MAX_DATA_BYTES and isinstance(report, dict):
        # A runner older than its cap, or a report written by hand: cut it here, so that
        # the verdicts still reach the thread (the cut is marked in the report).
        data = json.dumps(bound_report(report, MAX_DATA_BYTES)).encode()
    if len(data) > MAX_DATA_BYTES:
        print(
            f"could not deliver the test report: {len(data)} bytes is more than "
            f"{MAX_DATA_BYTES} and it is not a report that can be cut",
            file=sys.stderr,
        )
        return 1
    message = {
        "data": base64.b64encode(data).decode(),
        "attributes": {
            "nbenv": "test-report",
            "image": args.image,
            "sha": args.sha,
            "buildId": args.build_id,
        },
    }
    host = os.environ.get("PUBSUB_EMULATOR_HOST")
    base = f"http://{host}" if host else PUBSUB_URL
    url = f"{base}/v1/projects/{args.project}/topics/{args.topic}:publish"
    try:
        message_id = publish(url, json.dumps({"messages": [message]}).encode(), _token())
    except (RuntimeError, OSError, KeyError, ValueError) as error:
        print(f"could not deliver the test report to {args.topic}: {error}", file=sys.stderr)
        return 1
    print(f"test report for {args.image} {args.sha[:7]} delivered as message {message_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
