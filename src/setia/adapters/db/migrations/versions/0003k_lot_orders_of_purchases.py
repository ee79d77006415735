"""Lots name an order only when a purchase earned them

Revision ID: 0003k
Revises: 0003j

Any event may carry an order id, and every lot an event earned recorded it. A refund
claws back from the pending lots of its order first, so a refund of a purchase took
from the held lot of another event that only named the purchase's order (a review of
the shop, say), and that event's fraud review then had nothing left to reject. Lots are
now given an order only by a purchase; this revision clears the order of lots earned by
any other event (a lot's source is its event's id, a purchase's order names its event).
"""

from __future__ import annotations

from alembic import op

revision = "0003k"
down_revision = "0003j"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE lots SET order_id = NULL WHERE order_id IS NOT NULL AND NOT EXISTS ("
        "SELECT 1 FROM orders WHERE orders.program_id = lots.program_id "
        "AND orders.order_id = lots.order_id AND orders.event_id = lots.source)")


def downgrade() -> None:
    pass  # the orders cleared were never the lots' own
