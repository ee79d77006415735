"""Tables of the web pages: staff accounts, browser sessions, one-time sign-in links,
failed sign-in attempts (for throttling) and members' chosen language."""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

staff_users = sa.Table(
    "staff_users", metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.String(200), nullable=False),  # argon2id
    sa.Column("role", sa.String(16), nullable=False),  # owner | cashier
    sa.Column("program_id", sa.String(64)),  # None: every programme
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("disabled_at", UTCDateTime),
)

web_sessions = sa.Table(
    "web_sessions", metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),  # SHA-256 of the cookie value
    sa.Column("kind", sa.String(8), nullable=False),  # staff | member
    sa.Column("username", sa.String(64)),  # staff sessions
    sa.Column("program_id", sa.String(64)),  # member sessions
    sa.Column("member_id", sa.String(128)),  # member sessions
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
)

signin_links = sa.Table(
    "signin_links", metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),  # SHA-256 of the link's token
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("expires_at", UTCDateTime, nullable=False),
    sa.Column("used_at", UTCDateTime),
)

login_failures = sa.Table(
    "login_failures", metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
              autoincrement=True),
    sa.Column("key", sa.String(400), nullable=False),  # user:<name> | ip:<address> | link:<email>
    sa.Column("at", UTCDateTime, nullable=False),
)
sa.Index("ix_login_failures_key", login_failures.c.key, login_failures.c.at)

member_locales = sa.Table(
    "member_locales", metadata,
    sa.Column("program_id", sa.String(64), primary_key=True),
    sa.Column("member_id", sa.String(128), primary_key=True),
    sa.Column("locale", sa.String(16), nullable=False),
)
