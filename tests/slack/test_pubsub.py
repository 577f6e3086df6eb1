"""`POST /pubsub/jobs`: Pub/Sub push with an OIDC token. Tokens are signed by a test key
whose certificate a local server publishes the way Google's certs endpoint does; the
bot fetches it from there (NBENV_OIDC_CERTS_URL) and verifies signature, expiry,
issuer, audience and the push service account."""

from __future__ import annotations

import base64
import datetime as dt
import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from tests.conftest import OWNER, TESTER
from tests.slack.bot import (
    BotServer,
    audit,
    blocks_text,
    config_text,
    pointers,
    published,
    wait_response,
)
from tests.support.slack_api import FakeSlackApi

AUDIENCE = "https://nbenv.example.com/pubsub/jobs"
PUSHER = "nbenv-push@test-project.iam.gserviceaccount.com"
GCP = f"""
gcp:
  project: test-project
  registry: us-docker.pkg.dev/test-project/notebooks
  jobs_audience: {AUDIENCE}
  jobs_service_account: {PUSHER}
"""


class Signer:
    """A key pair with a self-signed certificate, as Google publishes its signing keys."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-oidc")])
        now = dt.datetime.now(dt.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(self.key, hashes.SHA256())
        )

    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, **claims: Any) -> str:
        now = int(time.time())
        payload = {
            "iss": "https://accounts.google.com",
            "aud": AUDIENCE,
            "email": PUSHER,
            "email_verified": True,
            "sub": "1234567890",
            "iat": now,
            "exp": now + 600,
            **claims,
        }
        private = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        signer = crypt.RSASigner.from_string(private, key_id=self.kid)
        return jwt.encode(signer, payload).decode()


@pytest.fixture(scope="module")
def google_key() -> Signer:
    return Signer()


@pytest.fixture(scope="module")
def certs_url(google_key: Signer) -> Iterator[str]:
    body = json.dumps({google_key.kid: google_key.pem()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/oauth2/v1/certs"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def config_path(workdir: Path) -> Path:
    path = workdir / "nbenv.yaml"
    path.write_text(config_text(GCP), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(
    config_path: Path, database: str, workdir: Path, slack: FakeSlackApi, certs_url: str
) -> Iterator[BotServer]:
    bot = BotServer(
        config=config_path,
        db_url=database,
        home=workdir / "home",
        slack=slack,
        NBENV_OIDC_CERTS_URL=certs_url,
    )
    bot.start()
    try:
        yield bot
    finally:
        bot.stop()


def _push(server: BotServer, job: dict[str, Any], token: str | None) -> Any:
    envelope = {
        "message": {
            "data": base64.b64encode(json.dumps(job).encode()).decode(),
            "attributes": {"kind": job.get("kind", "")},
            "messageId": str(uuid.uuid4().int)[:16],
            "publishTime": "2024-05-01T12:00:00.000Z",
        },
        "subscription": "projects/test-project/subscriptions/nbenv-jobs-push",
    }
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return server.post("/pubsub/jobs", json.dumps(envelope).encode(), headers)


def _promote_job(image: str, url: str) -> dict[str, Any]:
    key = f"push-{uuid.uuid4().hex}"
    return {
        "key": key,
        "kind": "slack",
        "payload": {
            "mode": "run",
            "actor": OWNER,
            "command": {"name": "promote", "image": image, "confirmed": True},
            "key": key,
            "response_url": url,
        },
    }


def _ready(rt, image: str) -> str:  # type: ignore[no-untyped-def]
    commit = published(rt, image)
    rt.nbenv.handle(TESTER, f"approve {image}")
    return commit


def test_a_verified_push_runs_the_job_once_however_often_it_is_delivered(
    server: BotServer, rt, image: str, slack: FakeSlackApi, google_key: Signer
) -> None:  # type: ignore[no-untyped-def]
    commit = _ready(rt, image)
    url = slack.response_url(f"push-{image}")
    job = _promote_job(image, url)

    first = _push(server, job, google_key.token())
    again = _push(server, job, google_key.token())

    assert (first.status, again.status) == (204, 204)
    assert f"promoted `{commit[:7]}`" in blocks_text(wait_response(slack, url))
    assert pointers(rt, image)["production"] == commit
    assert [e.action for e in audit(rt, image)].count("promote") == 1
    time.sleep(0.6)
    assert len(slack.calls(f"response_url:/response/{url.rsplit('/', 1)[1]}")) == 1


def test_a_push_can_name_a_job_the_bot_queued(
    server: BotServer, rt, image: str, slack: FakeSlackApi, google_key: Signer
) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from bot.store import tables as t

    commit = _ready(rt, image)
    url = slack.response_url(f"queued-{image}")
    server.slash(OWNER, f"promote {image} --yes", response_url=url, trigger="777.888.queued")
    with rt.store.read() as tx:
        key = tx.connection.execute(
            select(t.jobs.c.dedupe_key).where(t.jobs.c.dedupe_key.like("%777.888.queued"))
        ).scalar_one()
    assert pointers(rt, image)["production"] is None  # with a push queue, nothing runs it here

    assert _push(server, {"key": key}, google_key.token()).status == 204

    assert f"promoted `{commit[:7]}`" in blocks_text(wait_response(slack, url))
    assert _push(server, {"key": "slack:no-such-job"}, google_key.token()).status == 404


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("no token", 401),
        ("not a bearer token", 401),
        ("garbage token", 401),
        ("other audience", 401),
        ("expired", 401),
        ("other issuer", 401),
        ("signed by another key", 401),
        ("other service account", 403),
        ("unverified email", 403),
    ],
)
def test_unverified_pushes_are_refused_and_change_nothing(
    server: BotServer,
    rt,
    image: str,
    slack: FakeSlackApi,
    google_key: Signer,
    case: str,
    status: int,
) -> None:  # type: ignore[no-untyped-def]
    _ready(rt, image)
    before = (pointers(rt, image), len(audit(rt, image)))
    now = int(time.time())
    tokens: dict[str, Any] = {
        "no token": lambda: None,
        "garbage token": lambda: "not.a.jwt",
        "other audience": lambda: google_key.token(aud="https://elsewhere.example"),
        "expired": lambda: google_key.token(iat=now - 7200, exp=now - 3600),
        "other issuer": lambda: google_key.token(iss="https://evil.example"),
        "signed by another key": lambda: Signer().token(),
        "other service account": lambda: google_key.token(email="someone@evil.example"),
        "unverified email": lambda: google_key.token(email_verified=False),
    }
    url = slack.response_url(f"refused-{image}")
    job = _promote_job(image, url)
    if case == "not a bearer token":
        answer = server.post(
            "/pubsub/jobs", b"{}", {"Authorization": f"Basic {google_key.token()}"}
        )
    else:
        answer = _push(server, job, tokens[case]())

    assert answer.status == status
    assert (pointers(rt, image), len(audit(rt, image))) == before
    assert not slack.calls(f"response_url:/response/{url.rsplit('/', 1)[1]}")


def test_a_malformed_push_is_a_clear_400(server: BotServer, google_key: Signer) -> None:
    headers = {"Authorization": f"Bearer {google_key.token()}"}
    nested = base64.b64encode(b"[" * 100_000).decode()
    for body in (
        b"not json",
        b'{"message": {"data": "%%%"}}',
        b'{"message": {}}',
        b"[" * 100_000,  # nested deeper than the JSON parser recurses
        json.dumps({"message": {"data": nested}}).encode(),
    ):
        answer = server.post("/pubsub/jobs", body, headers)
        assert answer.status == 400
        assert "malformed push" in answer.text
    no_key = base64.b64encode(b'{"kind": "slack"}').decode()
    answer = server.post(
        "/pubsub/jobs", json.dumps({"message": {"data": no_key}}).encode(), headers
    )
    assert answer.status == 400 and '"key"' in answer.text
