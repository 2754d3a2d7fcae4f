"""Baseline: the schema runbroker created before migrations (schema version 1).

Revision ID: 0001
Revises:
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: catalogs of schema version 1 are stamped with this revision."""


def downgrade() -> None:
    """Nothing below the baseline."""
