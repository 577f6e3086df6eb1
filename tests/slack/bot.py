"""`nbenv serve` as a real process, and requests shaped and signed the way Slack sends them.

Payload shapes follow Slack's documentation: slash commands are form bodies;
block_actions and view_submission are a form field `payload` holding JSON; events are
JSON envelopes. Signatures use Slack's scheme (v0:timestamp:body, HMAC-SHA256) through
slack_sdk's SignatureVerifier.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests
from slack_sdk.signature import SignatureVerifier

from tests.conftest import OWNER, TESTER, TESTER2, USER, VISION_OWNER, sha_of
from tests.support.slack_api import FakeSlackApi, Message

SECRET = "test-signing-secret-0123456789"
TOKEN = "xoxb-test"
CHANNEL = "C01NLP"
TEAM = "T0NBENV01"
STRANGER = "U09STRANGER"  # a well-formed Slack ID that no team lists
POOL = 40  # images nlp.t01 … nlp.t40: one fresh image per test, one server per module


def config_text(extra: str = "", images: int = POOL) -> str:
    lines = [
        "backend: local",
        "teams:",
        "  nlp:",
        f"    owners: [{OWNER}]",
        f"    testers: [{TESTER}, {TESTER2}]",
        f"    users: [{USER}]",
        "  vision:",
        f"    owners: [{VISION_OWNER}]",
        "    testers: [U05VTESTER]",
        "    users: [U07VUSER]",
        "images:",
        "  vision.pytorch-gpu: {team: vision, channel: C02VISION}",
        "  nlp.two-approvals: {team: nlp, channel: C01NLP, approvals: 2}",
    ]
    lines += [f"  nlp.t{n:02d}: {{team: nlp, channel: {CHANNEL}}}" for n in range(1, images + 1)]
    return "\n".join(lines) + "\n" + textwrap.dedent(extra)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def report(passed: bool = True) -> dict[str, Any]:
    failure = (
        None
        if passed
        else {
            "cell": 3,
            "line": 2,
            "ename": "AssertionError",
            "evalue": "boom",
            "traceback": "AssertionError: boom",
        }
    )
    return {
        "python": "3.11.7",
        "packages": [{"name": "numpy", "version": "1.26.4"}],
        "notebooks": [
            {
                "path": "tests/01_smoke.ipynb",
                "status": "passed" if passed else "failed",
                "duration_s": 1.5,
                "failure": failure,
            }
        ],
    }


@dataclass
class Answer:
    status: int
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def shown(self) -> str:
        """What the person sees in the ack: the text of every block ("" for an empty ack)."""
        return blocks_text(self.json) if self.text else ""


def blocks_text(payload: dict[str, Any]) -> str:
    parts = []
    for block in payload.get("blocks") or []:
        if block.get("text"):
            parts.append(block["text"]["text"])
        for field in block.get("fields") or []:
            parts.append(field["text"])
        for element in block.get("elements") or []:
            if element.get("type") == "button":
                parts.append(f"[{element['text']['text']}]")
            elif "text" in element and isinstance(element["text"], str):
                parts.append(element["text"])
    return "\n".join(parts) if parts else str(payload.get("text", ""))


def buttons(payload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The buttons of a message or answer, by label."""
    found = {}
    for block in payload.get("blocks") or []:
        for element in block.get("elements") or []:
            if element.get("type") == "button":
                found[element["text"]["text"]] = element
    return found


def slash_fields(
    user: str, text: str, *, response_url: str, trigger: str | None = None
) -> dict[str, Any]:
    """A slash command as Slack sends it (form fields; Socket Mode carries them as JSON)."""
    return {
        "token": "verification-token-unused",
        "team_id": TEAM,
        "team_domain": "nbenv-test",
        "channel_id": CHANNEL,
        "channel_name": "nlp-images",
        "user_id": user,
        "user_name": user.lower(),
        "command": "/nbenv",
        "text": text,
        "api_app_id": "A0NBENVAPP",
        "is_enterprise_install": "false",
        "response_url": response_url,
        "trigger_id": trigger or f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
    }


class BotServer:
    """`nbenv serve` in its own process, pointed at a fake Slack Web API."""

    def __init__(
        self, *, config: Path, db_url: str, home: Path, slack: FakeSlackApi, **env: str
    ) -> None:
        self.config = config
        self.db_url = db_url
        self.home = home
        self.slack = slack
        self.extra_env = env
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = home / "serve.log"
        self.http = requests.Session()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "SLACK_SIGNING_SECRET": SECRET,
                "SLACK_BOT_TOKEN": TOKEN,
                "SLACK_API_URL": self.slack.base_url,
                "NBENV_CONFIG": str(self.config),
                "NBENV_DATABASE_URL": self.db_url,
                "NBENV_HOME": str(self.home),
                "PORT": str(self.port),
                **self.extra_env,
            }
        )
        return env

    def start(self) -> BotServer:
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "serve", "--host", "127.0.0.1", "--threads", "8"],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nbenv serve exited: {self.log.read_text()}")
            try:
                if self.http.get(f"{self.url}/healthz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"nbenv serve did not answer: {self.log.read_text()}")

    def stop(self, *, graceful: bool = False) -> int | None:
        """Stop the server; its exit status. Quick (SIGINT) unless GRACEFUL (SIGTERM, as
        Cloud Run stops it, which lets kept-alive connections linger for 2 s)."""
        code = None
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM if graceful else signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
            code = self.process.returncode
        self.process = None
        return code

    # -- raw requests ---------------------------------------------------------------------

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Answer:
        response = self.http.post(f"{self.url}{path}", data=body, headers=headers or {}, timeout=30)
        return Answer(response.status_code, response.text)

    def signed(
        self,
        body: bytes,
        *,
        content_type: str = "application/x-www-form-urlencoded",
        timestamp: int | None = None,
        secret: str = SECRET,
        retry: int | None = None,
    ) -> Answer:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        signature = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": signature,
        }
        if retry is not None:
            headers["X-Slack-Retry-Num"] = str(retry)
            headers["X-Slack-Retry-Reason"] = "http_timeout"
        return self.post("/slack/events", body, headers)

    # -- what Slack sends -----------------------------------------------------------------

    def slash_body(
        self, user: str, text: str, *, trigger: str | None = None, response_url: str = ""
    ) -> bytes:
        url = response_url or self.slack.response_url(f"r-{uuid.uuid4().hex}")
        return urlencode(slash_fields(user, text, response_url=url, trigger=trigger)).encode()

    def slash(self, user: str, text: str, **kwargs: Any) -> Answer:
        retry = kwargs.pop("retry", None)
        return self.signed(self.slash_body(user, text, **kwargs), retry=retry)

    def action(
        self,
        user: str,
        element: dict[str, Any],
        *,
        response_url: str,
        action_ts: str | None = None,
        message: Message | None = None,
        retry: int | None = None,
    ) -> Answer:
        payload = {
            "type": "block_actions",
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0NBENVAPP",
            "token": "verification-token-unused",
            "container": {
                "type": "message",
                "message_ts": message.ts if message else "1700000000.000100",
                "channel_id": message.channel if message else CHANNEL,
                "is_ephemeral": message is None,
            },
            "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
            "team": {"id": TEAM, "domain": "nbenv-test"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": CHANNEL, "name": "nlp-images"},
            "message": {"type": "message", "ts": message.ts, "text": message.text}
            if message
            else None,
            "state": {"values": {}},
            "response_url": response_url,
            "actions": [
                {
                    "action_id": element["action_id"],
                    "block_id": "b1",
                    "text": element["text"],
                    "value": element.get("value", ""),
                    "style": element.get("style"),
                    "type": "button",
                    "action_ts": action_ts or f"{time.time():.6f}",
                }
            ],
        }
        return self.signed(urlencode({"payload": json.dumps(payload)}).encode(), retry=retry)

    def submit(self, user: str, view: dict[str, Any], values: dict[str, Any]) -> Answer:
        submitted = dict(view)
        submitted["state"] = {"values": values}
        payload = {
            "type": "view_submission",
            "team": {"id": TEAM, "domain": "nbenv-test"},
            "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": TEAM},
            "api_app_id": "A0NBENVAPP",
            "token": "verification-token-unused",
            "trigger_id": f"{uuid.uuid4().int % 10**13}.1.{uuid.uuid4().hex}",
            "view": submitted,
            "response_urls": [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        return self.signed(urlencode({"payload": json.dumps(payload)}).encode())

    def event(self, event: dict[str, Any], *, retry: int | None = None) -> Answer:
        envelope = {
            "token": "verification-token-unused",
            "team_id": TEAM,
            "api_app_id": "A0NBENVAPP",
            "event": event,
            "type": "event_callback",
            "event_id": f"Ev{uuid.uuid4().hex[:10].upper()}",
            "event_time": int(time.time()),
            "authorizations": [{"team_id": TEAM, "user_id": "U0NBENVBOT", "is_bot": True}],
        }
        return self.signed(
            json.dumps(envelope).encode(), content_type="application/json", retry=retry
        )


def wait_until(predicate: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def channel_messages(slack: FakeSlackApi, containing: str, channel: str = CHANNEL) -> list[Message]:
    return [
        m
        for m in slack.messages(channel).values()
        if containing in blocks_text({"blocks": m.blocks, "text": m.text})
    ]


def wait_message(slack: FakeSlackApi, containing: str, timeout: float = 10.0) -> Message:
    found = wait_until(
        lambda: channel_messages(slack, containing), timeout, f"a message with {containing!r}"
    )
    return found[-1]


def response_payloads(slack: FakeSlackApi, url: str) -> list[dict[str, Any]]:
    name = url.rsplit("/response/", 1)[1]
    return [call.args for call in slack.calls(f"response_url:/response/{name}")]


def wait_response(slack: FakeSlackApi, url: str, count: int = 1, timeout: float = 10.0) -> dict:  # type: ignore[type-arg]
    name = url.rsplit("/response/", 1)[1]
    calls = slack.wait_for(f"response_url:/response/{name}", count, timeout)
    return calls[count - 1].args


def sha(image: str, label: str) -> str:
    return sha_of(f"{image}:{label}")


# -- arranging state through the service (the server sees it through the same database) ----


def published(rt: Any, image: str, label: str = "v1", *, passed: bool = True) -> str:
    commit = sha(image, label)
    if passed:
        rt.nbenv.publish(OWNER, image, commit, report=report(True), subject=f"commit {label}")
    else:
        rt.nbenv.record_version(OWNER, image, commit, report=report(False))
    return commit


def in_production(rt: Any, image: str, *labels: str) -> list[str]:
    """Each label published, approved and promoted in turn; their SHAs."""
    shas = []
    for label in labels:
        shas.append(published(rt, image, label))
        rt.nbenv.handle(TESTER, f"approve {image}")
        rt.nbenv.handle(OWNER, f"promote {image}")
    return shas


def audit(rt: Any, image: str) -> list[Any]:
    with rt.store.read() as tx:
        return tx.audit.entries(image=image)


def pointers(rt: Any, image: str) -> dict[str, str | None]:
    with rt.store.read() as tx:
        state = tx.pointers.state(image)
    from bot.domain.names import Env

    return {env.value: state.sha(env) for env in Env}


def ask(server: BotServer, slack: FakeSlackApi, user: str, text: str) -> str:
    """`/nbenv TEXT` as USER: what they end up seeing — the ack's answer, or (after an
    empty or "⏳" ack) the answer posted to the response_url."""
    url = slack.response_url(f"ask-{uuid.uuid4().hex}")
    answer = server.slash(user, text, response_url=url)
    assert answer.status == 200
    if answer.shown and not answer.shown.startswith("⏳"):
        assert answer.json["response_type"] == "ephemeral"
        return answer.shown
    reply = wait_response(slack, url)
    assert reply["response_type"] == "ephemeral"
    return blocks_text(reply)


def home_text(server: BotServer, slack: FakeSlackApi, user: str) -> str:
    """The App Home USER sees, as text, after opening it (a signed app_home_opened)."""
    before = len(slack.calls("views.publish"))
    event = {"type": "app_home_opened", "user": user, "tab": "home", "event_ts": "1.0"}
    assert server.event(event).status == 200
    slack.wait_for("views.publish", before + 1)
    return blocks_text(slack.home_view(user) or {})
