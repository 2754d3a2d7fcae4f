"""Runs get ``stop_time`` (indexed), filled in from their stop documents.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

from runbroker.store import jsoncodec

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _set_version(version: int) -> None:
    op.execute(
        sa.text("UPDATE runbroker_info SET value = :v WHERE key = 'schema_version'").bindparams(
            v=str(version)
        )
    )


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("stop_time", sa.Float(), nullable=True))
        batch.create_index("ix_runs_stop_time", ["stop_time"])
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id, stop FROM runs WHERE stop IS NOT NULL")).fetchall()
    params = [{"t": jsoncodec.loads(stop).get("time"), "i": run_id} for run_id, stop in rows]
    if params:
        conn.execute(sa.text("UPDATE runs SET stop_time = :t WHERE id = :i"), params)
    _set_version(2)


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_stop_time")
        batch.drop_column("stop_time")
    _set_version(1)
