"""Web pages: staff users, sessions, sign-in links, login failures, member locales

Revision ID: 0003e
Revises: 0003d
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import setia.adapters.db.tables

revision = "0003e"
down_revision = "0003d"
branch_labels = None
depends_on = None

UTC = setia.adapters.db.tables.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "staff_users",
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.String(length=200), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("disabled_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=True),
        sa.Column("program_id", sa.String(length=64), nullable=True),
        sa.Column("member_id", sa.String(length=128), nullable=True),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_table(
        "signin_links",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", UTC(), nullable=False),
        sa.Column("expires_at", UTC(), nullable=False),
        sa.Column("used_at", UTC(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_table(
        "login_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                  nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("at", UTC(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_login_failures_key", "login_failures", ["key", "at"], unique=False)
    op.create_table(
        "member_locales",
        sa.Column("program_id", sa.String(length=64), nullable=False),
        sa.Column("member_id", sa.String(length=128), nullable=False),
        sa.Column("locale", sa.String(length=16), nullable=False),
        sa.PrimaryKeyConstraint("program_id", "member_id"),
    )


def downgrade() -> None:
    op.drop_table("member_locales")
    op.drop_index("ix_login_failures_key", table_name="login_failures")
    op.drop_table("login_failures")
    op.drop_table("signin_links")
    op.drop_table("web_sessions")
    op.drop_table("staff_users")
