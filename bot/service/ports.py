"""What the service layer needs from a backend (local or gcp). Adapters implement this."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class InstanceRequest:
    name: str
    image: str
    env: str
    sha: str
    requested_by: str
    # Asked for by the person who runs nbenv (CLI, console), not through Slack: on the
    # local backend, only they may get an instance that is not isolated from the bot.
    for_operator: bool = False


@dataclass(frozen=True)
class InstanceInfo:
    name: str
    url: str | None
    state: str  # starting | running | stopped | failed
    details: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str

    def run_build(self, image: str, ref: str | None, requested_by: str) -> dict[str, Any]:
        """Start (gcp) or run (local) the staging pipeline; returns what it knows of the build."""
        ...

    def mirror_pointer(self, image: str, env: str, sha: str | None) -> None:
        """Make the remote copy of an environment pointer (registry tag) say SHA. Idempotent."""
        ...

    def mirrors_pointers(self) -> bool:
        """True when pointers have a remote copy that promote/rollback must move (a saga)."""
        ...

    def check_version(self, image: str, sha: str) -> None:
        """Refused unless the remote copy has SHA (only called when mirrors_pointers())."""
        ...

    def instance_refusal(self, user: str) -> str | None:
        """Why USER cannot be given an instance at all, or None. Config only, no remote call:
        it runs on the request (ack) path, before anything is queued."""
        ...

    def start_instance(self, request: InstanceRequest) -> InstanceInfo: ...

    def stop_instance(self, name: str, details: dict[str, Any]) -> None: ...
