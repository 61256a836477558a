"""Alembic environment: runs on the connection the API hands over, or on the URL from the environment."""

from __future__ import annotations

from alembic import context

from fleet_api.db.tables import Base

config = context.config


def run(connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from fleet_api.db.session import make_engine
    from fleet_api.settings import ApiSettings

    engine = make_engine(config.get_main_option("sqlalchemy.url") or ApiSettings().database_url)
    with engine.connect() as conn:
        run(conn)
    engine.dispose()
