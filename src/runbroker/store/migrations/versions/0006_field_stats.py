"""``field_stats``: per-field statistics of runs, a row per field, moved out of ``meta``.

Statistics were rows of ``meta`` (a row per statistic under keys beginning ``@stat``, in its
three indexes): a small run's stop wrote 37 of them, a quarter of its ingest time. They are
now a row per field with a column per statistic, keyed (run, field) alone (see
runbroker.store.schema). The rows kept in ``meta`` are moved over.

The schema version stays 2: a runbroker version that knows only revision 0005 reads such a
catalog as before, finding no statistics (``runbroker db stats`` computes them again).

Revision ID: 0006
Revises: 0005
"""

import json
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

from runbroker.store.schema import field_stats, meta, tags
from runbroker.store.stats import stats_rows

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The keys statistics had in meta: "@stat" (computed; num 1: with files read) and
# "@stat.<statistic>.<JSON [stream, field]>".
_OLD = (meta.c.key >= "@stat", meta.c.key < "@stat/")


def upgrade() -> None:
    bind = op.get_bind()
    field_stats.create(bind, checkfirst=True)
    found: dict[int, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    filled: dict[int, bool] = {}
    for run_id, key, num in bind.execute(
        sa.select(meta.c.run_id, meta.c.key, meta.c.num).where(*_OLD)
    ):
        if key == "@stat":
            filled[run_id] = bool(num)
            continue
        stat, _, names = key[len("@stat.") :].partition(".")
        stream, field = json.loads(names)
        found[run_id][stream][field][stat] = (
            float(num) if stat not in ("count", "nan") else int(num)
        )
    names = ("run_id", "field", "key", "count", "nan", "sum", "min", "max", "mean")
    for run_id in filled:
        rows = stats_rows(found.get(run_id, {}), filled[run_id])
        if rows:
            bind.execute(
                sa.insert(field_stats), [dict(zip(names, (run_id, *r), strict=True)) for r in rows]
            )
    bind.execute(sa.delete(meta).where(*_OLD))
    bind.execute(sa.delete(tags).where(tags.c.key >= "@stat", tags.c.key < "@stat/"))


def downgrade() -> None:
    # Statistics are derived data: runbroker db stats computes them again.
    field_stats.drop(op.get_bind(), checkfirst=True)
