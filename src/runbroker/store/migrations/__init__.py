"""Schema migrations (alembic) for SQL catalogs: ``runbroker db upgrade URI`` runs them.

New catalogs are created at the newest schema and stamped with it; an older catalog is
refused on open with a message naming the command that upgrades it in place.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, create_engine, inspect, text

from ..urls import redact

# alembic is imported by the functions that run it: only creating or upgrading a catalog
# needs it, and every `import runbroker` (every CLI command) would pay for it otherwise.
if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["downgrade", "stamp_head", "upgrade"]


def _config(conn: Connection) -> Config:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent))
    cfg.attributes["connection"] = conn
    return cfg


def stamp_head(conn: Connection) -> None:
    """Record that a catalog just created has the newest schema."""
    _stamp(conn, "head")


def _stamp(conn: Connection, revision: str) -> None:
    """Record that the catalog on ``conn`` has the schema of ``revision``, changing nothing else."""
    from alembic import command

    command.stamp(_config(conn), revision)


def upgrade(url: str, revision: str = "head") -> str:
    """Upgrade the catalog at ``url`` in place; return the schema revision it ends at.

    Example:
        >>> upgrade("sqlite:////data/runs.db")                       # doctest: +SKIP
        '0003'
    """
    from alembic import command

    return _migrate(url, revision, command.upgrade)


def downgrade(url: str, revision: str) -> str:
    """Take the catalog at ``url`` back to an older schema revision (to run an older
    runbroker); return the revision it ends at.

    Example:
        >>> downgrade("sqlite:////data/runs.db", "0001")             # doctest: +SKIP
        '0001'
    """
    from alembic import command

    return _migrate(url, revision, command.downgrade)


def _migrate(url: str, revision: str, step: Callable[[Config, str], None]) -> str:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            tables = set(inspect(conn).get_table_names())
            if "runbroker_info" not in tables:
                raise ValueError(f"{redact(url)} is not a runbroker catalog")
            if "alembic_version" not in tables:
                # Catalogs from before migrations existed carry schema version 1.
                _stamp(conn, "0001")
            step(_config(conn), revision)
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    finally:
        engine.dispose()
