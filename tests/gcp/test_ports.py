"""The optional things a backend can do are declared ports, and each backend says which
it has: who runs a SHA comes from Workbench's own list on gcp, and queued jobs go to
Pub/Sub there; locally the store's record and this process do both."""

from __future__ import annotations

from pathlib import Path

from bot.bootstrap import build_runtime
from bot.service.ports import DispatchesJobs, ListsInstances


def test_gcp_lists_instances_and_dispatches_jobs(gcp_runtime) -> None:  # type: ignore[no-untyped-def]
    backend = gcp_runtime.nbenv.backend  # given at construction, never attached afterwards
    assert isinstance(backend, ListsInstances)
    assert isinstance(backend, DispatchesJobs)
    assert backend.job_dispatcher(gcp_runtime.store).dispatch_due() == 0


def test_local_has_neither(config_file: Path, sqlite_url: str) -> None:
    backend = build_runtime(str(config_file), sqlite_url).nbenv.backend
    assert backend is not None and backend.name == "local"
    assert not isinstance(backend, ListsInstances)
    assert not isinstance(backend, DispatchesJobs)
