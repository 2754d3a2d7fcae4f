"""``meta`` rows no longer check their run with a foreign key (PostgreSQL).

Every start and stop document writes a dozen or more ``meta`` rows, and PostgreSQL checked
each one against ``runs`` (a lookup and a row lock per row: about a tenth of the server's
work per small run). The store writes a run's ``meta`` rows in the statement that writes the
run (or its stop), so the check found nothing to refuse. SQLite never enforced the key
(runbroker does not turn its foreign keys on); its catalogs are left as they are.

The schema version stays 2: runbroker versions that know only revision 0002 read and write
catalogs of either revision alike.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for fk in sa.inspect(bind).get_foreign_keys("meta"):
        if fk["referred_table"] == "runs":
            op.drop_constraint(fk["name"], "meta", type_="foreignkey")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.create_foreign_key("meta_run_id_fkey", "meta", "runs", ["run_id"], ["id"])
