"""The local backend: git + the notebook runner for builds, the store for pointers,
Jupyter servers on loopback for instances. No cloud account needed."""

from __future__ import annotations

import sys
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config
from bot.service.ports import InstanceInfo, InstanceRequest

if TYPE_CHECKING:
    from bot.backends.local.instances import LocalInstances
    from bot.backends.local.pipeline import EmitBuild, EmitReport, LocalPipeline


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
        build_timeout_s: float | None = None,
    ) -> None:
        """EMIT_BUILD and EMIT_REPORT are the relay's entry points (BuildRelay.handle_build,
        BuildRelay.handle_report); USE_DOCKER None means: use Docker when an engine answers.

        The pipeline and the instance manager load on first use: a bot that only answers
        Slack (the worker runs builds) starts without them.
        """
        self._config = config
        self._home = home
        self._emit_build = emit_build
        self._emit_report = emit_report
        self._use_docker = use_docker
        self._python = python
        self._build_timeout_s = build_timeout_s

    @cached_property
    def _repositories(self):  # type: ignore[no-untyped-def]
        from bot.backends.local.git import Repositories

        return Repositories(self._config, self._home)

    @cached_property
    def pipeline(self) -> LocalPipeline:
        from bot.backends.local.pipeline import BUILD_TIMEOUT_S, LocalPipeline

        return LocalPipeline(
            self._config,
            self._home,
            self._emit_build,
            self._emit_report,
            use_docker=self._use_docker,
            python=self._python,
            timeout_s=self._build_timeout_s or BUILD_TIMEOUT_S,
            repositories=self._repositories,
        )

    @cached_property
    def instances(self) -> LocalInstances:
        from bot.backends.local.instances import LocalInstances

        return LocalInstances(
            self._config,
            self._home,
            use_docker=self._use_docker,
            python=self._python,
            repositories=self._repositories,
        )

    def run_build(self, image: str, ref: str | None, requested_by: str) -> dict[str, Any]:
        return self.pipeline.run(image, ref, requested_by)

    def mirror_pointer(self, image: str, env: str, sha: str | None) -> None:
        """Nothing to mirror: on the local backend the store is the only copy of a pointer."""

    def mirrors_pointers(self) -> bool:
        return False

    def check_version(self, image: str, sha: str) -> None:
        """Nothing to check: locally the store's versions are the registry."""

    def instance_refusal(self, user: str) -> str | None:
        """None: who may share the bot's OS user is decided per request, in the job."""
        return None

    def start_instance(self, request: InstanceRequest) -> InstanceInfo:
        return self.instances.start(request)

    def stop_instance(self, name: str, details: dict[str, Any]) -> None:
        self.instances.stop(name, details)
