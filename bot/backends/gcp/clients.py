"""The google-cloud clients, made on first use, and one way to call them.

Cold start matters on Cloud Run: nothing here imports a google-cloud library until a
client is first asked for. Every call goes through `Caller.call`, which sets an explicit
per-attempt timeout, retries transient failures with exponential backoff, and turns what
Google answers into a one-line `NbenvError` that names the resource and, for a refusal,
the permission the bot's service account lacks.

Endpoints: `NBENV_GCP_ENDPOINT` points every REST API at one base URL, and
`NBENV_GCP_ENDPOINT_<API>` (CLOUDBUILD, ARTIFACTREGISTRY, NOTEBOOKS, NOTEBOOKS_V1,
CONTAINERANALYSIS)
points one API somewhere else. A plain `http://` endpoint is a local stand-in (tests,
an emulator): no credentials are sent to it. Pub/Sub follows `PUBSUB_EMULATOR_HOST`,
which its client library honours itself.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bot.domain.errors import ConfigError, NbenvError, Refused

T = TypeVar("T")

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
REST_APIS = ("cloudbuild", "artifactregistry", "notebooks", "containeranalysis")


class GcpUnavailable(NbenvError):
    """A Google API kept failing transiently (5xx, 429, timeouts) until the retries ran out."""

    exit_code = 5


@dataclass(frozen=True)
class CallPolicy:
    """How long to wait for one attempt, and how to retry transient failures."""

    attempt_timeout: float = 30.0  # seconds for one HTTP/gRPC exchange
    deadline: float = 120.0  # seconds for all attempts together
    initial_delay: float = 0.5
    max_delay: float = 10.0
    multiplier: float = 2.0

    @classmethod
    def from_env(cls) -> CallPolicy:
        """The defaults, tuned by NBENV_GCP_TIMEOUT, NBENV_GCP_DEADLINE, NBENV_GCP_RETRY_DELAY
        (seconds: per attempt, for all attempts, before the first retry)."""
        defaults = cls()
        try:
            return cls(
                attempt_timeout=float(
                    os.environ.get("NBENV_GCP_TIMEOUT") or defaults.attempt_timeout
                ),
                deadline=float(os.environ.get("NBENV_GCP_DEADLINE") or defaults.deadline),
                initial_delay=float(
                    os.environ.get("NBENV_GCP_RETRY_DELAY") or defaults.initial_delay
                ),
                max_delay=defaults.max_delay,
                multiplier=defaults.multiplier,
            )
        except ValueError as error:
            raise ConfigError(f"NBENV_GCP_TIMEOUT/DEADLINE/RETRY_DELAY: {error}") from None


@dataclass(frozen=True)
class Op:
    """What a call does, in the words its error messages need."""

    service: str  # "Artifact Registry"
    action: str  # "move tag production"
    resource: str  # the full resource name
    permission: str  # the IAM permission the call needs
    role: str  # the least predefined role that grants it


def endpoint(api: str) -> str | None:
    """The endpoint override for API (see the module docstring), or None for Google's."""
    specific = os.environ.get(f"NBENV_GCP_ENDPOINT_{api.upper()}")
    if specific:
        return specific
    if api in REST_APIS:
        return os.environ.get("NBENV_GCP_ENDPOINT") or None
    return None


def _is_plain_http(url: str | None) -> bool:
    return bool(url) and url.startswith("http://")  # type: ignore[union-attr]


class Clients:
    """Google API clients, each created the first time it is needed, once per process."""

    def __init__(self, credentials: Any = None) -> None:
        self._credentials = credentials
        self._lock = threading.Lock()
        self._made: dict[str, Any] = {}

    def _get(self, api: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if api not in self._made:
                self._made[api] = make()
            return self._made[api]

    def _rest_kwargs(self, api: str) -> dict[str, Any]:
        url = endpoint(api)
        kwargs: dict[str, Any] = {"transport": "rest"}
        if url:
            kwargs["client_options"] = {"api_endpoint": url}
        if _is_plain_http(url):
            from google.auth.credentials import AnonymousCredentials

            kwargs["credentials"] = AnonymousCredentials()
        elif self._credentials is not None:
            kwargs["credentials"] = self._credentials
        return kwargs

    def cloud_build(self) -> Any:
        def make() -> Any:
            from google.cloud.devtools import cloudbuild_v1

            return cloudbuild_v1.CloudBuildClient(**self._rest_kwargs("cloudbuild"))

        return self._get("cloudbuild", make)

    def artifact_registry(self) -> Any:
        def make() -> Any:
            from google.cloud import artifactregistry_v1

            return artifactregistry_v1.ArtifactRegistryClient(
                **self._rest_kwargs("artifactregistry")
            )

        return self._get("artifactregistry", make)

    def grafeas(self) -> Any:
        """Artifact Analysis occurrences (Grafeas v1, from google-cloud-containeranalysis).

        `ContainerAnalysisClient.get_grafeas_client()` only speaks gRPC: the Grafeas client
        is made on its REST transport here instead, like every other REST client."""

        def make() -> Any:
            from grafeas.grafeas_v1 import GrafeasClient
            from grafeas.grafeas_v1.services.grafeas.transports.rest import (
                GrafeasRestTransport,
            )

            url = endpoint("containeranalysis")
            credentials = self._credentials
            if _is_plain_http(url):
                from google.auth.credentials import AnonymousCredentials

                credentials = AnonymousCredentials()
            elif credentials is None:
                import google.auth

                # The transport asks for no scope of its own: say which one it needs.
                credentials, _ = google.auth.default(scopes=[CLOUD_PLATFORM])
            transport = GrafeasRestTransport(
                host=url or "containeranalysis.googleapis.com", credentials=credentials
            )
            return GrafeasClient(transport=transport)

        return self._get("containeranalysis", make)

    def notebooks(self) -> Any:
        """Workbench instances (Notebooks API v2)."""

        def make() -> Any:
            from google.cloud import notebooks_v2

            return notebooks_v2.NotebookServiceClient(**self._rest_kwargs("notebooks"))

        return self._get("notebooks", make)

    def legacy_notebooks(self) -> Any:
        """Notebooks API v1 (environments); its library only speaks gRPC."""

        def make() -> Any:
            from google.cloud import notebooks_v1

            url = endpoint("notebooks_v1")
            if _is_plain_http(url):
                import grpc
                from google.cloud.notebooks_v1.services.notebook_service.transports import (
                    NotebookServiceGrpcTransport,
                )

                channel = grpc.insecure_channel(url.removeprefix("http://").rstrip("/"))  # type: ignore[union-attr]
                return notebooks_v1.NotebookServiceClient(
                    transport=NotebookServiceGrpcTransport(channel=channel)
                )
            kwargs: dict[str, Any] = {}
            if url:
                kwargs["client_options"] = {"api_endpoint": url}
            if self._credentials is not None:
                kwargs["credentials"] = self._credentials
            return notebooks_v1.NotebookServiceClient(**kwargs)

        return self._get("notebooks_v1", make)

    def publisher(self) -> Any:
        def make() -> Any:
            from google.cloud import pubsub_v1

            kwargs: dict[str, Any] = {}
            if self._credentials is not None and not os.environ.get("PUBSUB_EMULATOR_HOST"):
                kwargs["credentials"] = self._credentials
            return pubsub_v1.PublisherClient(**kwargs)

        return self._get("pubsub", make)


# -- calling ------------------------------------------------------------------------------


def _transient_types(*, idempotent: bool) -> tuple[type[BaseException], ...]:
    import requests
    from google.api_core import exceptions as gexc

    if idempotent:
        return (
            gexc.InternalServerError,
            gexc.BadGateway,
            gexc.ServiceUnavailable,
            gexc.GatewayTimeout,
            gexc.TooManyRequests,
            gexc.DeadlineExceeded,
            requests.exceptions.Timeout,
            requests.exceptions.ConnectionError,
        )
    # A call that creates something may have been carried out when the answer was lost
    # (500, read timeout): only retry what certainly did not reach the service.
    return (
        gexc.ServiceUnavailable,
        gexc.TooManyRequests,
        requests.exceptions.ConnectionError,
    )


def describe(error: BaseException) -> str:
    """A short, one-line account of a failure."""
    import requests

    if isinstance(error, requests.exceptions.Timeout):
        return "no answer in time (timeout)"
    if isinstance(error, requests.exceptions.ConnectionError):
        return "could not connect"
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or str(error)
    message = " ".join(str(message).split())
    # REST errors start with "METHOD URL: "; the resource is named elsewhere already.
    message = re.sub(r"^(?:GET|POST|PUT|PATCH|DELETE) \S+: ", "", message)
    if len(message) > 200:
        message = message[:197] + "..."
    return f"HTTP {code}: {message}" if isinstance(code, int) else message


class Caller:
    """Calls Google APIs with the timeout, retries and error translation of a CallPolicy."""

    def __init__(self, policy: CallPolicy | None = None) -> None:
        self.policy = policy or CallPolicy.from_env()

    def call(
        self,
        op: Op,
        method: Callable[..., T],
        /,
        *args: Any,
        idempotent: bool = True,
        passthrough: tuple[type[BaseException], ...] = (),
        **kwargs: Any,
    ) -> T:
        """METHOD(*ARGS, **KWARGS) with retries; PASSTHROUGH exceptions reach the caller as is."""
        from google.api_core.retry import Retry, if_exception_type
        from google.api_core.timeout import ConstantTimeout

        policy = self.policy
        attempts = 0

        def count(_: BaseException) -> None:
            nonlocal attempts
            attempts += 1

        retry = Retry(
            predicate=if_exception_type(*_transient_types(idempotent=idempotent)),
            initial=policy.initial_delay,
            maximum=policy.max_delay,
            multiplier=policy.multiplier,
            timeout=policy.deadline,
            on_error=count,
        )
        started = time.monotonic()
        try:
            return method(
                *args, retry=retry, timeout=ConstantTimeout(policy.attempt_timeout), **kwargs
            )
        except passthrough:
            raise
        except Exception as error:
            raise self.translate(op, error, attempts, time.monotonic() - started) from error

    def wait(self, op: Op, operation: Any) -> Any:
        """The result of a long-running operation, its failure told the way `call` tells it."""
        started = time.monotonic()
        try:
            return operation.result(timeout=self.policy.deadline)
        except Exception as error:
            raise self.translate(op, error, 1, time.monotonic() - started) from error

    def translate(self, op: Op, error: Exception, attempts: int, elapsed: float) -> Exception:
        """The NbenvError a user sees for ERROR; anything unexpected is returned as is."""
        from concurrent.futures import TimeoutError as FutureTimeout

        from google.api_core import exceptions as gexc

        if isinstance(error, gexc.RetryError):
            cause = error.cause if error.cause is not None else error
            return GcpUnavailable(
                f"{op.service} did not {op.action} ({op.resource}): {max(attempts, 1)} "
                f"attempt(s) in {elapsed:.0f}s failed, the last with {describe(cause)}"
            )
        if isinstance(error, (gexc.PermissionDenied, gexc.Forbidden)):
            permission = (error.metadata or {}).get("permission") or op.permission
            return Refused(
                f"{op.service} denied the bot permission to {op.action} ({op.resource}): "
                f"its service account needs {permission} (e.g. role {op.role})"
            )
        if isinstance(error, (gexc.Unauthenticated, gexc.Unauthorized)):
            return Refused(
                f"{op.service} did not accept the bot's credentials to {op.action} "
                f"({op.resource}): {describe(error)}"
            )
        if isinstance(error, gexc.NotFound):
            return Refused(f"{op.service} could not {op.action}: {op.resource} was not found")
        if isinstance(error, (*_transient_types(idempotent=True), FutureTimeout)):
            return GcpUnavailable(
                f"{op.service} did not {op.action} ({op.resource}): {describe(error)}; "
                "not retried because it may have been carried out"
            )
        if isinstance(error, gexc.GoogleAPICallError):
            return Refused(
                f"{op.service} refused to {op.action} ({op.resource}): {describe(error)}"
            )
        return error
