"""Artifact Registry: versions are the SHA tags, environments are the tags beside them.

A build pushes `{registry}/{image}:{SHA}`; nbenv points the tags `staging`,
`production` and `fallback` at the same image version (digest) as that SHA tag.
Every method is idempotent: moving a tag to where it already points changes nothing.

nbenv creates and moves tags but never deletes one. No plan empties an environment (every
pointer change names a SHA), and deleting a tag takes `artifactregistry.tags.delete`, which
the Writer role lacks: only the Repository Administrator role grants it, together with
deleting versions and packages, i.e. the images themselves. A bot holding that could
destroy what production runs; one that cannot delete can at worst point a tag wrongly,
and the store's pointers put it right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.domain.errors import ConfigError, Refused
from bot.domain.names import is_full_sha, short

SERVICE = "Artifact Registry"
WRITER = "roles/artifactregistry.writer"
READER = "roles/artifactregistry.reader"
_HOST = re.compile(r"(?P<location>[a-z0-9-]+)-docker\.pkg\.dev")


@dataclass(frozen=True)
class RegistryPath:
    """`LOCATION-docker.pkg.dev/PROJECT/REPOSITORY[/PATH]` taken apart."""

    url: str
    location: str
    project: str
    repository: str
    prefix: str  # folders inside the repository, "" for none

    @classmethod
    def parse(cls, registry: str) -> RegistryPath:
        parts = registry.strip().rstrip("/").split("/")
        match = _HOST.fullmatch(parts[0]) if parts else None
        if match is None or len(parts) < 3 or not all(parts[1:]):
            raise ConfigError(
                f"gcp.registry: expected LOCATION-docker.pkg.dev/PROJECT/REPOSITORY[/PATH], "
                f"got {registry!r}"
            )
        return cls(
            url="/".join(parts),
            location=match["location"],
            project=parts[1],
            repository=parts[2],
            prefix="/".join(parts[3:]),
        )

    @property
    def repository_name(self) -> str:
        return f"projects/{self.project}/locations/{self.location}/repositories/{self.repository}"

    def package(self, image: str) -> str:
        """The package resource of IMAGE; '/' inside a package ID is escaped as the API wants."""
        package_id = f"{self.prefix}/{image}" if self.prefix else image
        return f"{self.repository_name}/packages/{quote(package_id, safe='')}"

    def image_url(self, image: str) -> str:
        return f"{self.url}/{image}"

    def reference(self, image: str, sha: str) -> str:
        """What a Docker client (and a Workbench instance) pulls: pinned to the SHA tag."""
        return f"{self.image_url(image)}:{sha}"


@dataclass(frozen=True)
class RegistryVersion:
    digest: str  # sha256:…
    created: str | None
    updated: str | None
    tags: tuple[str, ...]

    @property
    def shas(self) -> list[str]:
        return [tag for tag in self.tags if is_full_sha(tag)]


def _tag_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _timestamp(value: Any) -> str | None:
    if not value:
        return None
    iso = getattr(value, "isoformat", None)
    return iso() if iso else str(value)


class ArtifactRegistry:
    def __init__(self, path: RegistryPath, clients: Clients, caller: Caller) -> None:
        self.path = path
        self.clients = clients
        self.caller = caller

    def _op(self, action: str, resource: str, permission: str, role: str = WRITER) -> Op:
        return Op(SERVICE, action, resource, permission, role)

    def version_of(self, image: str, sha: str) -> str:
        """The version (digest) the SHA tag points at; Refused when the SHA was never pushed."""
        from google.api_core import exceptions as gexc

        client = self.clients.artifact_registry()
        name = f"{self.path.package(image)}/tags/{sha}"
        try:
            tag = self.caller.call(
                self._op(f"read tag {short(sha)}", name, "artifactregistry.tags.get", READER),
                client.get_tag,
                name=name,
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            raise Refused(
                f"{image} `{short(sha)}` is not in the registry: "
                f"{self.path.image_url(image)} has no tag {sha} (was the build pushed?)"
            ) from None
        return str(tag.version)

    def check_version(self, image: str, sha: str) -> None:
        self.version_of(image, sha)

    def move_tag(self, image: str, env: str, sha: str | None) -> bool:
        """Point tag ENV of IMAGE at the version of SHA; True if it moved.

        An empty pointer (None) leaves the tag where it is: nbenv never deletes tags (see
        the module docstring), so this makes no call at all.
        """
        if sha is None:
            return False
        from google.api_core import exceptions as gexc
        from google.cloud import artifactregistry_v1
        from google.protobuf import field_mask_pb2

        client = self.clients.artifact_registry()
        package = self.path.package(image)
        name = f"{package}/tags/{env}"
        version = self.version_of(image, sha)
        try:
            current = self.caller.call(
                self._op(f"read tag {env}", name, "artifactregistry.tags.get", READER),
                client.get_tag,
                name=name,
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            current = None
        if current is not None and current.version == version:
            return False
        action = f"point tag {env} at {short(sha)}"
        if current is None:
            try:
                self.caller.call(
                    self._op(action, name, "artifactregistry.tags.create"),
                    client.create_tag,
                    parent=package,
                    tag_id=env,
                    tag=artifactregistry_v1.Tag(version=version),
                    passthrough=(gexc.Conflict,),
                )
                return True
            except gexc.Conflict:
                pass  # made meanwhile (a retried create, another writer): update it instead
        self.caller.call(
            self._op(action, name, "artifactregistry.tags.update"),
            client.update_tag,
            tag=artifactregistry_v1.Tag(name=name, version=version),
            update_mask=field_mask_pb2.FieldMask(paths=["version"]),
        )
        return True

    def versions(self, image: str) -> list[RegistryVersion]:
        """Every pushed version of IMAGE with its digest, times and tags, newest first."""
        from google.api_core import exceptions as gexc
        from google.cloud import artifactregistry_v1

        client = self.clients.artifact_registry()
        package = self.path.package(image)
        request = artifactregistry_v1.ListVersionsRequest(
            parent=package, view=artifactregistry_v1.VersionView.FULL
        )

        def every_page(**options: Any) -> list[Any]:
            # The pager fetches further pages lazily, with the same retry and timeout.
            return list(client.list_versions(request=request, **options))

        try:
            listed = self.caller.call(
                self._op("list versions", package, "artifactregistry.versions.list", READER),
                every_page,
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            return []  # nothing pushed yet
        found = [
            RegistryVersion(
                digest=version.name.rsplit("/", 1)[-1],
                created=_timestamp(version.create_time),
                updated=_timestamp(version.update_time),
                tags=tuple(sorted(_tag_id(tag.name) for tag in version.related_tags)),
            )
            for version in listed
        ]
        return sorted(found, key=lambda v: v.created or "", reverse=True)

    def pointers(self, image: str, envs: tuple[str, ...]) -> dict[str, str | None]:
        """Which SHA each environment tag points at in the registry (None: no tag)."""
        result: dict[str, str | None] = dict.fromkeys(envs)
        for version in self.versions(image):
            for env in envs:
                if env in version.tags:
                    shas = version.shas
                    result[env] = shas[0] if shas else version.digest
        return result
