"""What a running nbenv process holds: the config, the store, the service and its job
worker, made by the composition root (`bot.bootstrap.build_runtime`) and handed to the
adapters that serve it."""

from __future__ import annotations

from dataclasses import dataclass

from bot.config import Config
from bot.service.jobs import JobWorker
from bot.service.nbenv import Nbenv
from bot.store.uow import Store


@dataclass
class Runtime:
    config: Config
    store: Store
    nbenv: Nbenv
    worker: JobWorker
