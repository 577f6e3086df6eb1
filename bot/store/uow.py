"""The unit of work: one transaction, with one repository per aggregate.

`Store.write()` is the only way to change state. An audited write locks the audit
head first, which serialises the hash chain (and, being the first lock taken, can't
deadlock with the environment rows it updates later).

Repositories are made on first use in a transaction (`tx.versions`, `tx.outbox`, ...):
a relay event that touches three of them pays for three.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import cached_property

from sqlalchemy import Connection, Engine

from bot.domain.audit import AuditKey
from bot.store.database import READ_ONLY
from bot.store.repositories.approvals import Approvals
from bot.store.repositories.audit import AuditLog
from bot.store.repositories.freezes import Freezes
from bot.store.repositories.idempotency import IdempotencyKeys
from bot.store.repositories.instances import Instances
from bot.store.repositories.jobs import Jobs
from bot.store.repositories.outbox import Outbox
from bot.store.repositories.pointers import Pointers
from bot.store.repositories.sagas import Sagas
from bot.store.repositories.threads import Threads
from bot.store.repositories.versions import Versions

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    def __init__(
        self, engine: Engine, clock: Clock = utcnow, *, audit_key: AuditKey | None = None
    ) -> None:
        """AUDIT_KEY: seals every audit entry written here (HMAC); None: plain SHA-256."""
        self.engine = engine
        self.clock = clock
        self.audit_key = audit_key

    def now(self) -> str:
        return iso(self.clock())

    @contextmanager
    def read(self) -> Iterator[Tx]:
        with self.engine.connect() as connection:
            connection.execution_options(**{READ_ONLY: True})
            yield Tx(connection, self)
            connection.rollback()

    @contextmanager
    def write(self, *, audited: bool = True) -> Iterator[Tx]:
        with self.engine.begin() as connection:
            tx = Tx(connection, self)
            if audited:
                tx.audit.lock_head()
            yield tx


class Tx:
    """One connection/transaction and its repositories; NOW is its time, shared by every
    row it writes."""

    def __init__(self, connection: Connection, store: Store) -> None:
        self.connection = connection
        self.store = store
        self.now = store.now()

    @cached_property
    def versions(self) -> Versions:
        return Versions(self.connection, self.now, self.approvals)

    @cached_property
    def pointers(self) -> Pointers:
        return Pointers(self.connection, self.now, freezes=self.freezes, versions=self.versions)

    @cached_property
    def freezes(self) -> Freezes:
        return Freezes(self.connection, self.now)

    @cached_property
    def approvals(self) -> Approvals:
        return Approvals(self.connection, self.now)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.connection, self.now, self.store.audit_key)

    @cached_property
    def threads(self) -> Threads:
        return Threads(self.connection, self.now)

    @cached_property
    def outbox(self) -> Outbox:
        return Outbox(self.connection, self.now)

    @cached_property
    def jobs(self) -> Jobs:
        return Jobs(self.connection, self.now)

    @cached_property
    def sagas(self) -> Sagas:
        return Sagas(self.connection, self.now)

    @cached_property
    def idempotency(self) -> IdempotencyKeys:
        return IdempotencyKeys(self.connection, self.now)

    @cached_property
    def instances(self) -> Instances:
        return Instances(self.connection, self.now)
