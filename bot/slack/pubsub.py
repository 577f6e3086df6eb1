"""`POST /pubsub/jobs`: the job queue's Pub/Sub push subscription on the gcp backend.

Pub/Sub pushes `{"message": {"data": BASE64, "attributes": {...}, "messageId": ...},
"subscription": ...}` with an OIDC token in `Authorization: Bearer …`, signed by Google
for the subscription's service account and addressed to the audience set on the
subscription. The token is verified (signature, expiry, issuer, audience, service
account) before anything is read.

The message data is JSON: `{"key": DEDUPE_KEY}` naming a row of the store's `jobs`
table, optionally with `"kind"` and `"payload"` to queue it when it is not there yet.
The job runs through the same worker handlers as on the local backend; a redelivered
message finds the job done and changes nothing. Status codes tell Pub/Sub what to do:
2xx acknowledges; 5xx and 409 (another delivery is running it) ask for redelivery.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from dataclasses import dataclass
from typing import Any

from bot.service.runtime import Runtime

log = logging.getLogger(__name__)

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
GOOGLE_ISSUERS = ("accounts.google.com", "https://accounts.google.com")


@dataclass(frozen=True)
class PushResult:
    status: int
    text: str


class JobPush:
    def __init__(
        self,
        runtime: Runtime,
        *,
        audience: str,
        service_account: str | None,
        certs_url: str = GOOGLE_CERTS_URL,
    ) -> None:
        self.runtime = runtime
        self.audience = audience
        self.service_account = service_account
        self.certs_url = certs_url
        self._request: Any = None

    @classmethod
    def from_runtime(cls, runtime: Runtime) -> JobPush | None:
        """The endpoint when config sets gcp.jobs_audience; None (disabled) otherwise."""
        gcp = runtime.config.gcp
        if gcp is None or not gcp.jobs_audience:
            return None
        return cls(
            runtime,
            audience=gcp.jobs_audience,
            service_account=gcp.jobs_service_account,
            certs_url=os.environ.get("NBENV_OIDC_CERTS_URL") or GOOGLE_CERTS_URL,
        )

    def handle(self, body: bytes, authorization: str | None) -> PushResult:
        problem = self._verify(authorization)
        if problem is not None:
            log.warning("refused a job push: %s", problem.text)
            return problem
        try:
            job = _decode(body)
        except ValueError as error:
            return PushResult(400, f"malformed push: {error}")
        if "kind" in job:
            with self.runtime.store.write(audited=False) as tx:
                tx.jobs.enqueue(job["key"], job["kind"], job["payload"])
        status = self.runtime.worker.run_key(job["key"])
        log.info("job %s pushed: %s", job["key"], status)
        if status in ("done", "failed"):
            return PushResult(204, status)
        if status == "running":
            return PushResult(409, "the job is running in another delivery")
        if status == "missing":
            return PushResult(404, f"no job {job['key']!r} in the queue")
        return PushResult(500, "the job failed and will be retried")

    def _verify(self, authorization: str | None) -> PushResult | None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return PushResult(401, "missing OIDC token (Authorization: Bearer …)")
        # Loaded on first push only: the bot's start must not pay for google-auth.
        from google.auth import exceptions
        from google.oauth2 import id_token

        try:
            claims = id_token.verify_token(
                token.strip(), self._transport(), audience=self.audience, certs_url=self.certs_url
            )
        except (ValueError, exceptions.GoogleAuthError) as error:
            return PushResult(401, f"invalid OIDC token: {error}")
        if claims.get("iss") not in GOOGLE_ISSUERS:
            return PushResult(401, f"invalid OIDC token: issuer {claims.get('iss')!r}")
        if self.service_account and (
            claims.get("email") != self.service_account or not claims.get("email_verified")
        ):
            return PushResult(403, f"OIDC token of {claims.get('email')!r}, not the push account")
        return None

    def _transport(self) -> Any:
        if self._request is None:
            import google.auth.transport.requests

            self._request = google.auth.transport.requests.Request()
        return self._request


def _decode(body: bytes) -> dict[str, Any]:
    try:
        envelope = json.loads(body)
        data = envelope["message"]["data"]
        job = json.loads(base64.b64decode(data, validate=True))
    except (KeyError, TypeError, binascii.Error, UnicodeDecodeError) as error:
        raise ValueError(f"expected a Pub/Sub push with base64 JSON data ({error!r})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"not JSON: {error}") from None
    except RecursionError:
        raise ValueError("JSON nested too deep") from None
    if not isinstance(job, dict) or not isinstance(job.get("key"), str) or not job["key"]:
        raise ValueError('the data must be a JSON object with a "key"')
    if "kind" in job and (
        not isinstance(job["kind"], str) or not isinstance(job.get("payload"), dict)
    ):
        raise ValueError('"kind" must be a string and "payload" an object')
    return job
