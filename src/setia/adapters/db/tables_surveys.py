"""Survey responses: one row per response, with its NPS and rating picked out."""

from __future__ import annotations

import sqlalchemy as sa

from setia.adapters.db.tables import UTCDateTime, metadata

survey_responses = sa.Table(
    "survey_responses", metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("program_id", sa.String(64), nullable=False),
    sa.Column("survey_id", sa.String(64), nullable=False),
    sa.Column("member_pk", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.String(128), nullable=False),
    sa.Column("submitted_at", UTCDateTime, nullable=False),
    sa.Column("nps", sa.Integer),
    sa.Column("rating", sa.Integer),
    sa.Column("answers", sa.JSON, nullable=False),
    sa.Column("points", sa.BigInteger, nullable=False),
    sa.CheckConstraint("nps IS NULL OR (nps >= 0 AND nps <= 10)", name="ck_survey_nps_range"),
)
sa.Index("ix_survey_responses_survey", survey_responses.c.program_id,
         survey_responses.c.survey_id, survey_responses.c.submitted_at)
