"""A fake of Slack's Socket Mode service: the WebSocket end of `nbenv socket`.

It speaks the protocol Slack documents (api.slack.com/apis/socket-mode,
api.slack.com/apis/connections/socket-implement) with envelopes shaped like those
slack_sdk's own tests replay::

    with FakeSlackApi() as slack, FakeSocketMode(slack) as socket_mode:
        # the app calls apps.connections.open (app-level token) and gets a ws:// URL here
        socket_mode.wait_connected()
        delivery = socket_mode.send("slash_commands", {...})
        ack = socket_mode.wait_ack(delivery)      # {"envelope_id": ..., "payload": {...}}

What it does, as Slack does:

* each connection opens with ``hello``; only URLs given out by apps.connections.open
  (a fresh ticket each call) are accepted, others get HTTP 401 at the handshake;
* an envelope is ``{"envelope_id", "type", "payload", "accepts_response_payload"}`` and,
  for ``events_api``, ``retry_attempt`` / ``retry_reason``. It goes to the newest open
  connection; while none is open it waits for one (Slack buffers across reconnects);
* the app acknowledges with ``{"envelope_id": ..., "payload": {...}}`` (payload optional)
  within ACK_DEADLINE_S (3 s). An ack that comes later, or never, counts as missing;
  a message that is not JSON, not an object, names no envelope, names one never sent
  or already acknowledged, or carries a non-object payload is refused and recorded in
  `refused` (Slack ignores it: the envelope stays unacknowledged);
* an ``events_api`` envelope left unacknowledged is delivered again, at most
  MAX_RETRIES times, with ``retry_attempt`` + 1 and ``retry_reason: "timeout"``, under
  a new envelope_id (so a late ack of the first attempt cannot pass for the retry's).
  Slack does not retry slash commands or interactions by itself; `redeliver()` sends
  one again on demand, as a payload that was in flight when its connection dropped;
* ``disconnect`` (``refresh_requested``, ``warning``, ``link_disabled``) is sent by
  `disconnect()`; nothing more goes out on that connection (acks are still taken on any
  connection, by envelope_id); `drop()` closes the TCP connection with no close frame, as a network
  failure does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from .lifecycle import Startable
from .slack_api import APP_ID, FakeSlackApi

__all__ = ["ACK_DEADLINE_S", "Delivery", "FakeSocketMode", "Refused"]

ACK_DEADLINE_S = 3.0  # Slack: acknowledge each envelope within 3 seconds
MAX_RETRIES = 3  # Events API: the first delivery and up to three retries
MAX_MESSAGE_BYTES = 1 << 20
_WATCHDOG_TICK_S = 0.05

Payload = dict[str, Any]


@dataclass
class Delivery:
    """One envelope sent to the app, and its ack (if any arrived)."""

    envelope_id: str
    kind: str
    payload: Payload
    retry_attempt: int
    connection: int  # which connection (0, 1, …) it went out on
    sent_at: float
    ack: Payload | None = None
    acked_at: float | None = None
    late_acks: list[Payload] = field(default_factory=list)
    missed: bool = False  # its deadline passed with no ack
    redelivered_as: str | None = None

    @property
    def ack_delay_s(self) -> float | None:
        return None if self.acked_at is None else self.acked_at - self.sent_at

    @property
    def response(self) -> Payload | None:
        """What the app answered in its ack (a slash command's ephemeral message)."""
        return None if self.ack is None else self.ack.get("payload")


@dataclass(frozen=True)
class Refused:
    """A message from the app that Slack would not take as an ack, and why."""

    text: str
    reason: str


@dataclass
class _Connection:
    number: int
    websocket: ServerConnection
    open: bool = True
    told_to_disconnect: bool = False  # Slack sends nothing more on it


class FakeSocketMode(Startable):
    """Slack's Socket Mode WebSocket service on loopback, fed by SLACK's
    apps.connections.open."""

    def __init__(
        self,
        slack: FakeSlackApi,
        *,
        ack_deadline_s: float = ACK_DEADLINE_S,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.slack = slack
        self.ack_deadline_s = ack_deadline_s
        self.max_retries = max_retries
        self._cond = threading.Condition(threading.RLock())
        self._tickets: set[str] = set()
        self._connections: list[_Connection] = []
        self._deliveries: dict[str, Delivery] = {}
        self._refused: list[Refused] = []
        self._handshakes_refused = 0
        self._server: Server | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._stopping = False
        self._server = serve(
            self._serve_connection,
            "127.0.0.1",
            0,
            process_request=self._check_ticket,
            compression=None,
            max_size=MAX_MESSAGE_BYTES,
            ping_interval=None,  # the app pings; Slack answers (websockets does)
            server_header="FakeSlackSocketMode/1.0",
        )
        self._threads = [
            threading.Thread(
                target=self._server.serve_forever, name="fake-socket-mode", daemon=True
            ),
            threading.Thread(
                target=self._watch_deadlines, name="fake-socket-mode-acks", daemon=True
            ),
        ]
        for thread in self._threads:
            thread.start()
        self.slack.serve_socket_mode(self.new_url)
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        self.slack.serve_socket_mode(None)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            connections = [c for c in self._connections if c.open]
        for connection in connections:
            connection.websocket.close_socket()
        server.shutdown()
        for thread in self._threads:
            thread.join(timeout=5)
        self._server = None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeSocketMode is not started")
        return int(self._server.socket.getsockname()[1])

    def new_url(self) -> str:
        """What apps.connections.open answers: a WebSocket URL with a fresh ticket."""
        ticket = uuid.uuid4().hex
        with self._cond:
            self._tickets.add(ticket)
        return f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"

    # -- what Slack sends -------------------------------------------------------------

    def send(
        self,
        kind: str,
        payload: Payload,
        *,
        retry_attempt: int = 0,
        retry_reason: str = "",
        wait_s: float = 15.0,
        again_of: Delivery | None = None,
    ) -> Delivery:
        """Send PAYLOAD in an envelope of KIND (``slash_commands``, ``interactive``,
        ``events_api``) on the newest open connection, waiting up to WAIT_S for one."""
        envelope_id = str(uuid.uuid4())
        envelope: Payload = {
            "envelope_id": envelope_id,
            "payload": payload,
            "type": kind,
            # Slack takes a response payload in the ack for slash commands and for
            # view submissions / block suggestions; not for events or button presses.
            "accepts_response_payload": kind == "slash_commands"
            or (kind == "interactive" and payload.get("type") == "view_submission"),
        }
        if kind == "events_api":
            envelope["retry_attempt"] = retry_attempt
            envelope["retry_reason"] = retry_reason
        with self._cond:
            connection = self._newest_open(wait_s)
            delivery = Delivery(
                envelope_id=envelope_id,
                kind=kind,
                payload=payload,
                retry_attempt=retry_attempt,
                connection=connection.number,
                sent_at=time.monotonic(),
            )
            self._deliveries[envelope_id] = delivery
            if again_of is not None:
                again_of.redelivered_as = envelope_id
            # Lost with the connection, it stays unacknowledged past its deadline.
            with contextlib.suppress(ConnectionClosed):
                connection.websocket.send(json.dumps(envelope))
        return delivery

    def redeliver(self, delivery: Delivery, reason: str = "timeout") -> Delivery:
        """Send DELIVERY's payload again, as Slack retries it: a new envelope_id,
        retry_attempt + 1."""
        return self.send(
            delivery.kind,
            delivery.payload,
            retry_attempt=delivery.retry_attempt + 1,
            retry_reason=reason,
            again_of=delivery,
        )

    def disconnect(self, reason: str = "refresh_requested") -> int:
        """Tell the app on the newest connection to reconnect; that connection's number.
        Slack keeps the old connection open a little while: the app closes it."""
        message = {"type": "disconnect", "reason": reason, "debug_info": {"host": "fake-wss"}}
        with self._cond:
            connection = self._newest_open(5.0)
            connection.told_to_disconnect = True
            connection.websocket.send(json.dumps(message))
        return connection.number

    def drop(self) -> int:
        """Cut the newest connection at the TCP level (no close frame); its number."""
        with self._cond:
            connection = self._newest_open(5.0)
            connection.open = False
        connection.websocket.close_socket()
        return connection.number

    # -- inspection -------------------------------------------------------------------

    @property
    def connections_opened(self) -> int:
        with self._cond:
            return len(self._connections)

    def open_connections(self) -> list[int]:
        with self._cond:
            return [c.number for c in self._connections if c.open]

    def wait_connected(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until COUNT connections were opened in all and one is open now."""

        def ready() -> bool:
            return len(self._connections) >= count and any(c.open for c in self._connections)

        self._wait(ready, timeout, f"{count} Socket Mode connection(s)")

    def wait_closed(self, number: int, timeout: float = 15.0) -> None:
        self._wait(
            lambda: not self._connections[number].open, timeout, f"connection {number} to close"
        )

    def wait_ack(self, delivery: Delivery, timeout: float = 10.0) -> Payload:
        """The ack of DELIVERY once it arrives (AssertionError if it never does)."""
        self._wait(lambda: delivery.ack is not None, timeout, f"an ack of {delivery.envelope_id}")
        assert delivery.ack is not None
        return delivery.ack

    def deliveries(self, kind: str | None = None) -> list[Delivery]:
        with self._cond:
            return [d for d in self._deliveries.values() if kind is None or d.kind == kind]

    def retries_of(self, delivery: Delivery) -> list[Delivery]:
        """The redeliveries that followed DELIVERY, in order."""
        found = []
        with self._cond:
            current = delivery
            while current.redelivered_as is not None:
                current = self._deliveries[current.redelivered_as]
                found.append(current)
        return found

    def wait_refused(self, count: int, timeout: float = 5.0) -> list[Refused]:
        self._wait(lambda: len(self._refused) >= count, timeout, f"{count} refused messages")
        return self.refused

    @property
    def refused(self) -> list[Refused]:
        with self._cond:
            return list(self._refused)

    @property
    def handshakes_refused(self) -> int:
        with self._cond:
            return self._handshakes_refused

    # -- server side ------------------------------------------------------------------

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
                self._cond.wait(left)

    def _newest_open(self, wait_s: float) -> _Connection:
        def usable() -> list[_Connection]:
            return [c for c in self._connections if c.open and not c.told_to_disconnect]

        self._wait(
            lambda: self._stopping or bool(usable()), wait_s, "an open Socket Mode connection"
        )
        if self._stopping:
            raise RuntimeError("FakeSocketMode is stopping")
        return usable()[-1]

    def _check_ticket(self, websocket: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        ticket = (parse_qs(parts.query).get("ticket") or [""])[0]
        with self._cond:
            known = parts.path == "/link/" and ticket in self._tickets
            if known:
                return None
            self._handshakes_refused += 1
        return websocket.respond(HTTPStatus.UNAUTHORIZED, "invalid ticket\n")

    def _serve_connection(self, websocket: ServerConnection) -> None:
        with self._cond:
            connection = _Connection(len(self._connections), websocket)
            self._connections.append(connection)
            open_now = sum(c.open for c in self._connections)
            hello = {
                "type": "hello",
                "num_connections": open_now,
                "debug_info": {
                    "host": "fake-wss",
                    "build_number": 1,
                    "approximate_connection_time": 18060,
                },
                "connection_info": {"app_id": APP_ID},
            }
            websocket.send(json.dumps(hello))
            self._cond.notify_all()
        try:
            for message in websocket:
                self._receive(message)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                connection.open = False
                self._cond.notify_all()

    def _receive(self, message: str | bytes) -> None:
        now = time.monotonic()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        try:
            ack = json.loads(text)
        except ValueError:
            self._refuse(text, "not JSON")
            return
        if not isinstance(ack, dict) or not isinstance(ack.get("envelope_id"), str):
            self._refuse(text, "no envelope_id")
            return
        if "payload" in ack and not isinstance(ack["payload"], dict):
            self._refuse(text, "payload is not an object")
            return
        with self._cond:
            delivery = self._deliveries.get(ack["envelope_id"])
            if delivery is None:
                self._refuse(text, "unknown envelope_id")
            elif delivery.ack is not None:
                self._refuse(text, "envelope already acknowledged")
            elif now - delivery.sent_at > self.ack_deadline_s:
                delivery.late_acks.append(ack)
                self._refuse(text, "too late")
            else:
                delivery.ack = ack
                delivery.acked_at = now
            self._cond.notify_all()

    def _refuse(self, text: str, reason: str) -> None:
        with self._cond:
            self._refused.append(Refused(text[:2000], reason))
            self._cond.notify_all()

    def _watch_deadlines(self) -> None:
        """Mark envelopes whose deadline passed unacknowledged; redeliver events."""
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = time.monotonic()
                overdue = [
                    d
                    for d in self._deliveries.values()
                    if d.ack is None and not d.missed and now - d.sent_at > self.ack_deadline_s
                ]
                for delivery in overdue:
                    delivery.missed = True
                if overdue:
                    self._cond.notify_all()
                self._cond.wait(_WATCHDOG_TICK_S)
            for delivery in overdue:
                if delivery.kind == "events_api" and delivery.retry_attempt < self.max_retries:
                    try:
                        self.redeliver(delivery)
                    except (RuntimeError, AssertionError):
                        return  # stopping, or the app never came back
