"""Workbench instances (Notebooks API v2) pinned to a version, and who runs which SHA.

An instance runs the container `{registry}/{image}:{SHA}`: the SHA tag, never a moving
environment tag, so promoting or rolling back never changes what a running notebook
has. Labels carry image, environment, SHA and requester, so listing by label answers
"who runs which SHA" even for instances made outside nbenv's store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from bot.backends.gcp.clients import Caller, Clients, Op
from bot.backends.gcp.registry import RegistryPath
from bot.config import Config
from bot.domain.errors import ConfigError, Refused
from bot.domain.names import short
from bot.service.ports import InstanceInfo, InstanceRequest

SERVICE = "Notebooks API"
ROLE = "roles/notebooks.admin"
LABEL_IMAGE = "nbenv-image"
LABEL_ENV = "nbenv-env"
LABEL_SHA = "nbenv-sha"
LABEL_BY = "nbenv-requested-by"
MANAGED = {"managed-by": "nbenv"}
# Workbench's idle shutdown: "To enable idle shutdown, create the instance with the
# idle-timeout-seconds key in metadata, with the value set to a number of seconds"; "An
# integer representing the idle time in seconds" (cloud.google.com/vertex-ai/docs/
# workbench/instances/idle-shutdown and .../instances/manage-metadata). Without the key,
# an instance made through the API has no idle shutdown.
IDLE_TIMEOUT_KEY = "idle-timeout-seconds"
_STATES = {
    "PROVISIONING": "starting",
    "STARTING": "starting",
    "INITIALIZING": "starting",
    "UPGRADING": "starting",
    "ACTIVE": "running",
    "STOPPING": "stopped",
    "STOPPED": "stopped",
    "SUSPENDING": "stopped",
    "SUSPENDED": "stopped",
    "DELETED": "stopped",
}


def _idle_metadata(seconds: int | None) -> dict[str, str]:
    return {IDLE_TIMEOUT_KEY: str(seconds)} if seconds is not None else {}


def _idle_timeout(metadata: dict[str, str]) -> int | None:
    """The idle timeout an existing instance was given (None: none, or not a number)."""
    value = metadata.get(IDLE_TIMEOUT_KEY, "")
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 9 else None


def label_value(text: str) -> str:
    """A GCP label value: lowercase letters, digits, '_' and '-', at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "_", text.lower())[:63]


@dataclass(frozen=True)
class RunningInstance:
    """An instance as the Notebooks API lists it."""

    name: str
    location: str
    image: str | None
    env: str | None
    sha: str | None
    requested_by: str | None
    state: str  # starting | running | stopped | failed
    url: str | None


class Workbench:
    def __init__(self, config: Config, clients: Clients, caller: Caller) -> None:
        assert config.gcp is not None
        self.config = config
        self.gcp = config.gcp
        self.registry = RegistryPath.parse(self.gcp.registry)
        self.clients = clients
        self.caller = caller

    def location(self, image: str) -> str:
        """IMAGE's Workbench zone, as configured: never guessed from the region (a guessed
        `{region}-a` may not exist, e.g. us-east1-a, or may lack the image's machine or GPU)."""
        zone = self.config.images[image].instance.location or self.gcp.zone
        if zone is None:  # load_config refuses this; a Config built otherwise may not
            raise ConfigError(
                f"images.{image}.instance.location: required on the gcp backend (or gcp.zone)"
            )
        return zone

    def owner_problem(self, user: str) -> str | None:
        """Why USER cannot be given a Workbench instance (config only: cheap), or None."""
        if user in self.gcp.google_accounts:
            return None
        return (
            f"no Google account is mapped to {user}, and a Workbench instance opens only for "
            "the Google account it is created for: ask whoever runs nbenv to add "
            f"`gcp.google_accounts: {{{user}: you@example.com}}` to its config"
        )

    def locations(self) -> list[str]:
        return sorted({self.location(image) for image in self.config.images})

    def console_url(self, location: str, name: str) -> str:
        return (
            "https://console.cloud.google.com/vertex-ai/workbench/instances/details/"
            f"{quote(location)}/{quote(name)}?project={quote(self.gcp.project)}"
        )

    def _accelerators(self, image: str) -> list[Any]:
        from google.cloud import notebooks_v2

        settings = self.config.images[image].instance
        if not settings.accelerator_type or settings.accelerator_count < 1:
            return []
        kinds = notebooks_v2.AcceleratorConfig.AcceleratorType
        if settings.accelerator_type not in kinds.__members__:
            known = ", ".join(k for k in kinds.__members__ if not k.endswith("UNSPECIFIED"))
            raise ConfigError(
                f"images.{image}.instance.accelerator_type: {settings.accelerator_type!r} is "
                f"not a Workbench accelerator (one of {known})"
            )
        return [
            notebooks_v2.AcceleratorConfig(
                type_=kinds[settings.accelerator_type], core_count=settings.accelerator_count
            )
        ]

    def start(self, request: InstanceRequest) -> InstanceInfo:
        from google.api_core import exceptions as gexc
        from google.cloud import notebooks_v2

        # Refused before anything is created: an instance nobody who asked can open is waste.
        problem = self.owner_problem(request.requested_by)
        if problem:
            raise Refused(problem)
        owner = self.gcp.google_accounts[request.requested_by]
        settings = self.config.images[request.image].instance
        location = self.location(request.image)
        accelerators = self._accelerators(request.image)
        parent = f"projects/{self.gcp.project}/locations/{location}"
        resource = f"{parent}/instances/{request.name}"
        about = {
            LABEL_IMAGE: request.image,
            LABEL_ENV: request.env,
            LABEL_SHA: request.sha,
            LABEL_BY: request.requested_by,
        }
        instance = notebooks_v2.Instance(
            gce_setup=notebooks_v2.GceSetup(
                machine_type=settings.machine_type,
                accelerator_configs=accelerators,
                # Unset, Google installs no GPU driver (GPUDriverConfig: "If this field is
                # empty or set to false, the GPU driver won't be installed"; gcloud's
                # --install-gpu-driver): the GPU would be unusable from the notebook.
                gpu_driver_config=(
                    notebooks_v2.GPUDriverConfig(enable_gpu_driver=True) if accelerators else None
                ),
                container_image=notebooks_v2.ContainerImage(
                    repository=self.registry.image_url(request.image), tag=request.sha
                ),
                boot_disk=notebooks_v2.BootDisk(disk_size_gb=settings.boot_disk_gb),
                # Unset, Google runs the VM as the Compute Engine default account, which
                # usually holds far more than reading the registry needs.
                service_accounts=(
                    [notebooks_v2.ServiceAccount(email=self.gcp.instance_service_account)]
                    if self.gcp.instance_service_account
                    else []
                ),
                # Labels must be lowercase and short; metadata keeps the exact values.
                metadata={**about, **_idle_metadata(settings.idle_timeout)},
            ),
            labels={**MANAGED, **{key: label_value(value) for key, value in about.items()}},
            # "Single user only" access: the person who asked opens JupyterLab with their own
            # Google account (Instance.instance_owners: "If not specified, all of the service
            # account users of your VM instance's service account can use the instance").
            instance_owners=[owner],
        )
        client = self.clients.notebooks()
        op = Op(
            SERVICE,
            f"create instance {request.name} of {request.image} at {short(request.sha)}",
            resource,
            "notebooks.instances.create",
            ROLE,
        )
        try:
            operation = self.caller.call(
                op,
                client.create_instance,
                parent=parent,
                instance=instance,
                instance_id=request.name,
                passthrough=(gexc.Conflict,),
            )
        except gexc.Conflict:
            # A retried create whose first answer was lost: the instance is ours if its
            # labels say so; any other instance of that name is someone else's.
            existing = self._get(resource)
            if existing.labels.get(LABEL_SHA) != request.sha or existing.labels.get(
                LABEL_IMAGE
            ) != label_value(request.image):
                raise Refused(
                    f"an instance named {request.name} already exists in {location} "
                    "and runs something else: choose another --name"
                ) from None
            return self._info(request.name, location, existing, operation=None)
        return InstanceInfo(
            name=request.name,
            url=self.console_url(location, request.name),
            state="starting",
            details={
                "project": self.gcp.project,
                "location": location,
                "resource": resource,
                "container": self.registry.reference(request.image, request.sha),
                "operation": operation.operation.name,
                "idle_timeout_s": settings.idle_timeout,
            },
        )

    def _get(self, resource: str) -> Any:
        client = self.clients.notebooks()
        return self.caller.call(
            Op(SERVICE, "read instance", resource, "notebooks.instances.get", ROLE),
            client.get_instance,
            name=resource,
        )

    def _info(self, name: str, location: str, instance: Any, operation: str | None) -> InstanceInfo:
        return InstanceInfo(
            name=name,
            url=self._url(location, name, instance),
            state=_STATES.get(instance.state.name, "failed"),
            details={
                "project": self.gcp.project,
                "location": location,
                "resource": instance.name,
                "container": (
                    f"{instance.gce_setup.container_image.repository}:"
                    f"{instance.gce_setup.container_image.tag}"
                ),
                "operation": operation,
                "idle_timeout_s": _idle_timeout(dict(instance.gce_setup.metadata)),
            },
        )

    def _url(self, location: str, name: str, instance: Any) -> str:
        if instance.proxy_uri:
            return f"https://{instance.proxy_uri}"
        return self.console_url(location, name)

    def stop(self, name: str, details: dict[str, Any]) -> None:
        """Stop the VM (its disk, and the user's work on it, stay); a gone instance is fine.

        Stopping is a long-running operation (the instance is STOPPING until it ends, which
        takes a minute or so): it is started here, not waited for; `list` tells STOPPING
        and STOPPED alike as stopped."""
        from google.api_core import exceptions as gexc
        from google.cloud import notebooks_v2

        resource = details.get("resource")
        if not resource:
            location = details.get("location") or self.gcp.zone
            if not location:
                raise Refused(
                    f"nbenv did not record the zone of instance {name}: stop it in the console"
                )
            resource = f"projects/{self.gcp.project}/locations/{location}/instances/{name}"
        client = self.clients.notebooks()
        try:
            self.caller.call(
                Op(SERVICE, f"stop instance {name}", resource, "notebooks.instances.stop", ROLE),
                client.stop_instance,
                request=notebooks_v2.StopInstanceRequest(name=resource),
                passthrough=(gexc.NotFound,),
            )
        except gexc.NotFound:
            return

    def list(self, image: str | None = None, sha: str | None = None) -> list[RunningInstance]:
        """nbenv's instances (by label), optionally of one image and SHA, in every location."""
        client = self.clients.notebooks()
        found: list[RunningInstance] = []
        locations = [self.location(image)] if image else self.locations()
        for location in locations:
            parent = f"projects/{self.gcp.project}/locations/{location}"

            def every_page(parent: str = parent, **options: Any) -> list[Any]:
                return list(client.list_instances(parent=parent, **options))

            listed = self.caller.call(
                Op(SERVICE, "list instances", parent, "notebooks.instances.list", ROLE),
                every_page,
            )
            for instance in listed:
                labels = dict(instance.labels)
                if labels.get("managed-by") != "nbenv":
                    continue
                metadata = dict(instance.gce_setup.metadata)
                running = RunningInstance(
                    name=instance.name.rsplit("/", 1)[-1],
                    location=location,
                    image=metadata.get(LABEL_IMAGE) or labels.get(LABEL_IMAGE),
                    env=labels.get(LABEL_ENV),
                    sha=labels.get(LABEL_SHA) or instance.gce_setup.container_image.tag,
                    # Labels are lowercase; Slack user IDs are uppercase.
                    requested_by=metadata.get(LABEL_BY) or labels.get(LABEL_BY, "").upper() or None,
                    state=_STATES.get(instance.state.name, "failed"),
                    url=self._url(location, instance.name.rsplit("/", 1)[-1], instance),
                )
                if image is not None and running.image != image:
                    continue
                if sha is not None and running.sha != sha:
                    continue
                found.append(running)
        return found
