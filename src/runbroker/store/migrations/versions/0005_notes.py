"""Notes on runs: ``notes`` (every revision of every annotation, tag and correction) and
``runs.corrected`` (the start as corrected, read beside ``start``).

The schema version stays 2: a runbroker version that knows only revision 0004 reads such a
catalog as before, seeing the runs as stored (uncorrected) and no notes. A catalog of 0004
opened by this version reads as before too; writing notes asks for this upgrade.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from runbroker.store import notes as notestore
from runbroker.store.dialects import dialect_of
from runbroker.store.schema import notes, runs

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("runs")}
    if "corrected" not in columns:
        op.add_column("runs", sa.Column("corrected", sa.LargeBinary(), nullable=True))
    notes.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    # What notes derived goes with them: with no notes left, each corrected run's rows are
    # derived again, from its stored start.
    bind.execute(sa.delete(notes))
    dialect = dialect_of(f"{bind.dialect.name}://")
    fixed = sa.select(runs.c.id).where(runs.c.corrected.is_not(None))
    for run_id in list(bind.execute(fixed).scalars()):
        notestore.refresh(bind, dialect, run_id)
    op.execute("DELETE FROM meta WHERE key LIKE '@%'")
    notes.drop(bind)
    # ALTER TABLE ... DROP COLUMN, in SQLite too (3.35+): a batch copy of ``runs`` would
    # trip over the trigger on meta that names it.
    op.drop_column("runs", "corrected")
