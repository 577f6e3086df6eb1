"""The relay function as Cloud Functions runs it: functions-framework in its own process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Self

from tests.support.lifecycle import Startable

REPO_ROOT = Path(__file__).resolve().parents[2]
SOURCE = REPO_ROOT / "functions" / "main.py"
PUBSUB_TYPE = "google.cloud.pubsub.topic.v1.messagePublished"
PUBSUB_SOURCE = "//pubsub.googleapis.com/projects/nbenv-test/topics/cloud-builds"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def framework_command() -> list[str]:
    script = Path(sys.executable).parent / "functions-framework"
    if script.exists():
        return [str(script)]
    found = shutil.which("functions-framework")
    return [found] if found else [sys.executable, "-m", "functions_framework"]


class FunctionProcess(Startable):
    """`functions-framework --target TARGET --source SOURCE --signature-type cloudevent`."""

    def __init__(
        self,
        env: dict[str, str],
        *,
        source: Path = SOURCE,
        target: str = "relay_build_status",
        log_path: Path | None = None,
        threads: int | None = None,
    ) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env}
        if threads is not None:
            self.env["THREADS"] = str(threads)
        self.source = source
        self.target = target
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> Self:
        if self.process is not None:  # `with FunctionProcess(...).start() as f` starts once
            return self
        command = [
            *framework_command(),
            *("--target", self.target, "--source", str(self.source)),
            *("--signature-type", "cloudevent", "--host", "127.0.0.1", "--port", str(self.port)),
        ]
        output = self.log_path.open("wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=self.env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"functions-framework exited: {self.log()}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"functions-framework did not listen in {timeout}s: {self.log()}")

    def log(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    # -- requests ------------------------------------------------------------------------

    def post(self, body: bytes, headers: dict[str, str], timeout: float = 30.0) -> tuple[int, str]:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def binary(self, data: dict[str, Any]) -> tuple[int, str]:
        """A CloudEvent in binary content mode: attributes in ce-* headers, data the body."""
        headers = {
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": str(uuid.uuid4()),
            "ce-source": PUBSUB_SOURCE,
            "ce-type": PUBSUB_TYPE,
            "ce-time": "2025-03-01T12:00:01.123Z",
        }
        return self.post(json.dumps(data).encode(), headers)

    def structured(self, data: dict[str, Any]) -> tuple[int, str]:
        """A CloudEvent in structured content mode: the whole event is the JSON body."""
        event = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "source": PUBSUB_SOURCE,
            "type": PUBSUB_TYPE,
            "time": "2025-03-01T12:00:01.123Z",
            "datacontenttype": "application/json",
            "data": data,
        }
        headers = {"Content-Type": "application/cloudevents+json"}
        return self.post(json.dumps(event).encode(), headers)

    def push(self, data: dict[str, Any]) -> tuple[int, str]:
        """The body a Pub/Sub push subscription posts (functions-framework converts it)."""
        headers = {"Content-Type": "application/json"}
        return self.post(json.dumps(data).encode(), headers)
