"""Delivery goes through one public seam, `bot.slack.outbox.Transport`: Slack's Web API
and the console (`nbenv shell`) both implement it, and nothing overrides the sender's
private methods to deliver elsewhere."""

from __future__ import annotations

import io
from typing import Any

from bot.slack.outbox import OutboxSender
from bot.slack.shell import ConsoleTransport, Shell
from bot.slack.transport import Transport, WebApiTransport
from tests.conftest import OWNER


class _Recorder:
    """A transport of a test's own: what the outbox sends, in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        self.sent.append((method, payload))
        return {"ok": True, "channel": payload.get("channel"), "ts": f"{len(self.sent)}.000100"}

    def find_posted(self, channel: str, thread_ts: str | None, key: str) -> dict[str, Any] | None:
        return None

    def check(self) -> None:
        return None


def _queue(runtime: Any, key: str, text: str) -> None:
    with runtime.store.write(audited=False) as tx:
        tx.outbox.enqueue(key, "chat.postMessage", {"channel": "C01NLP", "text": text})


def test_the_console_delivers_through_the_public_transport(runtime: Any) -> None:
    out = io.StringIO()
    shell = Shell(runtime, out, OWNER)
    _queue(runtime, "console:1", "hello from the outbox")

    shell.settle()

    assert "#C01NLP (1) hello from the outbox" in out.getvalue()
    assert type(shell.sender) is OutboxSender  # no subclass overriding its insides
    assert isinstance(shell.sender.transport, ConsoleTransport)
    assert isinstance(shell.sender.transport, Transport)


def test_any_transport_can_deliver_the_outbox(runtime: Any) -> None:
    recorder = _Recorder()
    sender = OutboxSender(runtime.store, recorder, pace=None)
    _queue(runtime, "mine:1", "first")
    _queue(runtime, "mine:2", "second")

    assert sender.drain(timeout_s=5) == 0

    assert [(m, p["text"]) for m, p in recorder.sent] == [
        ("chat.postMessage", "first"),
        ("chat.postMessage", "second"),
    ]
    assert recorder.sent[0][1]["metadata"]["event_payload"] == {"key": "mine:1"}
    assert isinstance(WebApiTransport.__new__(WebApiTransport), Transport)
