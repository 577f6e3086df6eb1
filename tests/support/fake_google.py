"""Fake Google Cloud APIs for tests, speaking the real wire protocols.

`FakeGoogleApis` is one HTTP server answering the REST (JSON) APIs nbenv uses — Cloud
Build v1, Artifact Registry v1, Notebooks v2 and Container Analysis v1 (Grafeas
occurrences: `scan` sets what Artifact Analysis found in a pushed image) — at the
paths Google's client libraries call, with Google's JSON error bodies. Point the clients at it with
`NBENV_GCP_ENDPOINT=fake.url` (the REST transport then talks plain HTTP, with
anonymous credentials)::

    with FakeGoogleApis(registry="us-central1-docker.pkg.dev/p/notebooks") as google:
        google.push("nlp.keras-batch", sha)          # what `docker push` would leave
        ...                                           # run nbenv against it
        assert google.tag_sha("nlp.keras-batch", "staging") == sha

It records every request (`requests()`), keeps the state a test asserts on (tags,
builds, instances) and injects what goes wrong in real life: HTTP errors (`fail`),
slow answers (`delay`), missing permissions (`deny`, a 403 with the ErrorInfo Google
sends), and hooks run before or after a request is carried out (`on`) — e.g. to kill
the client process right after a registry write, for crash tests.

`FakeLegacyNotebooks` is a gRPC server for the Notebooks API v1 environments (its client
library has no REST transport). `PubSubEmulator` runs Google's Pub/Sub emulator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qsl, unquote, urlsplit

from .lifecycle import Startable

__all__ = [
    "Drop",
    "FakeGoogleApis",
    "FakeLegacyNotebooks",
    "PubSubEmulator",
    "Request",
    "emulator_path",
]

Json = dict[str, Any]
_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ALREADY_EXISTS",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
_BUILD_METADATA = "type.googleapis.com/google.devtools.cloudbuild.v1.BuildOperationMetadata"
# The Artifact Registry permissions (of those this fake serves) each predefined role grants,
# from "Artifact Registry roles and permissions"
# (https://cloud.google.com/iam/docs/roles-permissions/artifactregistry): the Writer may
# create, read and move tags but not delete them; deleting tags (and versions, packages)
# takes the Repository Administrator.
_REGISTRY_READER = frozenset(
    {
        "artifactregistry.packages.get",
        "artifactregistry.packages.list",
        "artifactregistry.tags.get",
        "artifactregistry.tags.list",
        "artifactregistry.versions.get",
        "artifactregistry.versions.list",
    }
)
_REGISTRY_WRITER = _REGISTRY_READER | {
    "artifactregistry.tags.create",
    "artifactregistry.tags.update",
}
_REGISTRY_ROLES = {
    "roles/artifactregistry.reader": _REGISTRY_READER,
    "roles/artifactregistry.writer": _REGISTRY_WRITER,
    "roles/artifactregistry.repoAdmin": _REGISTRY_WRITER
    | {
        "artifactregistry.tags.delete",
        "artifactregistry.versions.delete",
        "artifactregistry.packages.delete",
    },
}
_DOMAINS = {
    "containeranalysis": "containeranalysis.googleapis.com",
    "artifactregistry": "artifactregistry.googleapis.com",
    "cloudbuild": "cloudbuild.googleapis.com",
    "notebooks": "notebooks.googleapis.com",
}


@dataclass(frozen=True)
class Request:
    """One request the fake received; `path` has each segment URL-decoded as Google decodes
    it (once, but `%2F` stays: see `_decode_segment`)."""

    method: str
    path: str
    query: dict[str, str]
    body: Json | None
    headers: dict[str, str]
    api: str  # artifactregistry | cloudbuild | notebooks | unknown
    permission: str | None  # the IAM permission Google would check
    raw_path: str = ""  # as sent, before URL-decoding
    status: int = 0  # the HTTP status it was answered with (0: not answered)

    @property
    def mutating(self) -> bool:
        return self.method != "GET"


@dataclass
class _Rule:
    """A fault or hook for the requests MATCH selects, `times` times (None: until removed)."""

    match: Callable[[Request], bool]
    times: int | None
    status: int | None = None
    message: str | None = None
    delay: float = 0.0
    hook: Callable[[Request], None] | None = None
    when: str = "before"

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


def _matcher(
    method: str | None, path: str | None, permission: str | None
) -> Callable[[Request], bool]:
    pattern = re.compile(path) if path else None

    def match(request: Request) -> bool:
        return (
            (method is None or re.fullmatch(method.upper(), request.method) is not None)
            and (pattern is None or bool(pattern.search(request.path)))
            and (permission is None or request.permission == permission)
        )

    return match


class Drop(Exception):
    """Raised by a `before` hook: the request is not carried out and gets no answer."""


class _HttpError(Exception):
    def __init__(self, status: int, message: str, details: list[Json] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details or []


def _error_body(status: int, message: str, details: list[Json] | None = None) -> Json:
    return {
        "error": {
            "code": status,
            "message": message,
            "status": _STATUS.get(status, "UNKNOWN"),
            "details": details or [],
        }
    }


@dataclass
class _Package:
    versions: dict[str, Json] = field(default_factory=dict)  # digest -> times
    tags: dict[str, str] = field(default_factory=dict)  # tag -> digest


class FakeGoogleApis(Startable):
    """Cloud Build v1, Artifact Registry v1 and Notebooks v2 over HTTP/JSON."""

    def __init__(
        self,
        *,
        registry: str = "us-central1-docker.pkg.dev/nbenv-test/notebooks",
        page_size: int = 2,
        registry_role: str | None = "roles/artifactregistry.writer",
    ) -> None:
        host, project, repository, *folders = registry.split("/")
        self.registry = registry
        self.project = project
        self.location = host.removesuffix("-docker.pkg.dev")
        self.repository = repository
        self.folder = "/".join(folders)  # `docker push REGISTRY/IMAGE` makes package FOLDER/IMAGE
        # What the caller may do in Artifact Registry: the role the deploy guide grants the
        # bot (and the relay) on the repository. A request needing a permission outside it
        # gets the 403 Google sends, as with `deny`. None: every permission.
        self.registry_role = registry_role
        self.page_size = page_size
        self._lock = threading.RLock()
        self._clock = itertools.count(1)
        self._requests: list[Request] = []
        self._rules: list[_Rule] = []
        self._denied: set[str] = set()
        self.packages: dict[str, _Package] = {}
        self.triggers: dict[str, Json] = {}
        # Real Build resources are named with the project NUMBER, not its ID.
        self.project_number = "602894107551"
        self.heads: dict[str, str] = {}  # branch -> commit SHA of the connected repository
        self.builds: dict[str, Json] = {}
        self.instances: dict[str, Json] = {}
        self.instance_owners: dict[str, list[str]] = {}  # instance name -> instanceOwners
        self.operations: dict[str, Json] = {}  # Notebooks v2 long-running operations
        self.service_account_users: dict[str, set[str]] = {}  # account -> emails (IAM)
        self.occurrences: list[Json] = []  # Container Analysis (Grafeas) occurrences
        self.creator = f"nbenv-bot@{project}.iam.gserviceaccount.com"
        self.default_compute_account = "123456789012-compute@developer.gserviceaccount.com"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        fake = self

        class Handler(_Handler):
            api = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-google",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`: the value for NBENV_GCP_ENDPOINT."""
        assert self._server is not None, "FakeGoogleApis is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- test controls ---------------------------------------------------------------------

    def fail(
        self,
        status: int,
        *,
        times: int | None = 1,
        method: str | None = None,
        path: str | None = None,
        permission: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer matching requests with HTTP STATUS (Google's error body), TIMES times."""
        with self._lock:
            self._rules.append(
                _Rule(_matcher(method, path, permission), times, status=status, message=message)
            )

    def delay(
        self,
        seconds: float,
        *,
        times: int | None = 1,
        method: str | None = None,
        path: str | None = None,
        permission: str | None = None,
    ) -> None:
        """Answer matching requests only after SECONDS (to make clients time out)."""
        with self._lock:
            self._rules.append(_Rule(_matcher(method, path, permission), times, delay=seconds))

    def deny(self, permission: str) -> None:
        """Answer 403 PERMISSION_DENIED to every request that needs PERMISSION."""
        with self._lock:
            self._denied.add(permission)

    def allow(self, permission: str) -> None:
        with self._lock:
            self._denied.discard(permission)

    def on(
        self,
        hook: Callable[[Request], None],
        *,
        when: str = "after",
        times: int | None = 1,
        method: str | None = None,
        path: str | None = None,
        permission: str | None = None,
    ) -> None:
        """Run HOOK(request) before a matching request is carried out, or after it (before
        the answer is sent)."""
        assert when in ("before", "after")
        with self._lock:
            self._rules.append(
                _Rule(_matcher(method, path, permission), times, hook=hook, when=when)
            )

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()
            self._denied.clear()

    # -- state: Artifact Registry ------------------------------------------------------------

    def package_name(self, image: str) -> str:
        """The package resource `docker push {registry}/{image}` makes. Its ID is the image
        path below the repository; Artifact Registry escapes a slash in it as `%2F` in
        resource names ("If the package part contains slashes, the slashes are escaped":
        google/cloud/artifactregistry_v1/types/tag.py, `Tag.name`)."""
        package_id = f"{self.folder}/{image}" if self.folder else image
        return (
            f"projects/{self.project}/locations/{self.location}/repositories/"
            f"{self.repository}/packages/{package_id.replace('/', '%2F')}"
        )

    def push(self, image: str, sha: str, *, digest: str | None = None) -> str:
        """What `docker push {registry}/{image}:{sha}` leaves: a version and its SHA tag."""
        digest = digest or "sha256:" + hashlib.sha256(f"{image}@{sha}".encode()).hexdigest()
        with self._lock:
            package = self.packages.setdefault(self.package_name(image), _Package())
            now = self._now()
            package.versions.setdefault(digest, {"createTime": now, "updateTime": now})
            package.tags[sha] = digest
        return digest

    def image_resource_url(self, image: str, sha: str) -> str:
        """The resource URL Artifact Analysis files a pushed SHA's findings under: the
        image pinned to its digest, `https://REGISTRY/IMAGE@sha256:…`."""
        with self._lock:
            digest = self.packages[self.package_name(image)].tags[sha]
        return f"https://{self.registry}/{image}@{digest}"

    def scan(
        self,
        image: str,
        sha: str,
        findings: list[Json] | tuple[Json, ...] = (),
        *,
        status: str = "FINISHED_SUCCESS",
    ) -> None:
        """What Artifact Analysis records once it scanned SHA's image: a DISCOVERY
        occurrence with STATUS (PENDING, SCANNING, FINISHED_SUCCESS, FINISHED_FAILED…)
        and, when finished, a VULNERABILITY occurrence per finding
        ({cve, severity, package, installed, fixed} — fixed None: no fix yet). Shaped on
        the v1 REST reference's Occurrence, DiscoveryOccurrence, VulnerabilityOccurrence."""
        url = self.image_resource_url(image, sha)
        with self._lock:
            self.occurrences = [o for o in self.occurrences if o["resourceUri"] != url]
            now = self._now()
            self.occurrences.append(
                {
                    "name": f"projects/{self.project}/occurrences/{uuid.uuid4()}",
                    "resourceUri": url,
                    "noteName": "projects/goog-analysis/notes/PACKAGE_VULNERABILITY",
                    "kind": "DISCOVERY",
                    "createTime": now,
                    "updateTime": now,
                    "discovery": {
                        "continuousAnalysis": "ACTIVE",
                        "analysisStatus": status,
                        "lastScanTime": now,
                    },
                }
            )
            if status != "FINISHED_SUCCESS":
                return
            for finding in findings:
                self.occurrences.append(_vulnerability_occurrence(self.project, url, finding, now))

    def set_tag(self, image: str, tag: str, sha: str) -> None:
        """Point TAG at SHA's version, as another writer (or a person) would."""
        with self._lock:
            package = self.packages[self.package_name(image)]
            package.tags[tag] = package.tags[sha]

    def tags(self, image: str) -> dict[str, str]:
        """Tag → digest for IMAGE."""
        with self._lock:
            package = self.packages.get(self.package_name(image))
            return dict(package.tags) if package else {}

    def tag_sha(self, image: str, tag: str) -> str | None:
        """The SHA whose tag shares TAG's digest (what TAG points at), or None."""
        tags = self.tags(image)
        digest = tags.get(tag)
        if digest is None:
            return None
        shas = [
            name for name, d in tags.items() if d == digest and re.fullmatch("[0-9a-f]{40}", name)
        ]
        return shas[0] if shas else digest

    def env_tags(self, image: str) -> dict[str, str | None]:
        return {env: self.tag_sha(image, env) for env in ("staging", "production", "fallback")}

    # -- state: Cloud Build ------------------------------------------------------------------

    def add_trigger(
        self,
        trigger_id: str,
        *,
        location: str | None = None,
        image: str = "",
        repo: str = "https://github.com/nbenv-test/notebooks.git",
    ) -> str:
        """A GitHub trigger named TRIGGER_ID. Like a real one it also has a generated
        unique `id` (a UUID), which is what Build.buildTriggerId carries; the resource
        name may use either (cloudbuild_v1/types/cloudbuild.py, BuildTrigger)."""
        name = (
            f"projects/{self.project}/locations/{location or self.location}/triggers/{trigger_id}"
        )
        unique_id = str(uuid.uuid5(uuid.NAMESPACE_URL, name))
        with self._lock:
            self.triggers[name] = {
                "id": unique_id,
                "triggerName": trigger_id,
                "name": name,
                "image": image,
                "repo": repo,
            }
        return name

    def advance_build(
        self,
        build_id: str,
        status: str,
        *,
        steps: tuple[str, ...] = ("build", "push", "run-tests", "deliver-report", "tests"),
    ) -> Json:
        """Move a build on as Cloud Build would: WORKING (all but the last step done) or
        a final status; the image is pushed as `{image}:{SHA}` once it is past `push`."""
        with self._lock:
            build = self.builds[build_id]
            build["status"] = status
            sha = build["substitutions"]["COMMIT_SHA"]
            build.setdefault("startTime", self._now())
            done = len(steps) - 1 if status == "WORKING" else len(steps)
            build["steps"] = [
                {
                    "id": step,
                    "name": "gcr.io/cloud-builders/docker",
                    "status": "SUCCESS" if index < done else "WORKING",
                    "timing": {"startTime": build["startTime"]},
                }
                for index, step in enumerate(steps)
            ]
            if status not in ("QUEUED", "WORKING"):
                build["finishTime"] = self._now()
            image = build["substitutions"].get("_IMAGE_NAME")
            if image and (status == "SUCCESS" or (status == "WORKING" and done > 1)):
                self.push(image, sha)
            return dict(build)

    # -- inspection --------------------------------------------------------------------------

    def requests(
        self, method: str | None = None, path: str | None = None, *, api: str | None = None
    ) -> list[Request]:
        match = _matcher(method, path, None)
        with self._lock:
            return [r for r in self._requests if match(r) and (api is None or r.api == api)]

    def mutations(self, api: str | None = None) -> list[Request]:
        """Requests that changed something (any method but GET) and were answered 2xx."""
        return [r for r in self.requests(api=api) if r.mutating and 200 <= r.status < 300]

    def reset_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # -- request handling -------------------------------------------------------------------

    def _now(self) -> str:
        tick = next(self._clock)
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_700_000_000 + tick)) + "Z"

    def handle(self, method: str, raw_path: str, query: str, body: bytes, headers: dict[str, str]):
        segments = [_decode_segment(part) for part in raw_path.split("/") if part]
        route = _route(method, segments)
        api, permission = (route[0], route[1]) if route else ("unknown", None)
        parsed_body: Json | None = None
        if body:
            try:
                parsed_body = json.loads(body)
            except ValueError:
                parsed_body = {"_raw": body.decode("utf-8", "replace")}
        request = Request(
            method=method,
            path="/" + "/".join(segments),
            query=dict(parse_qsl(query, keep_blank_values=True)),
            body=parsed_body,
            headers=headers,
            api=api,
            permission=permission,
            raw_path=raw_path,
        )
        delay, status, payload = 0.0, 200, None
        before: list[Callable[[Request], None]] = []
        after: list[Callable[[Request], None]] = []
        with self._lock:
            # Recorded on arrival (status 0 until answered): a client that gave up on a
            # slow answer has still sent the request.
            index = len(self._requests)
            self._requests.append(request)
            for rule in list(self._rules):
                if not rule.match(request) or not rule.take():
                    continue
                if rule.times == 0:
                    self._rules.remove(rule)
                if rule.hook is not None:
                    (before if rule.when == "before" else after).append(rule.hook)
                elif rule.delay:
                    delay = max(delay, rule.delay)
                elif rule.status is not None and payload is None:
                    status = rule.status
                    payload = _error_body(
                        status, rule.message or f"injected fault for {request.path}"
                    )
            if payload is None and (
                permission in self._denied or not self._granted(api, permission)
            ):
                status, payload = (
                    403,
                    _error_body(
                        403,
                        f"Permission '{permission}' denied on resource '{request.path[4:]}' "
                        "(or it may not exist).",
                        [
                            {
                                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                                "reason": "IAM_PERMISSION_DENIED",
                                "domain": _DOMAINS.get(api, "googleapis.com"),
                                "metadata": {
                                    "permission": permission,
                                    "resource": request.path[4:],
                                },
                            }
                        ],
                    ),
                )
        try:
            for hook in before:
                hook(request)
        except Drop:
            return 0, None
        if delay:
            time.sleep(delay)
        if payload is None:
            try:
                with self._lock:
                    payload = self._dispatch(request, segments) if route else None
                if payload is None:
                    raise _HttpError(404, f"no such method: {method} {request.path}")
            except _HttpError as error:
                status, payload = (
                    error.status,
                    _error_body(error.status, error.message, error.details),
                )
            for hook in after if status < 300 else []:
                hook(request)
        with self._lock:
            self._requests[index] = _replace_status(request, status)
        return status, payload

    def _granted(self, api: str, permission: str | None) -> bool:
        if api != "artifactregistry" or permission is None or self.registry_role is None:
            return True
        return permission in _REGISTRY_ROLES.get(self.registry_role, frozenset())

    def _dispatch(self, request: Request, segments: list[str]) -> Json | None:
        if segments[-1:] == ["occurrences"]:
            return self._list_occurrences(request, segments)
        if segments[:1] == ["v2"]:
            return self._notebooks(request, segments)
        if "triggers" in segments or "builds" in segments:
            return self._cloud_build(request, segments)
        if "repositories" in segments:
            return self._registry(request, segments)
        return None

    # Artifact Registry: /v1/projects/P/locations/L/repositories/R/packages/PKG/...
    def _registry(self, request: Request, segments: list[str]) -> Json | None:
        if len(segments) < 10 or segments[7] != "packages":
            return None
        package_name = "/".join(segments[1:9])
        rest = segments[9:]
        package = self.packages.get(package_name)
        method = request.method

        def version_name(digest: str) -> str:
            return f"{package_name}/versions/{digest}"

        def tag_json(tag: str) -> Json:
            assert package is not None
            return {
                "name": f"{package_name}/tags/{tag}",
                "version": version_name(package.tags[tag]),
            }

        def need_package() -> _Package:
            if package is None:
                raise _HttpError(404, f"Requested entity was not found: {package_name}")
            return package

        def digest_of(version: str) -> str:
            pkg = need_package()
            digest = version.rsplit("/", 1)[-1]
            if not version.startswith(f"{package_name}/versions/") or digest not in pkg.versions:
                raise _HttpError(404, f"version {version} not found")
            return digest

        if rest == ["tags"] and method == "POST":
            pkg = need_package()
            tag = request.query.get("tagId", "")
            if not tag:
                raise _HttpError(400, "tag_id is required")
            if tag in pkg.tags:
                raise _HttpError(409, f"tag {package_name}/tags/{tag} already exists")
            pkg.tags[tag] = digest_of((request.body or {}).get("version", ""))
            return tag_json(tag)
        if rest == ["tags"] and method == "GET":
            pkg = need_package()
            return self._page(request, "tags", [tag_json(t) for t in sorted(pkg.tags)])
        if len(rest) == 2 and rest[0] == "tags":
            tag = rest[1]
            pkg = need_package()
            if method == "GET":
                if tag not in pkg.tags:
                    raise _HttpError(404, f"Requested entity was not found: tag {tag}")
                return tag_json(tag)
            if method == "PATCH":
                if tag not in pkg.tags:
                    raise _HttpError(404, f"Requested entity was not found: tag {tag}")
                if request.query.get("updateMask") not in (None, "version"):
                    raise _HttpError(400, f"unsupported update mask {request.query['updateMask']}")
                pkg.tags[tag] = digest_of((request.body or {}).get("version", ""))
                return tag_json(tag)
            if method == "DELETE":
                if pkg.tags.pop(tag, None) is None:
                    raise _HttpError(404, f"Requested entity was not found: tag {tag}")
                return {}
        if rest == ["versions"] and method == "GET":
            pkg = need_package()
            full = request.query.get("view") in ("FULL", "2")
            items = []
            for digest, times in pkg.versions.items():
                item: Json = {"name": version_name(digest), **times}
                if full:
                    item["relatedTags"] = [
                        {"name": f"{package_name}/tags/{t}", "version": version_name(d)}
                        for t, d in sorted(pkg.tags.items())
                        if d == digest
                    ]
                items.append(item)
            return self._page(request, "versions", items)
        return None

    # Container Analysis: GET /v1/projects/P[/locations/L]/occurrences?filter=…
    def _list_occurrences(self, request: Request, segments: list[str]) -> Json | None:
        if request.method != "GET" or segments[1:2] != ["projects"]:
            return None
        if segments[2] != self.project:
            raise _HttpError(
                403,
                f"Permission 'containeranalysis.occurrences.list' denied on projects/{segments[2]}",
            )
        wanted = _occurrence_filter(request.query.get("filter", ""))
        size_text = request.query.get("pageSize") or "20"
        if not size_text.lstrip("-").isdigit() or not 0 < int(size_text) <= 1000:
            raise _HttpError(400, f"Invalid page size {size_text}: must be within [1, 1000]")
        matching = [
            o
            for o in self.occurrences
            if all(
                o.get("resourceUri" if key == "resourceUrl" else key) == value
                for key, value in wanted
            )
        ]
        start = int(request.query.get("pageToken") or 0)
        end = start + int(size_text)
        page: Json = {"occurrences": matching[start:end]}
        if end < len(matching):
            page["nextPageToken"] = str(end)
        return page

    def _page(self, request: Request, key: str, items: list[Json]) -> Json:
        start = int(request.query.get("pageToken") or 0)
        end = start + self.page_size
        page: Json = {key: items[start:end]}
        if end < len(items):
            page["nextPageToken"] = str(end)
        return page

    # Cloud Build: /v1/projects/P/locations/L/triggers/T:run, /v1/.../builds/ID
    def _cloud_build(self, request: Request, segments: list[str]) -> Json | None:
        if len(segments) == 7 and segments[5] == "triggers" and segments[6].endswith(":run"):
            if request.method != "POST":
                return None
            location = segments[4]
            parent = "/".join(segments[1:5])
            wanted = segments[6].removesuffix(":run")
            trigger = self._trigger(parent, wanted)
            if trigger is None:
                raise _HttpError(404, f"trigger {parent}/triggers/{wanted} not found")
            ref, sha = self._run_request(request.body, trigger)
            substitutions = (request.body.get("source") or {}).get("substitutions") or {}
            build = self._new_build(trigger, location, ref, sha, substitutions)
            return self._operation_for(build)
        if len(segments) == 7 and segments[5] == "builds" and request.method == "GET":
            build = self.builds.get(segments[6])
            if build is None:
                raise _HttpError(404, f"build {segments[6]} not found")
            return build
        return None

    def _trigger(self, parent: str, wanted: str) -> Json | None:
        # `{trigger}` in the resource name is the trigger's name or its unique ID.
        for trigger in self.triggers.values():
            if trigger["name"].startswith(parent + "/") and wanted in (
                trigger["triggerName"],
                trigger["id"],
            ):
                return trigger
        return None

    def _run_request(self, body: Any, trigger: Json) -> tuple[dict[str, str], str]:
        """Check a RunBuildTriggerRequest body as the real API does; (ref, SHA) it names.

        Shaped on google.devtools.cloudbuild.v1.RunBuildTriggerRequest and RepoSource
        (cloudbuild_v1/types/cloudbuild.py; cloud.google.com/build/docs/api/reference/
        rest/v1/projects.locations.triggers/run): `triggerId` is required; the JSON
        mapping rejects unknown fields; `branchName`, `tagName` and `commitSha` are one
        oneof. `RepoSource.projectId` names a Cloud Source Repositories project: for a
        trigger on a GitHub repository it is refused (issue 12, item 6).
        """
        if not isinstance(body, dict):
            raise _HttpError(400, "Invalid JSON payload: expected a RunBuildTriggerRequest")
        unknown = set(body) - {"name", "projectId", "triggerId", "source"}
        if unknown:
            raise _HttpError(400, f"Invalid JSON payload received. Unknown name {min(unknown)!r}")
        trigger_id = body.get("triggerId")
        if not trigger_id:
            raise _HttpError(400, "triggerId: required field is not set")
        if trigger_id not in (trigger["triggerName"], trigger["id"]):
            raise _HttpError(400, f"triggerId {trigger_id!r} does not name {trigger['name']}")
        source = body.get("source") or {}
        repo_source_fields = {
            "projectId",
            "repoName",
            "branchName",
            "tagName",
            "commitSha",
            "dir",
            "invertRegex",
            "substitutions",
        }
        unknown = set(source) - repo_source_fields
        if unknown:
            raise _HttpError(400, f"Invalid JSON payload received. Unknown name {min(unknown)!r}")
        if source.get("projectId") or source.get("repoName"):
            raise _HttpError(
                400,
                "source.projectId/repoName name a Cloud Source Repository; trigger "
                f"{trigger['triggerName']} builds the GitHub repository {trigger['repo']}",
            )
        refs = {k: source[k] for k in ("branchName", "tagName", "commitSha") if source.get(k)}
        if len(refs) > 1:
            raise _HttpError(400, f"source: only one of {sorted(refs)} may be set (oneof revision)")
        # Cloud Build resolves the branch to its head commit when the build is made.
        sha = source.get("commitSha") or self.heads.get(source.get("branchName", ""))
        if sha is None:
            raise _HttpError(400, f"could not resolve {source.get('branchName')!r}")
        return refs, sha

    def _new_build(
        self,
        trigger: Json,
        location: str,
        ref: dict[str, str],
        sha: str,
        user_substitutions: dict[str, str],
    ) -> Json:
        """A Build resource shaped like one a GitHub trigger makes.

        Fields per google.devtools.cloudbuild.v1.Build (cloudbuild_v1/types/cloudbuild.py;
        cloud.google.com/build/docs/api/reference/rest/Shared.Types#Build): `name` with
        the project number, `buildTriggerId` the trigger's unique ID, the source as
        `source.gitSource` (revision as asked: a branch or a SHA) with the commit in
        `sourceProvenance.resolvedGitSource`, and the substitutions a GitHub trigger
        fills in (cloud.google.com/build/docs/configuring-builds/substitute-variable-values).
        """
        build_id = str(uuid.uuid4())
        repo = trigger["repo"]
        revision = ref.get("branchName") or ref.get("tagName") or sha
        substitutions = {
            "TRIGGER_NAME": trigger["triggerName"],
            "TRIGGER_BUILD_CONFIG_PATH": "config/cloudbuild/staging.yaml",
            "REPO_NAME": repo.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git"),
            "REPO_FULL_NAME": "/".join(repo.removesuffix(".git").rsplit("/", 2)[-2:]),
            "REF_NAME": revision,
            "_IMAGE_NAME": trigger.get("image") or "",
            **user_substitutions,
        }
        if ref.get("branchName"):
            substitutions["BRANCH_NAME"] = ref["branchName"]
        if ref.get("tagName"):
            substitutions["TAG_NAME"] = ref["tagName"]
        substitutions.update(COMMIT_SHA=sha, SHORT_SHA=sha[:7], REVISION_ID=sha)
        build = {
            "name": f"projects/{self.project_number}/locations/{location}/builds/{build_id}",
            "id": build_id,
            "projectId": self.project,
            "status": "QUEUED",
            "buildTriggerId": trigger["id"],
            "source": {"gitSource": {"url": repo, "revision": revision}},
            "sourceProvenance": {"resolvedGitSource": {"url": repo, "revision": sha}},
            "substitutions": substitutions,
            "createTime": self._now(),
            "tags": [f"trigger-{trigger['id']}"],
            "logUrl": (
                f"https://console.cloud.google.com/cloud-build/builds;region={location}/"
                f"{build_id}?project={self.project_number}"
            ),
        }
        self.builds[build_id] = build
        return build

    def _operation_for(self, build: Json) -> Json:
        location = build["name"].split("/")[3]
        return {
            "name": (
                f"projects/{self.project_number}/locations/{location}/operations/{build['id']}"
            ),
            "metadata": {"@type": _BUILD_METADATA, "build": build},
            "done": False,
        }

    # Notebooks v2: /v2/projects/P/locations/Z/instances[/NAME[:stop]], /v2/.../operations/ID
    # Shaped on google-cloud-notebooks (notebooks_v2/types/instance.py, gce_setup.py,
    # service.py) and the Workbench docs cited beside WORKBENCH_ZONES and can_open.
    def _notebooks(self, request: Request, segments: list[str]) -> Json | None:
        if len(segments) < 6 or segments[1] != "projects" or segments[3] != "locations":
            return None
        parent = "/".join(segments[1:5])
        _check_zone(segments[4])
        method = request.method
        if segments[5] == "operations":
            operation = self.operations.get("/".join(segments[1:7]))
            if len(segments) != 7 or method != "GET":
                return None
            if operation is None:
                raise _HttpError(404, f"Resource '{'/'.join(segments[1:7])}' was not found")
            return operation
        if segments[5] != "instances":
            return None
        if len(segments) == 6:
            if method == "POST":
                instance_id = request.query.get("instanceId", "")
                if not _INSTANCE_ID.fullmatch(instance_id):
                    raise _HttpError(
                        400,
                        f"Invalid value for field 'instance_id': {instance_id!r}. The instance "
                        "name must be 1 to 63 characters long and contain only lowercase "
                        "letters, numeric characters, and dashes. The first character must be "
                        "a lowercase letter and the last character cannot be a dash.",
                    )
                name = f"{parent}/instances/{instance_id}"
                if name in self.instances:
                    raise _HttpError(409, f"instance {name} already exists")
                instance = dict(request.body or {})
                owners = _check_instance(instance, segments[4])
                # instanceOwners is "Input only": never part of what GET or LIST answers.
                instance.pop("instanceOwners", None)
                instance.update(
                    name=name,
                    state="PROVISIONING",
                    createTime=self._now(),
                    creator=self.creator,
                )
                self.instances[name] = instance
                self.instance_owners[name] = owners
                return self._operation(parent, "create", name, done=False)
            if method == "GET":
                items = [i for n, i in sorted(self.instances.items()) if n.startswith(parent + "/")]
                return self._page(request, "instances", items)
            return None
        instance_id, _, verb = segments[6].partition(":")
        name = f"{parent}/instances/{instance_id}"
        instance = self.instances.get(name)
        if instance is None:
            raise _HttpError(404, f"Resource '{name}' was not found")
        if verb == "stop" and method == "POST":
            # A long-running operation: STOPPING until it ends (finish_operations()).
            instance["state"] = "STOPPING"
            return self._operation(parent, "stop", name, done=False)
        if not verb and method == "GET":
            return instance
        if not verb and method == "DELETE":
            del self.instances[name]
            return self._operation(parent, "delete", name)
        return None

    def _operation(self, parent: str, verb: str, target: str, *, done: bool = False) -> Json:
        operation = {
            "name": f"{parent}/operations/operation-{uuid.uuid4().hex[:12]}",
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.notebooks.v2.OperationMetadata",
                "createTime": self._now(),
                "target": target,
                "verb": verb,
                "apiVersion": "v2",
            },
            "done": done,
        }
        self.operations[operation["name"]] = operation
        return dict(operation)

    def finish_operations(self) -> None:
        """End every pending stop as Workbench would, a minute later: STOPPING → STOPPED."""
        with self._lock:
            for operation in self.operations.values():
                if operation["done"]:
                    continue
                operation["done"] = True
                target = operation["metadata"]["target"]
                instance = self.instances.get(target)
                if operation["metadata"]["verb"] == "stop" and instance is not None:
                    instance["state"] = "STOPPED"
                operation["response"] = {
                    "@type": "type.googleapis.com/google.cloud.notebooks.v2.Instance",
                    **(instance or {"name": target}),
                }

    def set_instance_state(self, name: str, state: str, *, proxy_uri: str | None = None) -> None:
        with self._lock:
            for full, instance in self.instances.items():
                if full.endswith(f"/instances/{name}"):
                    instance["state"] = state
                    if proxy_uri:
                        instance["proxyUri"] = proxy_uri

    def grant_service_account_user(self, account: str, member: str) -> None:
        """`roles/iam.serviceAccountUser` on service account ACCOUNT for MEMBER (an email)."""
        with self._lock:
            self.service_account_users.setdefault(account, set()).add(member)

    def can_open(self, instance_id: str, email: str) -> bool:
        """Whether EMAIL can open the instance's JupyterLab, by the rule of "Manage access to
        an instance's JupyterLab interface" (cloud.google.com/vertex-ai/docs/workbench/
        instances/manage-access-jupyterlab): with "single user only" access (instanceOwners)
        only that user, who needs roles/iam.serviceAccountUser on the instance's service
        account unless they created the instance; otherwise every user of that account."""
        with self._lock:
            (name,) = [n for n in self.instances if n.endswith(f"/instances/{instance_id}")]
            accounts = self.instances[name].get("gceSetup", {}).get("serviceAccounts") or [{}]
            account = accounts[0].get("email") or self.default_compute_account
            users = self.service_account_users.get(account, set())
            owners = self.instance_owners.get(name) or []
            if owners:
                return email == owners[0] and (email == self.creator or email in users)
            return email in users

    def idle_shutdown_after(self, instance_id: str) -> int | None:
        """Seconds of inactivity after which Workbench stops the instance; None: never."""
        with self._lock:
            (setup,) = [
                i.get("gceSetup", {})
                for n, i in self.instances.items()
                if n.endswith(f"/instances/{instance_id}")
            ]
            value = (setup.get("metadata") or {}).get(IDLE_TIMEOUT_KEY)
            return int(value) if value is not None else None

    def gpu_driver_installed(self, instance_id: str) -> bool:
        """Whether the instance's VM got a GPU driver: only when it has a GPU and the request
        said so (GPUDriverConfig.enable_gpu_driver: "If this field is empty or set to false,
        the GPU driver won't be installed. Only applicable to instances with GPUs.")."""
        with self._lock:
            (setup,) = [
                i.get("gceSetup", {})
                for n, i in self.instances.items()
                if n.endswith(f"/instances/{instance_id}")
            ]
            return bool(setup.get("acceleratorConfigs")) and (
                setup.get("gpuDriverConfig", {}).get("enableGpuDriver") is True
            )


# -- Workbench (Notebooks v2) rules the fake enforces -------------------------------------------

# Zones as Compute Engine lists them (cloud.google.com/compute/docs/regions-zones): a
# realistic subset. Note what is NOT there: us-east1-a, europe-west1-a (no such zones).
WORKBENCH_ZONES = frozenset(
    {
        *(f"us-central1-{z}" for z in "abcf"),
        *(f"us-east1-{z}" for z in "bcd"),
        *(f"us-east4-{z}" for z in "abc"),
        *(f"us-west1-{z}" for z in "abc"),
        *(f"us-west4-{z}" for z in "abc"),
        *(f"europe-west1-{z}" for z in "bcd"),
        *(f"europe-west2-{z}" for z in "abc"),
        *(f"europe-west4-{z}" for z in "abc"),
        *(f"asia-east1-{z}" for z in "abc"),
        *(f"asia-northeast1-{z}" for z in "abc"),
        *(f"asia-southeast1-{z}" for z in "abc"),
    }
)
# gcloud workbench instances reference: "The instance name must be 1 to 63 characters long
# and contain only lowercase letters, numeric characters, and dashes. The first character
# must be a lowercase letter and the last character cannot be a dash."
_INSTANCE_ID = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")
# Compute Engine machine types (cloud.google.com/compute/docs/machine-resource): the
# general-purpose families, and the accelerator-optimized ones that carry their GPUs.
_MACHINE_TYPE = re.compile(
    r"(?:(?:e2|n1|n2|n2d|n4|c2|c2d|c3|c3d|t2d)-(?:standard|highmem|highcpu)-(?:[1-9][0-9]{0,2})"
    r"|a2-(?:highgpu|megagpu|ultragpu)-(?:1|2|4|8|16)g|g2-standard-(?:4|8|12|16|24|32|48|96))"
)
# AcceleratorConfig.AcceleratorType (notebooks_v2/types/gce_setup.py) by name and number
# (the REST transport sends enums as numbers), and the machine family each GPU attaches to
# (cloud.google.com/compute/docs/gpus: T4, P4, P100, V100 on N1; A100 on A2; L4 on G2).
_ACCELERATORS = {
    "NVIDIA_TESLA_P100": (2, "n1-"),
    "NVIDIA_TESLA_V100": (3, "n1-"),
    "NVIDIA_TESLA_P4": (4, "n1-"),
    "NVIDIA_TESLA_T4": (5, "n1-"),
    "NVIDIA_TESLA_T4_VWS": (8, "n1-"),
    "NVIDIA_TESLA_P100_VWS": (9, "n1-"),
    "NVIDIA_TESLA_P4_VWS": (10, "n1-"),
    "NVIDIA_TESLA_A100": (11, "a2-highgpu-"),
    "NVIDIA_A100_80GB": (12, "a2-ultragpu-"),
    "NVIDIA_L4": (13, "g2-"),
}
_ACCELERATOR_BY_NUMBER = {number: name for name, (number, _) in _ACCELERATORS.items()}
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[a-z]{2,}")
# Workbench idle shutdown (cloud.google.com/vertex-ai/docs/workbench/instances/
# manage-metadata): metadata key `idle-timeout-seconds`, "An integer representing the idle
# time in seconds. The default value is 10800 seconds (180 minutes)"; and (idle-shutdown):
# "To enable idle shutdown, create the instance with the idle-timeout-seconds key in
# metadata", so an instance created without it has none.
IDLE_TIMEOUT_KEY = "idle-timeout-seconds"
_IDLE_SECONDS = re.compile(r"[0-9]{1,9}")


def _check_zone(zone: str) -> None:
    if zone not in WORKBENCH_ZONES:
        # What Compute Engine answers for a zone that does not exist.
        raise _HttpError(400, f"Invalid value for field 'zone': '{zone}'. Unknown zone.")


def _check_instance(instance: Json, zone: str) -> list[str]:
    """Refuse what Workbench would refuse in a create; the instance owners, if any."""
    setup = instance.get("gceSetup") or {}
    machine = setup.get("machineType", "n1-standard-4")
    if not _MACHINE_TYPE.fullmatch(machine):
        raise _HttpError(
            400,
            f"Invalid value for field 'resource.machineType': '{machine}'. Machine type with "
            f"name '{machine}' does not exist in zone '{zone}'.",
        )
    accelerators = setup.get("acceleratorConfigs") or []
    if len(accelerators) > 1:  # "Currently supports only one accelerator configuration."
        raise _HttpError(400, "gce_setup.accelerator_configs: only one is supported")
    for accelerator in accelerators:
        kind = accelerator.get("type")
        kind = _ACCELERATOR_BY_NUMBER.get(kind, kind) if isinstance(kind, int) else kind
        if kind not in _ACCELERATORS:
            raise _HttpError(400, f"Invalid value for field 'accelerator_configs.type': {kind!r}")
        if str(accelerator.get("coreCount")) not in ("1", "2", "4", "8"):
            raise _HttpError(
                400,
                f"Invalid value for field 'accelerator_configs.core_count': "
                f"{accelerator.get('coreCount')!r}",
            )
        family = _ACCELERATORS[kind][1]
        if not machine.startswith(family):
            raise _HttpError(
                400,
                f"Accelerator type {kind} is not supported with machine type {machine} "
                f"(it attaches to {family}* machines)",
            )
    idle = (setup.get("metadata") or {}).get(IDLE_TIMEOUT_KEY)
    if idle is not None and not _IDLE_SECONDS.fullmatch(str(idle)):
        # "An integer representing the idle time in seconds" (manage-metadata).
        raise _HttpError(
            400,
            f"Invalid value for field 'gce_setup.metadata[{IDLE_TIMEOUT_KEY}]': {idle!r}: "
            "expected an integer number of seconds",
        )
    owners = instance.get("instanceOwners") or []
    if len(owners) > 1:  # Instance.instance_owners: "Currently supports one owner only."
        raise _HttpError(400, "instance_owners: currently supports one owner only")
    for owner in owners:
        if not isinstance(owner, str) or not _EMAIL.fullmatch(owner):
            raise _HttpError(
                400, f"Invalid value for field 'instance_owners': {owner!r}: expected an email"
            )
    return list(owners)


# The fields a Container Analysis occurrence filter may test here, and the kinds of note
# (grafeas.v1.NoteKind). The real filter language is larger; a filter this fake does not
# understand is refused as the real API refuses a malformed one (400 INVALID_ARGUMENT).
_FILTER_FIELDS = {"kind", "resourceUrl", "noteProjectId", "noteId"}
_NOTE_KINDS = {
    "NOTE_KIND_UNSPECIFIED", "VULNERABILITY", "BUILD", "IMAGE", "PACKAGE", "DEPLOYMENT",
    "DISCOVERY", "ATTESTATION", "UPGRADE", "COMPLIANCE", "DSSE_ATTESTATION",
    "VULNERABILITY_ASSESSMENT", "SBOM_REFERENCE",
}  # fmt: skip
_FILTER_TERM = re.compile(r'\s*([A-Za-z]+)\s*=\s*"((?:[^"\\]|\\.)*)"\s*')


def _occurrence_filter(text: str) -> list[tuple[str, str]]:
    """`kind="VULNERABILITY" AND resourceUrl="…"` as (field, value) pairs; 400 otherwise."""
    text = text.strip()
    if text.startswith("(") and text.endswith(")"):
        text = text[1:-1]  # as Google's guide writes it: `(kind="…" AND resourceUrl="…")`
    if not text.strip():
        return []
    terms: list[tuple[str, str]] = []
    position = 0
    while True:
        match = _FILTER_TERM.match(text, position)
        if match is None or match.group(1) not in _FILTER_FIELDS:
            raise _HttpError(400, f"Invalid filter: {text[:200]!r}")
        field_name, value = match.group(1), re.sub(r"\\(.)", r"\1", match.group(2))
        if field_name == "kind" and value not in _NOTE_KINDS:
            raise _HttpError(400, f"Invalid filter: unknown kind {value!r}")
        terms.append((field_name, value))
        position = match.end()
        if position == len(text):
            return terms
        if not text.startswith("AND", position):
            raise _HttpError(400, f"Invalid filter: {text[:200]!r}")
        position += 3


def _version_json(full: str | None) -> Json:
    """A grafeas.v1.Version; None is how a fix that does not exist yet is said (MAXIMUM)."""
    if full is None:
        return {"kind": "MAXIMUM"}
    name, _, revision = full.partition("-")
    version: Json = {"name": name, "kind": "NORMAL", "fullName": full}
    if revision:
        version["revision"] = revision
    return version


def _vulnerability_occurrence(project: str, url: str, finding: Json, now: str) -> Json:
    severity = finding.get("severity", "HIGH")
    fixed = finding.get("fixed")
    package = finding.get("package", "openssl")
    return {
        "name": f"projects/{project}/occurrences/{uuid.uuid4()}",
        "resourceUri": url,
        "noteName": f"projects/goog-vulnz/notes/{finding['cve']}",
        "kind": "VULNERABILITY",
        "createTime": now,
        "updateTime": now,
        "vulnerability": {
            "severity": severity,
            "effectiveSeverity": severity,
            "cvssScore": {"CRITICAL": 9.8, "HIGH": 7.5, "MEDIUM": 5.3}.get(severity, 2.0),
            "shortDescription": finding["cve"],
            "fixAvailable": fixed is not None,
            "packageIssue": [
                {
                    "affectedCpeUri": "cpe:/o:debian:debian_linux:12",
                    "affectedPackage": package,
                    "affectedVersion": _version_json(finding.get("installed", "1.0-1")),
                    "fixedCpeUri": "cpe:/o:debian:debian_linux:12",
                    "fixedPackage": package,
                    "fixedVersion": _version_json(fixed),
                    "fixAvailable": fixed is not None,
                    "packageType": "OS",
                    "effectiveSeverity": severity,
                }
            ],
        },
    }


def _decode_segment(part: str) -> str:
    """One path segment as Google's front end decodes it: once, except `%2F` / `%2f`.

    Resource names are multi-segment path variables (`{name=projects/*/.../tags/*}`), for
    which google/api/http.proto says: "The server side does the reverse decoding, except
    "%2F" and "%2f" are left unchanged." The client libraries percent-encode the name
    (google-api-core `path_template.get_field(..., encode=True)`: `quote(value, safe="/")`),
    so an Artifact Registry package `team%2Fnlp.keras-batch` travels as
    `team%252Fnlp.keras-batch` and arrives as `team%2Fnlp.keras-batch` again; sent
    unencoded as `team%2F…` it arrives the same. A literal `/` splits segments (and then
    matches no method), so a package ID's slash can never be confused with one.
    """
    return "%2F".join(unquote(piece) for piece in re.split("%2[fF]", part))


def _replace_status(request: Request, status: int) -> Request:
    return dataclasses.replace(request, status=status)


def _route(method: str, segments: list[str]) -> tuple[str, str | None] | None:
    """(api, IAM permission) of a request, from its path alone."""
    if segments[:1] == ["v2"] and "operations" in segments:
        return "notebooks", "notebooks.operations.get"
    if segments[:1] == ["v2"] and "instances" in segments:
        last = segments[-1]
        if last.endswith(":stop"):
            return "notebooks", "notebooks.instances.stop"
        if segments[-1] == "instances":
            return "notebooks", (
                "notebooks.instances.create" if method == "POST" else "notebooks.instances.list"
            )
        verb = {"GET": "get", "DELETE": "delete", "PATCH": "update"}.get(method, "get")
        return "notebooks", f"notebooks.instances.{verb}"
    if segments[:1] != ["v1"]:
        return None
    if segments[-1] == "occurrences":
        return "containeranalysis", "containeranalysis.occurrences.list"
    if "triggers" in segments:
        return "cloudbuild", "cloudbuild.builds.create"
    if "builds" in segments:
        return "cloudbuild", "cloudbuild.builds.get"
    if "repositories" in segments:
        if "tags" in segments:
            if segments[-1] == "tags":
                return "artifactregistry", (
                    "artifactregistry.tags.create"
                    if method == "POST"
                    else "artifactregistry.tags.list"
                )
            verb = {"GET": "get", "PATCH": "update", "DELETE": "delete"}.get(method, "get")
            return "artifactregistry", f"artifactregistry.tags.{verb}"
        if "versions" in segments:
            return "artifactregistry", (
                "artifactregistry.versions.list"
                if segments[-1] == "versions"
                else "artifactregistry.versions.get"
            )
        return "artifactregistry", "artifactregistry.packages.get"
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


class _Handler(BaseHTTPRequestHandler):
    api: FakeGoogleApis
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, payload = self.api.handle(self.command, parts.path, parts.query, body, headers)
        if status == 0:  # dropped by a hook: hang up without an answer
            self.close_connection = True
            return
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timed out, or was killed by a test hook)

    do_GET = do_POST = do_PATCH = do_DELETE = _serve


# -- Notebooks API v1 over gRPC ----------------------------------------------------------------


class FakeLegacyNotebooks(Startable):
    """`google.cloud.notebooks.v1.NotebookService` environments, over insecure gRPC.

    Long-running operations complete at once (`done: true`), as a fast service would.

    `end_of_support=True` answers every CreateEnvironment as Google answers a create of a
    user-managed notebooks instance since their end of support (FAILED_PRECONDITION, text
    as quoted from the API in crossplane-contrib/provider-upjet-gcp#891 and
    GoogleCloudPlatform/vertex-ai-alphafold-inference-pipeline#96). Google documents no
    such answer for Environments; this is how a test meets the day it comes.
    """

    SERVICE = "google.cloud.notebooks.v1.NotebookService"
    END_OF_SUPPORT = (
        "Vertex AI Workbench user-managed notebooks have been deprecated and new instances "
        "cannot be created. We recommend using Vertex AI Workbench instances instead."
    )

    def __init__(self, *, end_of_support: bool = False) -> None:
        self.end_of_support = end_of_support
        self._lock = threading.RLock()
        self.environments: dict[str, Any] = {}  # name -> Environment (protobuf)
        self.calls: list[tuple[str, Json]] = []
        self._faults: list[tuple[str | None, Any, int]] = []  # (method, status code, times)
        self._server: Any = None
        self.port = 0

    def start(self) -> Self:
        import grpc
        from google.cloud import notebooks_v1
        from google.longrunning import operations_pb2

        pb = {
            "CreateEnvironment": notebooks_v1.CreateEnvironmentRequest.pb(),
            "DeleteEnvironment": notebooks_v1.DeleteEnvironmentRequest.pb(),
            "ListEnvironments": notebooks_v1.ListEnvironmentsRequest.pb(),
            "GetEnvironment": notebooks_v1.GetEnvironmentRequest.pb(),
        }
        answers = {
            "CreateEnvironment": (self._create, operations_pb2.Operation),
            "DeleteEnvironment": (self._delete, operations_pb2.Operation),
            "ListEnvironments": (self._list, notebooks_v1.ListEnvironmentsResponse.pb()),
            "GetEnvironment": (self._get, notebooks_v1.Environment.pb()),
        }
        handlers = {}
        for method, (function, _response) in answers.items():
            handlers[method] = grpc.unary_unary_rpc_method_handler(
                self._wrap(method, function),
                request_deserializer=pb[method].FromString,
                response_serializer=lambda message: message.SerializeToString(),
            )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(self.SERVICE, handlers),)
        )
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None)
            self._server = None

    @property
    def url(self) -> str:
        """The value for NBENV_GCP_ENDPOINT_NOTEBOOKS_V1."""
        return f"http://127.0.0.1:{self.port}"

    def fail(self, code: str, *, method: str | None = None, times: int = 1) -> None:
        """Answer the next TIMES calls (of METHOD) with gRPC status CODE (e.g. "UNAVAILABLE")."""
        import grpc

        with self._lock:
            self._faults.append((method, getattr(grpc.StatusCode, code), times))

    def by_display_name(self) -> dict[str, list[Any]]:
        with self._lock:
            result: dict[str, list[Any]] = {}
            for environment in self.environments.values():
                result.setdefault(environment.display_name, []).append(environment)
            return result

    def _wrap(self, method: str, function: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
        from google.protobuf import json_format

        def serve(request: Any, context: Any) -> Any:
            with self._lock:
                self.calls.append((method, json_format.MessageToDict(request)))
                for index, (only, code, times) in enumerate(self._faults):
                    if only in (None, method) and times > 0:
                        self._faults[index] = (only, code, times - 1)
                        context.abort(code, f"injected {code.name} for {method}")
                try:
                    return function(request)
                except _GrpcAbort as refusal:
                    context.abort(refusal.code, refusal.message)

        return serve

    def _done(self, response: Any) -> Any:
        from google.longrunning import operations_pb2

        operation = operations_pb2.Operation(
            name=f"projects/p/locations/l/operations/{uuid.uuid4().hex[:12]}", done=True
        )
        operation.response.Pack(response)
        return operation

    def _create(self, request: Any) -> Any:
        import grpc
        from google.cloud import notebooks_v1

        if self.end_of_support:
            raise _GrpcAbort(grpc.StatusCode.FAILED_PRECONDITION, self.END_OF_SUPPORT)
        name = f"{request.parent}/environments/{request.environment_id}"
        if name in self.environments:
            raise _GrpcAbort(grpc.StatusCode.ALREADY_EXISTS, f"{name} already exists")
        environment = notebooks_v1.Environment.pb()()
        environment.CopyFrom(request.environment)
        environment.name = name
        self.environments[name] = environment
        return self._done(environment)

    def _delete(self, request: Any) -> Any:
        import grpc
        from google.protobuf import empty_pb2

        if self.environments.pop(request.name, None) is None:
            raise _GrpcAbort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return self._done(empty_pb2.Empty())

    def _list(self, request: Any) -> Any:
        from google.cloud import notebooks_v1

        response = notebooks_v1.ListEnvironmentsResponse.pb()()
        for name, environment in sorted(self.environments.items()):
            if name.startswith(request.parent + "/"):
                response.environments.append(environment)
        return response

    def _get(self, request: Any) -> Any:
        import grpc

        if request.name not in self.environments:
            raise _GrpcAbort(grpc.StatusCode.NOT_FOUND, f"{request.name} not found")
        return self.environments[request.name]


class _GrpcAbort(Exception):
    def __init__(self, code: Any, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- Pub/Sub emulator -------------------------------------------------------------------------

EMULATOR = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"


def emulator_path() -> str | None:
    """Google's Pub/Sub emulator launcher, or None where it is not installed (or no Java)."""
    path = os.environ.get("PUBSUB_EMULATOR_BIN") or EMULATOR
    if not Path(path).is_file() or shutil.which("java") is None:
        return None
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PubSubEmulator(Startable):
    """Runs the Pub/Sub emulator on a free loopback port; `host` is PUBSUB_EMULATOR_HOST."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Self:
        binary = emulator_path()
        assert binary is not None, "the Pub/Sub emulator is not installed"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.data_dir / "emulator.log", "wb")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            [binary, "--host=127.0.0.1", f"--port={self.port}", f"--dir={self.data_dir}"],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    "the Pub/Sub emulator exited: "
                    + (self.data_dir / "emulator.log").read_text(errors="replace")[-2000:]
                )
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the Pub/Sub emulator did not listen on {self.host} in {timeout}s")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            import signal

            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            self._log.close()


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05) -> Any:
    """Poll CONDITION until it returns something truthy; that value (AssertionError on timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
