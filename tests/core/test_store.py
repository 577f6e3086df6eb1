"""Store behaviour that users feel: reads never wait for a writer; claims are exact."""

from __future__ import annotations

import threading
import time

from sqlalchemy import Engine, text

from bot.store.database import make_engine, upgrade
from bot.store.repositories.threads import ThreadRoot
from bot.store.uow import Store


def test_a_read_does_not_wait_for_a_writer_and_sees_committed_state(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    seen: list[int] = []

    def reader() -> None:
        with store.read() as tx:
            seen.append(tx.audit.head()[0])

    with store.write() as tx:
        tx.audit.append(actor="U01OWNER", action="freeze", image=None, sha=None)
        thread = threading.Thread(target=reader)
        thread.start()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the read waited for the write lock"
    assert seen == [0]  # the uncommitted entry was not visible
    reader()
    assert seen == [0, 1]


def test_claim_is_true_once_per_key(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    with store.write(audited=False) as tx:
        assert tx.idempotency.claim("slack:T1") is True
        assert tx.idempotency.claim("slack:T1") is False
    with store.write(audited=False) as tx:
        assert tx.idempotency.claim("slack:T1") is False
        assert tx.idempotency.claim("slack:T2") is True


def test_two_writers_creating_one_thread_make_one_and_the_second_sees_the_first(db_url):
    """The relay's thread lock when two function instances meet a new commit at once: the
    second waits for the first's commit, then locks and reads the thread the first made."""
    engine = make_engine(db_url)
    upgrade(engine)
    store = Store(engine)
    key = ("base-notebook", "a" * 40)
    seen: list[object] = []

    def second() -> None:
        with store.write(audited=False) as tx:
            rows = tx.threads.lock({key}, channel_of=lambda image: "C02")
            seen.append((rows[key].state, rows[key].ts))

    with store.write(audited=False) as tx:
        tx.threads.lock({key}, channel_of=lambda image: "C01")
        tx.threads.save([(key, {"root": "relay"}, 2)])
        thread = threading.Thread(target=second)
        thread.start()
        if engine.dialect.name == "postgresql":
            _wait_until_blocked(engine)  # its insert waits for this one's (SQLite: BEGIN does)
        assert seen == []
    thread.join(timeout=10)
    assert seen == [({"root": "relay"}, None)]
    with store.read() as tx:
        assert tx.threads.roots({key}) == {key: ThreadRoot("C01", None)}


def _wait_until_blocked(engine: Engine, timeout_s: float = 10.0) -> None:
    """Until a session of ENGINE's database waits for a lock another one holds."""
    deadline = time.monotonic() + timeout_s
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
            connection.rollback()  # a fresh snapshot of the activity for the next look
            if waiting:
                return
            time.sleep(0.01)
    raise AssertionError("the second writer never waited for the first")
