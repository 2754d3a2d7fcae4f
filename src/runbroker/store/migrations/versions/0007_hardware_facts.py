"""Hardware facts: ``Device``, ``Config`` and ``DataKey`` find runs by their descriptors.

Adds the tables ``fact_sets``, ``facts`` and ``run_facts`` (runbroker.store.hardwarerows)
and fills them from the descriptors stored before, a thousand at a time. The schema version
stays 2: a runbroker version without hardware search never looks at these tables. The
downgrade drops them.

Revision ID: 0007
Revises: 0006
"""

from alembic import op
from sqlalchemy import delete, insert, select

from runbroker.store import jsoncodec
from runbroker.store.hardwarerows import fact_records, fact_set
from runbroker.store.schema import descriptors, fact_sets, facts, run_facts

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_BATCH = 1000
_TABLES = (fact_sets, facts, run_facts)


def upgrade() -> None:
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind, checkfirst=True)
    bind.execute(delete(run_facts))  # none yet, unless an upgrade is run again
    # Plain statements, not FactWriter: its prepared ones leave PostgreSQL rows for the
    # writer's next round trip, which a migration's connection never makes.
    stored = set(bind.execute(select(fact_sets.c.id)).scalars())
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
        links = set()
        for _, run_id, body in rows:
            set_id, found = fact_set(jsoncodec.loads(body))
            if set_id not in stored:
                stored.add(set_id)
                bind.execute(insert(fact_sets).values(id=set_id))
                if found:
                    bind.execute(insert(facts), fact_records(set_id, found))
            links.add((run_id, set_id))
        bind.execute(insert(run_facts), [{"run_id": r, "set_id": s} for r, s in sorted(links)])
        last = rows[-1].id


def downgrade() -> None:
    bind = op.get_bind()
    for table in reversed(_TABLES):
        table.drop(bind, checkfirst=True)
