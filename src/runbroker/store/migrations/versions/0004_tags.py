"""``tags``: the metadata rows of indexed keys again, with their runs' time, in time order.

A search within a caller's scope (its proposals, beamtimes, public runs) reads each value's
newest runs in order from ``tags`` and stops after its page (see
:mod:`runbroker.store.tags`). A trigger on ``meta`` fills it for the keys in ``tag_keys``;
the keys indexed already (``runbroker db index``) are copied in now.

The schema version stays 2: a runbroker version that knows only revision 0003 reads such a
catalog as before, and what it writes reaches ``tags`` through the trigger.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

from runbroker.store import keyindex, tags
from runbroker.store.schema import tag_keys
from runbroker.store.schema import tags as tags_table

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    tags_table.create(bind, checkfirst=True)
    tag_keys.create(bind, checkfirst=True)
    for ddl in tags.DDL[bind.dialect.name]:
        op.execute(ddl)
    tags.enable(bind, keyindex.recorded(bind))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS tags_from_meta ON meta")
        op.execute("DROP FUNCTION IF EXISTS runbroker_tags_from_meta()")
    else:
        op.execute("DROP TRIGGER IF EXISTS tags_from_meta")
    tag_keys.drop(bind, checkfirst=True)
    tags_table.drop(bind, checkfirst=True)
