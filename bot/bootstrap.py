"""The composition root: config + store + backend → the service, for every entry point."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.config import Config, load_config
from bot.domain.audit import AuditKey
from bot.service.jobs import Handler, JobWorker
from bot.service.nbenv import Nbenv
from bot.service.ports import Backend
from bot.service.runtime import Runtime
from bot.slack.notifications import SlackNotifier
from bot.store.database import make_engine, upgrade
from bot.store.uow import Store

if TYPE_CHECKING:
    from bot.builds.relay import BuildRelay
    from bot.service.diff import Differ


def job_handlers(nbenv: Nbenv) -> dict[str, Handler]:
    handlers: dict[str, Handler] = {"instance": nbenv.create_instance}

    def slack_job(job: dict) -> None:  # type: ignore[type-arg]
        # Slow /nbenv work deferred by the Slack adapter (plans, diffs, confirmed changes).
        from bot.slack.interactions import run_job

        run_job(nbenv, job)

    handlers["slack"] = slack_job
    if nbenv.backend is not None:
        handlers["build"] = nbenv.run_build
    return handlers


def make_backend(config: Config, relay: Callable[[], BuildRelay]) -> Backend:
    """The backend the config chooses. The local one reports its builds to RELAY, exactly
    as Cloud Build's Pub/Sub messages reach it, so both publish the same way; RELAY is
    called on the first build, not before."""
    if config.backend == "gcp":
        # Builds and instances are Google's; the relay runs as its own function there.
        from bot.backends.gcp import GcpBackend

        return GcpBackend(config)
    from bot.backends.local import LocalBackend
    from bot.config_file import nbenv_home

    return LocalBackend(
        config,
        nbenv_home(),
        emit_build=lambda *args: relay().handle_build(*args),
        emit_report=lambda *args: relay().handle_report(*args),
    )


def make_differ(config: Config) -> Callable[..., dict[str, Any]]:
    """`nbenv diff`: the image folders at both SHAs come from git when the repo is here.

    Loaded on the first diff: answering Slack at start needs none of it.
    """

    @functools.cache
    def loaded() -> Differ:
        from bot.backends.local.git import GitSource
        from bot.service.diff import Differ

        return Differ(GitSource(config))

    return lambda *args: loaded()(*args)


def audit_key() -> AuditKey | None:
    """NBENV_AUDIT_KEY, when set: every process that writes the audit log (bot, relay,
    CLI, worker) seals its entries with it (an HMAC chain)."""
    text = os.environ.get("NBENV_AUDIT_KEY", "")
    return AuditKey.from_text(text) if text else None


def build_runtime(
    config_path: str | None = None,
    database_url: str | None = None,
    *,
    migrate: bool = True,
    config: Config | None = None,
    run_by_operator: bool = False,
) -> Runtime:
    """CONFIG: already loaded from CONFIG_PATH (then it is not read again).

    RUN_BY_OPERATOR: for the entry points of the person who runs nbenv (CLI, console,
    demo); never for those that serve Slack (see `Nbenv`)."""
    if config is None:
        config = load_config(config_path or os.environ.get("NBENV_CONFIG"))
    engine = make_engine(database_url)
    if migrate:
        upgrade(engine)
    store = Store(engine, audit_key=audit_key())

    @functools.cache
    def relay() -> BuildRelay:
        # Made on the first build (answering Slack needs no relay), by then `nbenv` is
        # made. No sender: it queues its messages in the outbox, which the bot delivers.
        from bot.builds.relay import BuildRelay

        return BuildRelay(nbenv, None)

    nbenv = Nbenv(
        config,
        store,
        make_backend(config, relay),
        make_differ(config),
        notifier=SlackNotifier(),
        run_by_operator=run_by_operator,
    )
    worker = JobWorker(store, job_handlers(nbenv), notifier=nbenv.context.notifier)
    return Runtime(config=config, store=store, nbenv=nbenv, worker=worker)


def recover_at_start(runtime: Runtime) -> threading.Thread | None:
    """Finish, off the start path, the promotions and rollbacks a crash left half-synced
    to the registry (a no-op where pointers have no remote copy). For long-running entry
    points (`serve`, `socket`); `nbenv recover` does the same in the foreground."""
    backend = runtime.nbenv.backend
    if backend is None or not backend.mirrors_pointers():
        return None

    def run() -> None:
        try:
            finished = runtime.nbenv.recover()
        except Exception:  # the bot must start even when the registry or store is down
            logging.getLogger(__name__).exception("recovery at start failed")
            return
        if finished:
            logging.getLogger(__name__).info("finished %d interrupted operation(s)", len(finished))

    thread = threading.Thread(target=run, name="nbenv-recover", daemon=True)
    thread.start()
    return thread


def relay_from_env() -> BuildRelay:
    """The build relay as its Cloud Function runs it: config, store and Slack from the
    environment: NBENV_CONFIG, NBENV_DATABASE_URL, SLACK_BOT_TOKEN, SLACK_API_URL (see
    DESIGN.md §5). Without a bot token the relay still records everything; the bot's
    sender delivers."""
    from bot.builds.relay import BuildRelay
    from bot.slack.client import web_client
    from bot.slack.outbox import OutboxSender

    runtime = build_runtime(os.environ.get("NBENV_CONFIG"), os.environ.get("NBENV_DATABASE_URL"))
    sender = None
    if os.environ.get("SLACK_BOT_TOKEN"):
        sender = OutboxSender(runtime.store, web_client())
    else:
        logging.getLogger(__name__).warning(
            "relay: SLACK_BOT_TOKEN is not set: messages stay queued in the outbox"
        )
    return BuildRelay(runtime.nbenv, sender, background=True)
