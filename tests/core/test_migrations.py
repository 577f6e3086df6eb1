"""Alembic migrations build exactly the schema the code uses, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from bot.cli import main
from bot.store.database import current_revision, make_engine, upgrade
from bot.store.tables import metadata


def test_migrations_match_the_tables(db_url):
    engine = make_engine(db_url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), metadata)
    assert differences == []
    assert current_revision(engine) == "0004_history_paging"


def test_db_upgrade_command(sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("NBENV_DATABASE_URL", sqlite_url)
    assert main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == "0004_history_paging"


def test_schema_is_current_knows_without_alembic(db_url):
    from bot.store.database import schema_is_current

    engine = make_engine(db_url)
    assert schema_is_current(engine) is False  # an empty database needs its migrations
    upgrade(engine)
    assert schema_is_current(engine) is True


def test_a_database_of_the_previous_release_upgrades_in_place(db_url):
    from sqlalchemy import inspect, select

    from bot.store import tables as t
    from bot.store.database import schema_is_current

    engine = make_engine(db_url)
    upgrade(engine, "0001")
    assert schema_is_current(engine) is False
    row = {
        "dedupe_key": "kept",
        "method": "chat.postMessage",
        "payload": {"channel": "C01NLP", "text": "queued before the upgrade"},
        "thread_image": "nlp.keras-batch",
        "thread_sha": "a" * 40,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": "2026-01-01T00:00:00.000000Z",
        "created_at": "2026-01-01T00:00:00.000000Z",
    }
    with engine.begin() as connection:
        connection.execute(t.outbox.insert().values(**row))

    upgrade(engine)

    assert schema_is_current(engine) is True
    indexes = {index["name"] for index in inspect(engine).get_indexes("outbox")}
    assert "ix_outbox_thread" in indexes
    with engine.connect() as connection:
        kept = connection.execute(select(t.outbox.c.payload, t.outbox.c.status)).one()
    assert kept.payload["text"] == "queued before the upgrade" and kept.status == "pending"
