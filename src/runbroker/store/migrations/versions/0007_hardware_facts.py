"""Hardware facts of the descriptors stored before: ``Device``, ``Config``, ``DataKey`` find them.

Each descriptor insert now writes its devices, configuration readings and data-key properties
into ``meta`` (:mod:`runbroker.store.hardwarerows`). This writes them for the descriptors
stored before, a thousand at a time. No table or column changes: the schema version stays 2,
and a runbroker version without hardware search never looks at these rows. The downgrade
removes them.

Revision ID: 0007
Revises: 0006 (the lead sets this to the migration before it at merge)
"""

from alembic import op
from sqlalchemy import delete, insert, or_, select

from runbroker.store import hardwarerows, jsoncodec
from runbroker.store.schema import descriptors, meta

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 1000


def _facts() -> object:
    return or_(*(meta.c.key.startswith(p, autoescape=True) for p in hardwarerows.PREFIXES))


def upgrade() -> None:
    bind = op.get_bind()
    bind.execute(delete(meta).where(_facts()))  # none yet, unless an upgrade is run again
    last = 0
    while True:
        rows = bind.execute(
            select(descriptors.c.id, descriptors.c.run_id, descriptors.c.body)
            .where(descriptors.c.id > last)
            .order_by(descriptors.c.id)
            .limit(_BATCH)
        ).all()
        if not rows:
            return
        facts = [
            row
            for _, run_id, body in rows
            for row in hardwarerows.meta_rows(run_id, [jsoncodec.loads(body)])
        ]
        if facts:
            bind.execute(insert(meta), facts)
        last = rows[-1].id


def downgrade() -> None:
    op.get_bind().execute(delete(meta).where(_facts()))
