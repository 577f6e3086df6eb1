"""GcpBackend: the service's Backend port on Google Cloud.

Builds run on Cloud Build triggers; environment pointers are mirrored to Artifact
Registry tags (and, optionally, Notebooks v1 Environments); instances are Workbench
instances; slow work travels through Pub/Sub. Constructing it loads no google-cloud
library: each client is made the first time a method needs it.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.backends.gcp.builds import CloudBuild, check_ref
from bot.backends.gcp.clients import Caller, CallPolicy, Clients
from bot.backends.gcp.environments import LegacyEnvironments
from bot.backends.gcp.instances import RunningInstance, Workbench
from bot.backends.gcp.pubsub import JobDispatcher, JobPublisher
from bot.backends.gcp.registry import ArtifactRegistry, RegistryPath, RegistryVersion
from bot.backends.gcp.vulnerabilities import ArtifactAnalysis
from bot.config import Config
from bot.domain.errors import ConfigError
from bot.domain.names import Env
from bot.domain.vulnerabilities import Scan
from bot.service.ports import InstanceInfo, InstanceRequest
from bot.store.uow import Store

log = logging.getLogger(__name__)


class GcpBackend:
    name = "gcp"

    def __init__(
        self,
        config: Config,
        *,
        policy: CallPolicy | None = None,
        credentials: Any = None,
    ) -> None:
        if config.gcp is None:
            raise ConfigError("gcp: required when backend is gcp")
        self.config = config
        self.gcp = config.gcp
        self.clients = Clients(credentials)
        self.caller = Caller(policy)
        self.path = RegistryPath.parse(self.gcp.registry)
        self.registry = ArtifactRegistry(self.path, self.clients, self.caller)
        self.analysis = ArtifactAnalysis(self.path, self.registry, self.clients, self.caller)
        self.builds = CloudBuild(self.gcp, self.clients, self.caller)
        self.workbench = Workbench(config, self.clients, self.caller)
        self.jobs = JobPublisher(self.gcp.project, self.gcp.topics.jobs, self.clients, self.caller)
        if self.gcp.mirror_legacy_environments:
            log.warning(
                "gcp.mirror_legacy_environments is on: promotions and rollbacks also keep "
                "Notebooks v1 Environments IMAGE.ENV, a legacy of user-managed notebooks, "
                "which Google no longer supports (see bot/backends/gcp/environments.py)"
            )

    # -- builds ------------------------------------------------------------------------------

    def run_build(self, image: str, ref: str | None, requested_by: str) -> dict[str, Any]:
        ref = check_ref(ref or self.config.images[image].source.staging_branch)
        return self.builds.run_trigger(image, ref, requested_by)

    def get_build(self, build_id: str) -> dict[str, Any]:
        return self.builds.get_build(build_id)

    # -- environment pointers (saga steps) ----------------------------------------------------

    def mirrors_pointers(self) -> bool:
        return True

    def check_version(self, image: str, sha: str) -> None:
        """Refused unless SHA of IMAGE was pushed: nothing may point at a missing image."""
        self.registry.check_version(image, sha)

    def mirror_pointer(self, image: str, env: str, sha: str | None) -> None:
        if sha is None:
            # An empty pointer removes nothing remote: nbenv never deletes tags (nor legacy
            # environments); see bot/backends/gcp/registry.py for why.
            return
        self.registry.move_tag(image, env, sha)
        if self.gcp.mirror_legacy_environments:
            self._legacy(image).mirror(image, env, sha)

    def _legacy(self, image: str) -> LegacyEnvironments:
        return LegacyEnvironments(
            self.gcp.project, self.workbench.location(image), self.path, self.clients, self.caller
        )

    def registry_pointers(self, image: str) -> dict[str, str | None]:
        """What the registry's environment tags say now (to compare with the store)."""
        return self.registry.pointers(image, tuple(env.value for env in Env))

    def versions(self, image: str) -> list[RegistryVersion]:
        return self.registry.versions(image)

    # -- known vulnerabilities (Artifact Analysis) -------------------------------------------

    def vulnerability_scan(self, image: str, sha: str) -> Scan:
        return self.analysis.scan(image, sha)

    def known_scan(self, image: str, sha: str) -> Scan | None:
        return self.analysis.known(image, sha)

    # -- instances ---------------------------------------------------------------------------

    def instance_refusal(self, user: str) -> str | None:
        """Why USER cannot have an instance: no Google account mapped (config only)."""
        return self.workbench.owner_problem(user)

    def start_instance(self, request: InstanceRequest) -> InstanceInfo:
        return self.workbench.start(request)

    def stop_instance(self, name: str, details: dict[str, Any]) -> None:
        self.workbench.stop(name, details)

    def instances_by_label(
        self, image: str | None = None, sha: str | None = None
    ) -> list[RunningInstance]:
        """Who runs which SHA: nbenv's Workbench instances, found by their labels."""
        return self.workbench.list(image, sha)

    # -- job queue ---------------------------------------------------------------------------

    def publish_job(self, key: str, kind: str, payload: dict[str, Any]) -> str:
        return self.jobs.publish(key, kind, payload)

    def job_dispatcher(self, store: Store) -> JobDispatcher:
        """What hands the store's queued jobs to Pub/Sub (see bot.backends.gcp.pubsub)."""
        return JobDispatcher(store, self.jobs)
