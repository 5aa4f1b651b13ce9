"""Alembic environment for the audit store.

Online, the caller (:meth:`collector.store.Store.migrate`) passes an open connection that
already holds the store's write or migration lock, in ``config.attributes["connection"]``;
the migration then runs inside that transaction. Offline (``alembic upgrade head --sql``
with ``alembic.ini`` beside this file and ``-x url=...``), it prints the SQL for a DBA to
review. Logging is left alone: a library must not reconfigure its host's logging.
"""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import collector.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from collector import partitions

config = context.config
target_metadata = SQLModel.metadata


def run_online(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        include_name=partitions.include_name,  # (the month partitions are parts of audit_events)
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    connection = config.attributes.get("connection")
    if connection is None:
        import sqlalchemy as sa

        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
            "sqlalchemy.url"
        )
        with sa.create_engine(url).begin() as conn:
            run_online(conn)
    else:
        run_online(connection)
