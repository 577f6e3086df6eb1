"""gunicorn's threaded worker, but a request reaches a thread only once it has arrived.

gunicorn's gthread worker hands a connection to a request thread as soon as its first
byte arrives; the thread then reads the rest of the request. A client that trickles its
request a byte at a time holds that thread for as long as it likes: 40 of them froze
`/healthz` for 30 s. Here the worker's event loop collects each request — headers and
body — without blocking, as Cloud Run's front end does before the request reaches the
container, and hands it to a thread only when it is complete:

* a request that is not complete `read_timeout_s` after it began is answered 408 and
  closed, and a slow client never holds a thread;
* a body announced over MAX_BODY is not collected: the request goes straight to the app,
  which refuses it (413) without reading, and the connection is closed after the answer.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import time
from collections import OrderedDict
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

from bot.slack.inbound import MAX_BODY

MAX_HEAD = 64 * 1024  # bytes of request line and headers (gunicorn's own limits are lower)
_RECV = 64 * 1024
_CONTENT_LENGTH = re.compile(rb"^content-length[ \t]*:[ \t]*([0-9]{1,19})[ \t]*$", re.I | re.M)
_CHUNKED = re.compile(rb"^transfer-encoding[ \t]*:.*chunked", re.I | re.M)
_EXPECT_CONTINUE = re.compile(rb"^expect[ \t]*:[ \t]*100-continue[ \t]*$", re.I | re.M)
# The last chunk and the (optional) trailers that end a chunked body; looked for only in
# the last _TAIL bytes, so that each look costs the same however long the body.
_LAST_CHUNK = re.compile(rb"(?:^|\r\n)0[ \t]*(?:;[^\r\n]*)?\r\n(?:[^\r\n]+\r\n)*\r\n\Z")
_TAIL = 1024


class Arrival:
    """The bytes of one request so far, and whether they make a whole request."""

    def __init__(self, already: bytes, deadline: float) -> None:
        self.data = bytearray(already)
        self.deadline = deadline
        self.oversized = False  # announced a body over MAX_BODY: close after the answer
        self.continued = False  # "100 Continue" sent
        self.wants_continue = False  # the client waits for "100 Continue" to send the body
        self._body_start: int | None = None  # where the body begins, once the head is in
        self._length: int | None = None  # the announced Content-Length
        self._chunked = False

    def complete(self) -> bool:
        if self._body_start is None and not self._read_head():
            return len(self.data) > MAX_HEAD  # gunicorn turns that down (400)
        assert self._body_start is not None
        body = len(self.data) - self._body_start
        if self._chunked:
            # The last chunk ends it; a body over the cap goes on, to be refused (413).
            tail = bytes(self.data[max(self._body_start, len(self.data) - _TAIL) :])
            return body > MAX_BODY or _LAST_CHUNK.search(tail) is not None
        if self._length is None:
            return True  # no body, or a malformed length that gunicorn turns down
        if self._length > MAX_BODY:
            self.oversized = True
            return True
        return body >= self._length

    def _read_head(self) -> bool:
        """Whether the head (request line and headers) is all here; if so, what it says."""
        head_end = self.data.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
        if head_end < 0:
            return False
        head = bytes(self.data[:head_end])
        self._body_start = head_end + 4
        self._chunked = _CHUNKED.search(head) is not None
        lengths = _CONTENT_LENGTH.findall(head)
        self._length = int(lengths[0]) if len(lengths) == 1 else None
        self.wants_continue = _EXPECT_CONTINUE.search(head) is not None
        return True


class RequestBufferingWorker(ThreadWorker):  # type: ignore[misc]
    """gthread whose event loop collects whole requests before a thread serves them."""

    read_timeout_s = 10.0
    """Seconds a client has to send a whole request (headers and body, at most 1 MB):
    ample for Slack and Pub/Sub, which send small requests from fast networks
    (`nbenv serve --read-timeout`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.arriving: OrderedDict[Any, Arrival] = OrderedDict()  # oldest deadline first

    def enqueue_req(self, conn: Any) -> None:
        """Every way a connection goes to a thread (new, kept alive, pipelined) passes here:
        it goes on only with a whole request."""
        if self.cfg.is_ssl or getattr(conn, "nbenv_arrived", None) is not None:
            super().enqueue_req(conn)
            return
        already = conn.parser.unreader.take_buffered() if conn.parser is not None else b""
        arrival = Arrival(already, time.monotonic() + self.read_timeout_s)
        if already and arrival.complete():  # pipelined behind the last request
            self._hand_over(conn, arrival)
            return
        conn.sock.setblocking(False)
        # Usually the whole request is already here (the poller saw the connection
        # readable): read it now rather than on the next turn of the event loop.
        if self._receive(conn, arrival, registered=False):
            self.arriving[conn] = arrival
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _readable(self, conn: Any, _sock: Any) -> None:
        self._receive(conn, self.arriving[conn], registered=True)

    def _receive(self, conn: Any, arrival: Arrival, *, registered: bool) -> bool:
        """Read what CONN has sent without waiting: whether its request is still arriving
        (when not, it was handed over or the connection closed, and, if REGISTERED, is no
        longer watched by the poller)."""
        try:
            data = conn.sock.recv(_RECV)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:  # the client went away
            if registered:
                self._forget(conn)
            self.nr_conns -= 1
            conn.close()
            return False
        arrival.data += data
        if arrival.complete():
            if registered:
                self._forget(conn)
            self._hand_over(conn, arrival)
            return False
        if arrival.wants_continue and not arrival.continued:
            arrival.continued = True
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _hand_over(self, conn: Any, arrival: Arrival) -> None:
        conn.nbenv_arrived = arrival
        conn.data_ready = True  # no need to wait for a first byte in the thread
        super().enqueue_req(conn)

    def _forget(self, conn: Any) -> None:
        del self.arriving[conn]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.poller.unregister(conn.sock)

    def handle(self, conn: Any) -> Any:
        """In a request thread: the request's bytes are all here; serve them."""
        arrival: Arrival | None = conn.__dict__.pop("nbenv_arrived", None)
        if arrival is not None:
            conn.sock.setblocking(True)
            conn.init()
            conn.parser.unreader.unread(bytes(arrival.data))
            conn.nbenv_oversized = arrival.oversized
        return super().handle(conn)

    def handle_request(self, req: Any, conn: Any) -> bool:
        if conn.__dict__.pop("nbenv_oversized", False):
            # The body it announced is never read (the app says 413 at once): close the
            # connection after the answer rather than read that body to reuse it.
            req.must_close = True
        return bool(super().handle_request(req, conn))

    def murder_pending(self) -> None:
        """Called on every turn of the event loop: drop requests past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        while self.arriving:
            conn, arrival = next(iter(self.arriving.items()))
            if arrival.deadline > now:
                break
            self._forget(conn)
            self.nr_conns -= 1
            with contextlib.suppress(OSError):
                conn.sock.send(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n")
            conn.close()
