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
    assert current_revision(engine) == "0001"


def test_db_upgrade_command(sqlite_url, monkeypatch, capsys):
    monkeypatch.setenv("NBENV_DATABASE_URL", sqlite_url)
    assert main(["db", "upgrade"]) == 0
    assert capsys.readouterr().out.strip() == "0001"


def test_schema_is_current_knows_without_alembic(db_url):
    from bot.store.database import schema_is_current

    engine = make_engine(db_url)
    assert schema_is_current(engine) is False  # an empty database needs its migrations
    upgrade(engine)
    assert schema_is_current(engine) is True
