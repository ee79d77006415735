"""The programme version of each redemption

Revision ID: 0003j
Revises: 0003i

A hold was captured or released by its reward as the current programme version defines
it. A version stored between the hold and its capture that removed or renamed the reward
captured the points with no voucher (and no donation); one that gave the reward a stock
made its release give back stock the hold never took. Each redemption now records the
version it was made under. Rows written before this revision have none, and are finished
under the current version, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003j"
down_revision = "0003i"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("redemptions", sa.Column("program_version", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("redemptions") as batch:
        batch.drop_column("program_version")
