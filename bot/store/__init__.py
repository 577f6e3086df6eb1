"""Persistence: SQLAlchemy tables, Alembic migrations, the unit of work."""
