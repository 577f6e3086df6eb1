"""Engines and migrations: SQLite file by default, PostgreSQL when NBENV_DATABASE_URL says so."""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy import exc as sql
from sqlalchemy.pool import QueuePool

from bot.config_file import nbenv_home

MIGRATIONS = Path(__file__).parent / "migrations"
READ_ONLY = "nbenv_read_only"  # execution option of Store.read() connections
_PG_MIGRATION_LOCK = 7_244_633  # any constant: serialises concurrent start-ups


def database_url() -> str:
    url = os.environ.get("NBENV_DATABASE_URL")
    if url:
        return url
    home = nbenv_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'nbenv.db'}"


def make_engine(url: str | None = None) -> Engine:
    url = url or database_url()
    if url.startswith("sqlite"):
        # Every transaction takes the write lock up front (BEGIN IMMEDIATE): SQLite then
        # serialises writers instead of failing one of them when both upgrade a read lock.
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            poolclass=QueuePool,
            pool_size=5,
            max_overflow=10,
        )

        @event.listens_for(engine, "connect")
        def _connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts and loses nothing when the process dies; only
            # a power cut may drop the last commits. FULL would cost an fsync per commit.
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(connection) -> None:  # type: ignore[no-untyped-def]
            # Reads take a snapshot without the write lock: in WAL they never wait for it.
            read_only = connection.get_execution_options().get(READ_ONLY)
            connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")

        return engine
    # Pre-ping: a connection is checked as it leaves the pool (one short round trip), so
    # after the server restarted (a Cloud SQL failover or maintenance) requests get fresh
    # connections instead of failing on the ones it cut, with no answer to whoever asked.
    # Recycled before Cloud SQL's idle timeout as well.
    return create_engine(url, pool_pre_ping=True, pool_recycle=300, pool_size=5, max_overflow=5)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply Alembic migrations up to REVISION (idempotent; safe with several processes)."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def schema_is_current(engine: Engine) -> bool:
    """True when the database is at the newest migration, known without Alembic.

    Importing Alembic costs a quarter of a second of cold start (Cloud Run starts
    instances on demand); the migrations say their revision in a plain assignment, so
    their heads are read from the files. Any doubt answers False, and Alembic decides.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        revision = re.search(r"^revision\b[^=]*=\s*[\"']([^\"']+)[\"']", source, re.M)
        down = re.search(r"^down_revision\b[^=]*=(.*)$", source, re.M)
        if revision is None or down is None:
            return False
        revisions.add(revision.group(1))
        parents.update(re.findall(r"[\"']([^\"']+)[\"']", down.group(1)))
    try:
        with engine.connect() as connection:
            current = set(
                connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
            )
    except Exception:  # no table yet, or no database: let Alembic create it
        return False
    return bool(revisions) and current == revisions - parents


def is_transient_fault(error: BaseException) -> bool:
    """ERROR is the database unreachable or busy (a connection lost, a lock or statement
    timeout): trying again later can succeed. What a value sets off (a DataError, an
    IntegrityError) is not."""
    if isinstance(error, sql.OperationalError | sql.InterfaceError | sql.TimeoutError):
        return True
    return isinstance(error, sql.DBAPIError) and error.connection_invalidated
