"""Hostile and careless requests against `nbenv serve`, over real HTTP: too big, too slow,
oddly signed, malformed. Each is turned down with a 4xx and one log line, fast, changing
nothing, and the server keeps answering everyone else."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from slack_sdk.signature import SignatureVerifier

from bot.domain.command_table import MAX_COMMAND
from bot.domain.commands import MAX_REASON
from tests.conftest import OWNER, TESTER
from tests.slack.bot import (
    SECRET,
    TEAM,
    BotServer,
    audit,
    buttons,
    published,
    wait_message,
    wait_response,
)
from tests.support.slack_api import FakeSlackApi

MAX_BODY = 1024 * 1024
READ_TIMEOUT_S = 2  # this module's server: a request must arrive whole within 2 s


@pytest.fixture(scope="module")
def server(
    config_path: Path, database: str, workdir: Path, slack: FakeSlackApi
) -> Iterator[BotServer]:
    """`nbenv serve` as in the other modules, with a short read timeout to test it."""
    bot = BotServer(
        config=config_path,
        db_url=database,
        home=workdir / "home",
        slack=slack,
        NBENV_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
    )
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


class ServerLog:
    """What `nbenv serve` logged since a point."""

    def __init__(self, server: BotServer) -> None:
        self.server = server
        self.start = server.log.stat().st_size

    def since(self) -> str:
        with self.server.log.open("rb") as log:
            log.seek(self.start)
            return log.read().decode(errors="replace")


def _signed_headers(body: bytes, content_type: str, timestamp: str | None = None) -> dict:
    ts = timestamp or str(int(time.time()))
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": SignatureVerifier(SECRET).generate_signature(timestamp=ts, body=body),
    }


def _raw_exchange(server: BotServer, head: bytes, body_part: bytes, timeout: float) -> bytes:
    """Send HEAD and only BODY_PART of the body it announces; what the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as conn:
        conn.sendall(head + body_part)
        answer = b""
        try:
            while b"\r\n\r\n" not in answer:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                answer += chunk
        except TimeoutError:
            pass
        return answer


# -- size ------------------------------------------------------------------------------------


def test_a_huge_body_is_refused_with_413_before_it_is_read(server: BotServer) -> None:
    """A 10 MB body announced, 1 KB sent: the answer comes at once, not after the rest."""
    ts = str(int(time.time()))
    head = (
        "POST /slack/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"X-Slack-Request-Timestamp: {ts}\r\n"
        "X-Slack-Signature: v0=" + "0" * 64 + "\r\n"
        "Content-Length: 10000000\r\n\r\n"
    ).encode()

    answer = _raw_exchange(server, head, b"text=" + b"a" * 1024, timeout=5)

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_signed_body_over_the_cap_is_413_and_changes_nothing(
    server: BotServer, rt, image: str
) -> None:  # type: ignore[no-untyped-def]
    body = server.slash_body(OWNER, f"freeze {image} " + "x" * MAX_BODY)
    before = audit(rt, image)

    answer = server.post(
        "/slack/events", body, _signed_headers(body, "application/x-www-form-urlencoded")
    )

    assert answer.status == 413
    assert audit(rt, image) == before


def test_a_command_over_the_limit_gets_a_clear_private_refusal(
    server: BotServer, rt, image: str
) -> None:  # type: ignore[no-untyped-def]
    answer = server.slash(OWNER, f"freeze {image} " + "x" * MAX_COMMAND)

    assert answer.status == 200
    assert answer.json["response_type"] == "ephemeral"
    assert f"at most {MAX_COMMAND:,}" in answer.shown
    assert audit(rt, image) == []


def test_a_typed_reason_over_the_dialogs_limit_is_refused(
    server: BotServer, rt, image: str
) -> None:  # type: ignore[no-untyped-def]
    answer = server.slash(OWNER, f"freeze {image} " + "x" * (MAX_REASON + 1))

    assert answer.status == 200
    assert f"at most {MAX_REASON:,}" in answer.shown
    assert audit(rt, image) == []


def test_the_reject_dialogs_limit_holds_on_the_server(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    """The dialog's max_length is Slack's check, in the person's browser; a forged
    submission must meet the same limit here."""
    commit = published(rt, image)
    root = wait_message(slack, f"now in staging for {image}")
    reject = buttons({"blocks": root.blocks})["Reject"]
    opened = len(slack.calls("views.open"))
    url = slack.response_url(f"reject-long-{image}")
    assert server.action(TESTER, reject, response_url=url, message=root).status == 200
    dialog = slack.wait_for("views.open", opened + 1)[-1].response["view"]
    assert json.loads(dialog["private_metadata"])["image"] == image
    values = {"reason": {"reason_input": {"value": "r" * (MAX_REASON + 1)}}}

    answer = server.submit(TESTER, dialog, values)

    assert answer.status == 200
    assert answer.json["response_action"] == "errors"
    assert f"at most {MAX_REASON:,}" in answer.json["errors"]["reason"]
    with rt.store.read() as tx:
        assert tx.approvals.standing(image, commit) == []


# -- the signature's timestamp -----------------------------------------------------------------


def _header_bytes(value: str) -> bytes:
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode()


@pytest.mark.parametrize(
    "timestamp",
    ["²", "¹²³", "9" * 400, "１７００００００００", "+1700000000", "1e9", ""],
    ids=[
        "superscript two",
        "superscript digits",
        "400 digits",
        "fullwidth",
        "plus",
        "1e9",
        "empty",
    ],
)
def test_a_timestamp_that_is_not_plain_digits_is_401_not_a_crash(
    server: BotServer, rt, image: str, timestamp: str
) -> None:  # type: ignore[no-untyped-def]
    body = server.slash_body(OWNER, f"freeze {image} maintenance")
    log = ServerLog(server)
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        # As the bytes reach the server: HTTP headers are Latin-1 (`²` is one byte, 0xB2);
        # what Latin-1 cannot hold travels as UTF-8.
        "X-Slack-Request-Timestamp": _header_bytes(timestamp),
        "X-Slack-Signature": "v0=" + "0" * 64,
    }

    answer = server.post("/slack/events", body, headers)

    assert answer.status == 401
    assert "Traceback" not in log.since()
    assert audit(rt, image) == []


# -- malformed but signed ----------------------------------------------------------------------


def _form(payload: object) -> bytes:
    return urlencode(
        {"payload": payload if isinstance(payload, str) else json.dumps(payload)}
    ).encode()


def _event(event: object) -> bytes:
    envelope = {
        "token": "unused",
        "team_id": TEAM,
        "api_app_id": "A0NBENVAPP",
        "event": event,
        "type": "event_callback",
        "event_id": "Ev0BADEVENT1",
        "event_time": int(time.time()),
    }
    return json.dumps(envelope).encode()


BLOCK_ACTIONS = {
    "type": "block_actions",
    "team": {"id": TEAM},
    "trigger_id": "1.2.3",
    "response_url": "",
    "actions": [{"action_id": "nbenv_approve", "value": "{}", "action_ts": "1.2"}],
}
MALFORMED = {
    "payload not JSON": (_form("{not json"), "application/x-www-form-urlencoded"),
    "payload a list": (_form([{"type": "block_actions"}]), "application/x-www-form-urlencoded"),
    "payload a string": (_form('"block_actions"'), "application/x-www-form-urlencoded"),
    "payload nested deep": (_form("[" * 100_000), "application/x-www-form-urlencoded"),
    "block_actions without user": (_form(BLOCK_ACTIONS), "application/x-www-form-urlencoded"),
    "block_actions with a user that is a string": (
        _form({**BLOCK_ACTIONS, "user": OWNER}),
        "application/x-www-form-urlencoded",
    ),
    "block_actions with actions not a list": (
        _form({**BLOCK_ACTIONS, "user": {"id": OWNER}, "actions": "approve"}),
        "application/x-www-form-urlencoded",
    ),
    "view_submission without user": (
        _form({"type": "view_submission", "view": {"callback_id": "nbenv_reject_dialog"}}),
        "application/x-www-form-urlencoded",
    ),
    "event without user": (_event({"type": "app_home_opened", "tab": "home"}), "application/json"),
    "event that is a list": (_event(["app_home_opened"]), "application/json"),
    "JSON that is a list": (b"[1, 2]", "application/json"),
    "form body sent as JSON": (
        urlencode({"command": "/nbenv", "text": "help", "user_id": OWNER}).encode(),
        "application/json",
    ),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_a_signed_malformed_request_is_400_with_one_log_line(
    server: BotServer, rt, image: str, case: str
) -> None:  # type: ignore[no-untyped-def]
    body, content_type = MALFORMED[case]
    log = ServerLog(server)
    before = audit(rt, image)

    answer = server.post("/slack/events", body, _signed_headers(body, content_type))

    assert answer.status == 400, answer.text
    logged = log.since()
    assert "Traceback" not in logged
    assert len(logged.strip().splitlines()) == 1, logged
    assert audit(rt, image) == before


def test_a_confirm_button_naming_an_unknown_environment_changes_nothing(
    server: BotServer, rt, image: str, slack: FakeSlackApi
) -> None:  # type: ignore[no-untyped-def]
    published(rt, image)
    before = audit(rt, image)
    log = ServerLog(server)
    value = {
        "image": image,
        "cmd": {"name": "promote", "image": image, "env": "qa", "confirmed": True},
        "expect": {"staging": 1},
    }
    confirm = {
        "action_id": "nbenv_confirm",
        "text": {"type": "plain_text", "text": "Confirm"},
        "value": json.dumps(value),
    }
    url = slack.response_url(f"confirm-qa-{image}")

    answer = server.action(OWNER, confirm, response_url=url)

    # Like every forged button value: the press is acked, and the person is told privately.
    assert answer.status == 200
    # A promote takes no environment: the forged field is named, nothing else is read.
    assert "'env', which promote does not take" in wait_response(slack, url)["text"]
    assert "Traceback" not in log.since()
    assert audit(rt, image) == before


# -- slow clients ------------------------------------------------------------------------------


@pytest.fixture
def tricklers(server: BotServer) -> Iterator[list[socket.socket]]:
    """40 clients that send a request one byte every 0.2 s (never finishing in the test)."""
    stop = threading.Event()
    conns: list[socket.socket] = []
    body = b"text=" + b"a" * 200
    head = (
        "POST /slack/events HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(40):
        conn = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        conn.sendall(head[:20])  # the request has begun: the server is committed to it
        conns.append(conn)

    def trickle() -> None:
        rest = head[20:] + body
        at = 0
        while not stop.wait(0.2) and at < len(rest):
            for conn in conns:
                with contextlib.suppress(OSError):  # the server may have hung up
                    conn.sendall(rest[at : at + 1])
            at += 1

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    try:
        yield conns
    finally:
        stop.set()
        thread.join(5)
        for conn in conns:
            conn.close()


def _trickle(server: BotServer, request: bytes, pause_s: float, pieces: int) -> bytes:
    """REQUEST sent in PIECES with PAUSE_S between them, until the server answers or hangs
    up; the first line of its answer (b"" when it hung up without one)."""
    size = -(-len(request) // pieces)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        for at in range(0, len(request), size):
            conn.sendall(request[at : at + size])
            readable, _, _ = select.select([conn], [], [], pause_s)
            if readable:  # an answer, or the end of the connection
                break
        answer = b""
        with contextlib.suppress(OSError):
            while b"\r\n" not in answer and (chunk := conn.recv(4096)):
                answer += chunk
    return answer.split(b"\r\n", 1)[0]


def _healthz_request(server: BotServer) -> bytes:
    return f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()


def test_a_slow_but_complete_request_is_served(server: BotServer) -> None:
    assert _trickle(server, _healthz_request(server), 0.1, 8) == b"HTTP/1.1 200 OK"


def test_a_request_that_does_not_arrive_in_time_is_dropped(server: BotServer) -> None:
    started = time.monotonic()

    first_line = _trickle(server, _healthz_request(server), 0.5, 12)  # would take 6 s

    assert first_line in (b"HTTP/1.1 408 Request Timeout", b"")
    assert time.monotonic() - started < READ_TIMEOUT_S + 2 + 0.5


def test_slow_clients_do_not_keep_the_health_check_waiting(
    server: BotServer, tricklers: list[socket.socket]
) -> None:
    time.sleep(0.5)  # every trickling request has reached the server and begun to arrive
    started = time.monotonic()

    response = server.http.get(f"{server.url}/healthz", timeout=20)

    assert response.status_code == 200
    assert time.monotonic() - started < 2.0


def _signed_head(server: BotServer, body: bytes, *extra: str) -> bytes:
    lines = [
        "POST /slack/events HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        *(
            f"{k}: {v}"
            for k, v in _signed_headers(body, "application/x-www-form-urlencoded").items()
        ),
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_a_client_that_waits_for_100_continue_is_told_to_go_on(server: BotServer) -> None:
    body = server.slash_body(OWNER, "help")
    head = _signed_head(server, body, f"Content-Length: {len(body)}", "Expect: 100-continue")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(head)
        assert conn.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        conn.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := conn.recv(4096)):
            answer += chunk
    assert b"HTTP/1.1 200" in answer


def test_a_chunked_request_is_served_once_its_last_chunk_arrives(server: BotServer) -> None:
    body = server.slash_body(OWNER, "help")
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[at : at + 100]), body[at : at + 100])
        for at in range(0, len(body), 100)
    )
    request = _signed_head(server, body, "Transfer-Encoding: chunked") + chunks + b"0\r\n\r\n"

    assert _trickle(server, request, 0.05, 6) == b"HTTP/1.1 200 OK"
