"""The composition root: config + store + backend → the service, for every entry point."""

from __future__ import annotations

import os
from dataclasses import dataclass

from bot.config import Config, load_config
from bot.service.app import Nbenv
from bot.service.diff import Differ
from bot.service.jobs import Handler, JobWorker
from bot.store.database import make_engine, upgrade
from bot.store.uow import Store


def job_handlers(app: Nbenv) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {"instance": app.create_instance}

    def slack_job(job: dict) -> None:  # type: ignore[type-arg]
        # Slow /nbenv work deferred by the Slack adapter (plans, diffs, confirmed changes).
        from bot.slack.interactions import run_job

        run_job(app, job)

    handlers["slack"] = slack_job
    if app.backend is not None:
        backend = app.backend
        handlers["build"] = lambda job: backend.run_build(job["image"], job["ref"], job["actor"])
    return handlers


def make_differ(config: Config) -> Differ:
    """`nbenv diff`: the image folders at both SHAs come from git when the repo is here."""
    from bot.backends.local.git import GitSource

    return Differ(GitSource(config))


@dataclass
class Runtime:
    config: Config
    store: Store
    app: Nbenv
    worker: JobWorker


def build_runtime(
    config_path: str | None = None, database_url: str | None = None, *, migrate: bool = True
) -> Runtime:
    config = load_config(config_path or os.environ.get("NBENV_CONFIG"))
    engine = make_engine(database_url)
    if migrate:
        upgrade(engine)
    store = Store(engine)
    backend = None
    app = Nbenv(config, store, backend=backend, differ=make_differ(config))
    worker = JobWorker(store, job_handlers(app))
    return Runtime(config=config, store=store, app=app, worker=worker)
