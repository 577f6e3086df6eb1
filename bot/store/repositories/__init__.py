"""One repository per aggregate, each reached from the transaction (`tx.versions`, ...).

Every SQL statement of nbenv lives in these modules: nothing outside `bot.store` imports
SQLAlchemy or the tables (tests/core/test_layers.py checks it).
"""
