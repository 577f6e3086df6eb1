"""Notebooks API v1 Environments `IMAGE.ENV`, for teams still on user-managed notebooks.

Legacy, off unless `gcp.mirror_legacy_environments: true`. An Environment only serves to
create a user-managed notebooks instance from it, and Google ended user-managed notebooks:
since April 14, 2025 new instances cannot be created (the API answers FAILED_PRECONDITION
"Vertex AI Workbench user-managed notebooks have been deprecated and new instances cannot
be created"), and the Terraform provider dropped `google_notebooks_environment` with the
other v1 resources because the products "have reached End of Life"
(GoogleCloudPlatform/magic-modules#18583). Google documents no shutdown of
`environments.create` itself, so the mirror stays for teams that still read these
Environments, and says how to turn it off when the API refuses.

Environments cannot be changed once made, so moving `IMAGE.production` means making a
new Environment for the new SHA and then deleting the old one: there is never a moment
without one. The ID is derived from image, environment and SHA (IDs allow only
lowercase letters, digits and dashes); the display name is `IMAGE.ENV`.
"""

from __future__ import annotations

import re
from typing import Any

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.backends.gcp.registry import RegistryPath
from bot.domain.errors import Refused
from bot.domain.names import short

SERVICE = "Notebooks API (v1)"
ROLE = "roles/notebooks.admin"
TURN_OFF = (
    "user-managed notebooks, the only users of Notebooks v1 Environments, are past Google's "
    "end of support: set gcp.mirror_legacy_environments: false to stop mirroring them (the "
    "registry tags are moved regardless)"
)


def environment_id(image: str, env: str, sha: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", image.lower()).strip("-")
    suffix = f"-{env}-{sha[:12]}"
    base = ("nb-" + slug if not slug[:1].isalpha() else slug)[: 63 - len(suffix)].rstrip("-")
    return base + suffix


def display_name(image: str, env: str) -> str:
    return f"{image}.{env}"


class LegacyEnvironments:
    def __init__(
        self, project: str, location: str, registry: RegistryPath, clients: Clients, caller: Caller
    ) -> None:
        self.project = project
        self.location = location
        self.registry = registry
        self.clients = clients
        self.caller = caller

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def list(self, image: str, env: str) -> list[Any]:
        client = self.clients.legacy_notebooks()

        def every_page(**options: Any) -> list[Any]:
            return list(client.list_environments(parent=self.parent, **options))

        listed = self.caller.call(
            Op(SERVICE, "list environments", self.parent, "notebooks.environments.list", ROLE),
            every_page,
        )
        wanted = display_name(image, env)
        return [environment for environment in listed if environment.display_name == wanted]

    def mirror(self, image: str, env: str, sha: str | None) -> None:
        """Make `IMAGE.ENV` say SHA (None: remove it): create the new, then delete the old."""
        from google.api_core import exceptions as gexc
        from google.cloud import notebooks_v1

        client = self.clients.legacy_notebooks()
        keep = environment_id(image, env, sha) if sha else None
        existing = self.list(image, env)
        names = {environment.name.rsplit("/", 1)[-1] for environment in existing}
        if sha is not None and keep not in names:
            resource = f"{self.parent}/environments/{keep}"
            try:
                create = Op(
                    SERVICE,
                    f"create environment {display_name(image, env)} at {short(sha)}",
                    resource,
                    "notebooks.environments.create",
                    ROLE,
                )
                operation = self.caller.call(
                    create,
                    client.create_environment,
                    parent=self.parent,
                    environment_id=keep,
                    environment=notebooks_v1.Environment(
                        display_name=display_name(image, env),
                        description=f"nbenv: {image} {env} at {sha}",
                        container_image=notebooks_v1.ContainerImage(
                            repository=self.registry.image_url(image), tag=sha
                        ),
                    ),
                    passthrough=(gexc.Conflict, gexc.FailedPrecondition),
                )
                # Only delete the old one once the new one certainly exists.
                self.caller.wait(create, operation)
            except gexc.Conflict:
                pass
            except gexc.FailedPrecondition as refused:
                raise Refused(
                    f"{SERVICE} refused to {create.action} ({resource}): "
                    f"{' '.join(str(refused.message).split())[:200]}. {TURN_OFF}"
                ) from None
        for environment in existing:
            if environment.name.rsplit("/", 1)[-1] == keep:
                continue
            delete = Op(
                SERVICE,
                f"delete the old environment {display_name(image, env)}",
                environment.name,
                "notebooks.environments.delete",
                ROLE,
            )
            try:
                operation = self.caller.call(
                    delete,
                    client.delete_environment,
                    name=environment.name,
                    passthrough=(gexc.NotFound,),
                )
                self.caller.wait(delete, operation)
            except gexc.NotFound:
                pass
