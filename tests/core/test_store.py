"""Store behaviour that users feel: reads never wait for a writer; claims are exact."""

from __future__ import annotations

import threading

from bot.store.database import make_engine, upgrade
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
