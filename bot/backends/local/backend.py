"""The local backend: git + the notebook runner for builds, the store for pointers,
Jupyter servers on loopback for instances. No cloud account needed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bot.backends.local.git import Repositories
from bot.backends.local.instances import LocalInstances
from bot.backends.local.pipeline import BUILD_TIMEOUT_S, EmitBuild, EmitReport, LocalPipeline
from bot.config import Config
from bot.service.ports import InstanceInfo, InstanceRequest


class LocalBackend:
    name = "local"

    def __init__(
        self,
        config: Config,
        home: Path,
        *,
        emit_build: EmitBuild,
        emit_report: EmitReport,
        use_docker: bool | None = None,
        python: str = sys.executable,
        build_timeout_s: float = BUILD_TIMEOUT_S,
    ) -> None:
        """EMIT_BUILD and EMIT_REPORT are the relay's entry points (BuildRelay.handle_build,
        BuildRelay.handle_report); USE_DOCKER None means: use Docker when an engine answers."""
        repositories = Repositories(config, home)
        self.pipeline = LocalPipeline(
            config,
            home,
            emit_build,
            emit_report,
            use_docker=use_docker,
            python=python,
            timeout_s=build_timeout_s,
            repositories=repositories,
        )
        self.instances = LocalInstances(
            config, home, use_docker=use_docker, python=python, repositories=repositories
        )

    def run_build(self, image: str, ref: str | None, requested_by: str) -> dict[str, Any]:
        return self.pipeline.run(image, ref, requested_by)

    def mirror_pointer(self, image: str, env: str, sha: str | None) -> None:
        """Nothing to mirror: on the local backend the store is the only copy of a pointer."""

    def mirrors_pointers(self) -> bool:
        return False

    def check_version(self, image: str, sha: str) -> None:
        """Nothing to check: locally the store's versions are the registry."""

    def start_instance(self, request: InstanceRequest) -> InstanceInfo:
        return self.instances.start(request)

    def stop_instance(self, name: str, details: dict[str, Any]) -> None:
        self.instances.stop(name, details)
