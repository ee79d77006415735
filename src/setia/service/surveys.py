"""Surveys: record a response (and its reward, capped per period), and the NPS and
satisfaction figures per period.

A response's reward is a journal posting with the rule id ``survey:<survey id>``;
its cap counts in the member's rule usage, like an earning rule's ``limit``.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from setia.adapters.db import tables_surveys as ts
from setia.adapters.db.store import PostingContext, UnitOfWork
from setia.domain import earning
from setia.domain import surveys as sv
from setia.domain.errors import InvalidField, UnknownMember
from setia.domain.events import parse_time
from setia.service import outbox
from setia.service.common import Clock, idempotent, require_programme, transaction, utc_now
from setia.service.views import balances

PERIODS = ("day", "week", "month", "year")


RULE_PREFIX = "survey:"  # rule id of a survey's reward: survey:<id>


def rule_id(survey_id: str) -> str:
    return f"{RULE_PREFIX}{survey_id}"


# How far ahead of the server's clock a till's submitted_at may be.
CLOCK_SKEW = timedelta(minutes=5)


def submit(engine: sa.Engine, program_id: str, survey_id: str, body: Any, key: str,
           clock: Clock = utc_now) -> dict[str, Any]:
    """``{member, answers, submitted_at?}``: store the response and give its reward unless
    the member already had ``limit.count`` rewarded responses this period."""
    if not isinstance(body, dict):
        raise InvalidField("the body must be a JSON object", field="(body)")
    unknown = sorted(set(body) - {"member", "answers", "submitted_at"})
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    member_id = body.get("member")
    if not isinstance(member_id, str) or not member_id:
        raise InvalidField("member must be a member id", field="member")
    submitted = parse_time(body["submitted_at"], "submitted_at") if "submitted_at" in body \
        else None

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        now = clock()

        def run() -> dict[str, Any]:
            survey = sv.find(programme.model.surveys or [], survey_id)
            parsed = sv.parse_answers(survey, body.get("answers"))
            member = uow.member(programme.id, member_id)
            if member is None:
                raise UnknownMember(f"no member {member_id!r} in programme {programme.id}",
                                    field="member")
            submitted_at = submitted or now
            if submitted_at > now + CLOCK_SKEW:
                raise InvalidField(f"submitted_at {submitted_at.isoformat()} is in the future",
                                   field="submitted_at")
            response_id = "svr_" + secrets.token_hex(10)
            points = 0
            reward = survey.reward
            if reward is not None:
                rule = rule_id(survey.id)
                # The cap counts in the period the reward is given, not the one the client
                # says the survey was answered in: a response backdated into past months
                # would find each of them under its cap.
                local = now.astimezone(programme.tz)
                period = earning.period_key(reward.limit.per, local) if reward.limit \
                    else "lifetime"
                if reward.limit is None or member.usage.get((rule, period), 0) < \
                        reward.limit.count:
                    points = reward.points
                    member.ledger.earn(
                        points, source=response_id, rule_id=rule,
                        explanation=f"{points} for answering survey {survey.id}",
                        available_at=now, pending=False,
                        expires_at=earning.lot_expires_at(programme, now))
                    if reward.limit is not None:
                        member.count_use(rule, period)
                    member.active_at(now)
                    made = uow.record(programme.id, member,
                                      PostingContext(response_id, programme.version, now))
                    outbox.changed(uow, programme, member, made, response_id, now)
            row = {"id": response_id, "program_id": programme.id, "survey_id": survey.id,
                   "member_pk": member.pk, "member_id": member.id,
                   "submitted_at": submitted_at, "nps": parsed.nps, "rating": parsed.rating,
                   "answers": parsed.answers, "points": points}
            uow.execute(ts.survey_responses.insert().values(**row))
            return {"id": response_id, "survey": survey.id, "member": member.id,
                    "submitted_at": submitted_at.isoformat(), "nps": parsed.nps,
                    "rating": parsed.rating, "answers": parsed.answers, "points": points,
                    "balances": balances(member)}

        result = idempotent(uow, program_id, key, "survey-response",
                            {"survey": survey_id, "body": body}, run, now)
        uow.commit()
        return result

    return transaction(engine, work)


def results(engine: sa.Engine, program_id: str, survey_id: str, per: str = "month",
            since: datetime | None = None, until: datetime | None = None) -> dict[str, Any]:
    """Per period (in the programme's time zone): responses, NPS and satisfaction."""
    if per not in PERIODS:
        raise InvalidField(f"per must be one of {', '.join(PERIODS)}", field="per")

    def work(uow: UnitOfWork) -> dict[str, Any]:
        programme = require_programme(uow, program_id)
        survey = sv.find(programme.model.surveys or [], survey_id)
        r = ts.survey_responses
        query = sa.select(r.c.submitted_at, r.c.nps, r.c.rating).where(
            r.c.program_id == programme.id, r.c.survey_id == survey.id)
        if since is not None:
            query = query.where(r.c.submitted_at >= since)
        if until is not None:
            query = query.where(r.c.submitted_at < until)
        periods: dict[str, tuple[int, list[int], list[int]]] = {}
        for row in uow.execute(query):
            submitted_at, nps, rating = row.submitted_at, row.nps, row.rating
            key = earning.period_key(per, submitted_at.astimezone(programme.tz))
            count, scores, ratings = periods.get(key, (0, [], []))
            if nps is not None:
                scores.append(nps)
            if rating is not None:
                ratings.append(rating)
            periods[key] = (count + 1, scores, ratings)
        scale = next((q.scale for q in survey.questions if q.kind == "rating"), 5)
        return {"survey": survey.id, "per": per, "periods": [
            {"period": key, "responses": count, **sv.nps_figures(scores),
             **sv.rating_figures(ratings, scale)}
            for key, (count, scores, ratings) in sorted(periods.items())]}

    return transaction(engine, work, read_only=True)
