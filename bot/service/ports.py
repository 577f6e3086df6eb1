"""What the service layer needs from a backend (local or gcp). Adapters implement this.

`Backend` is what every backend does. What only some can do is a capability of its own
(`ListsInstances`, `DispatchesJobs`, `ScansImages`): the service asks `isinstance(backend, …)` and
falls back to what it does without, so each optional method is declared here, once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from bot.domain.notifications import Notification
    from bot.domain.vulnerabilities import Scan
    from bot.store.uow import Store, Tx


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


class ListedInstance(Protocol):
    """One instance as the backend itself lists it."""

    @property
    def name(self) -> str: ...

    @property
    def sha(self) -> str | None: ...

    @property
    def requested_by(self) -> str | None: ...

    @property
    def state(self) -> str: ...  # starting | running | stopped | failed


@runtime_checkable
class ListsInstances(Protocol):
    """A backend with its own list of the instances it runs (gcp: Workbench instances by
    their labels), so that instances stopped or made outside nbenv count as they are.
    Without it, the instances nbenv recorded are the list."""

    def instances_by_label(
        self, image: str | None = None, sha: str | None = None
    ) -> Sequence[ListedInstance]:
        """Refused (NbenvError) when the backend cannot answer now."""
        ...


class JobDispatch(Protocol):
    def dispatch_due(self) -> int:
        """Hand the store's due jobs to the backend's queue; how many were handed over."""
        ...


@runtime_checkable
class DispatchesJobs(Protocol):
    """A backend with a job queue of its own (gcp: Pub/Sub, pushing each job back to
    /pubsub/jobs). Without it, the process that queued a job runs it."""

    def job_dispatcher(self, store: Store) -> JobDispatch: ...


class Notifier(Protocol):
    """Queues what a use case tells people, in the transaction TX of the change it tells
    of (the Slack adapter: as Web API calls in the outbox); KEY makes a retry queue it
    once."""

    def notify(self, tx: Tx, key: str, notification: Notification) -> None: ...

    def notify_many(self, tx: Tx, notifications: Iterable[tuple[str, Notification]]) -> None:
        """Queue each (KEY, notification), in order, in one round trip: the build relay
        tells of many events' progress in each transaction."""
        ...


class DeliversMessages(Protocol):
    """Sends what the store's outbox holds (Slack's `bot.slack.outbox.OutboxSender`): the
    build relay delivers the messages it queued through this, never naming Slack."""

    def deliver_due(self, limit: int = 100) -> int:
        """Send what is due, in order; how many messages were delivered."""
        ...


@runtime_checkable
class ScansImages(Protocol):
    """A backend whose registry scans pushed images for known vulnerabilities (gcp:
    Artifact Analysis). Without it, nbenv says that scanning needs the gcp backend."""

    def vulnerability_scan(self, image: str, sha: str) -> Scan:
        """What the scanner knows of SHA's image now: its findings once the scan finished,
        else why not (a Scan saying so, never an exception for a scan not there yet).
        Refused (NbenvError) when the scanner cannot be asked. May call the network."""
        ...

    def known_scan(self, image: str, sha: str) -> Scan | None:
        """The last scan of SHA read recently, if any; no remote call (for App Home)."""
        ...
