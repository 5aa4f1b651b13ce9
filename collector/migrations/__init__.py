"""Alembic migrations of the audit store, run programmatically by :meth:`collector.store.Store.migrate`.

Every change to :mod:`collector.models` needs a new revision here (and
``collector.store.SCHEMA_HEAD``/``KNOWN_REVISIONS`` updated); ``tests/test_store.py``
fails when the migrated schema and the models drift apart.
"""
