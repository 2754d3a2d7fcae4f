"""Alembic environment: migrations always run on the connection runbroker hands over."""

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode lets SQLite alter tables (it copies them), PostgreSQL alters in place.
context.configure(connection=connection, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
