"""Surveys and feedback: questions (NPS 0-10, rating, text), answers, NPS per period.

The ``surveys:`` section of the programme file. A response's answers are checked
here; the first NPS question and the first rating question give the response's
``nps`` and ``rating`` columns, which the per-period figures are computed from.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from setia.domain.errors import InvalidField, SetiaError

MAX_TEXT = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Question(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    kind: Literal["nps", "rating", "text"]
    text: Annotated[str, Field(min_length=1, max_length=300)]
    scale: Annotated[int, Field(ge=2, le=10)] = 5  # rating: 1..scale
    required: bool = True


class Limit(_Strict):
    count: Annotated[int, Field(gt=0)]
    per: Literal["day", "week", "month", "year", "lifetime"]


class SurveyReward(_Strict):
    points: Annotated[int, Field(gt=0, le=10_000_000)]
    limit: Limit | None = None  # rewarded responses per member and period


class Survey(_Strict):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,55}$")]
    name: Annotated[str, Field(min_length=1, max_length=120)]
    questions: Annotated[list[Question], Field(min_length=1, max_length=50)]
    reward: SurveyReward | None = None


def semantic_errors(surveys: list[Survey]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, survey in enumerate(surveys):
        if survey.id in seen:
            errors.append((f"surveys[{i}].id", f"duplicate survey id {survey.id!r}"))
        seen.add(survey.id)
        ids: set[str] = set()
        for j, question in enumerate(survey.questions):
            if question.id in ids:
                errors.append((f"surveys[{i}].questions[{j}].id",
                               f"duplicate question id {question.id!r}"))
            ids.add(question.id)
    return errors


class UnknownSurvey(SetiaError):
    type = "unknown-survey"
    title = "No such survey"
    status = 404


@dataclass(frozen=True)
class Answers:
    answers: dict[str, Any]
    nps: int | None
    rating: int | None


def find(surveys: list[Survey], survey_id: str) -> Survey:
    for survey in surveys:
        if survey.id == survey_id:
            return survey
    raise UnknownSurvey(f"no survey {survey_id!r} in the programme", field="survey")


def parse_answers(survey: Survey, raw: Any) -> Answers:
    """Every answer checked against its question; unknown questions are refused."""
    if not isinstance(raw, dict):
        raise InvalidField("answers must be an object of question id to answer", field="answers")
    known = {q.id for q in survey.questions}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise InvalidField(f"survey {survey.id} has no question {unknown[0]!r}",
                           field=f"answers.{unknown[0]}")
    answers: dict[str, Any] = {}
    nps = rating = None
    for q in survey.questions:
        at = f"answers.{q.id}"
        value = raw.get(q.id)
        if value is None:
            if q.required:
                raise InvalidField(f"question {q.id!r} must be answered", field=at)
            continue
        if q.kind in ("nps", "rating"):
            low, high = (0, 10) if q.kind == "nps" else (1, q.scale)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidField(f"{q.id} must be a whole number from {low} to {high}",
                                   field=at)
            if q.kind == "nps" and nps is None:
                nps = value
            if q.kind == "rating" and rating is None:
                rating = value
        else:
            if not isinstance(value, str) or len(value) > MAX_TEXT:
                raise InvalidField(f"{q.id} must be text of at most {MAX_TEXT} characters",
                                   field=at)
        answers[q.id] = value
    return Answers(answers=answers, nps=nps, rating=rating)


def nps_figures(scores: list[int]) -> dict[str, Any]:
    """Promoters (9-10), passives (7-8), detractors (0-6) and NPS = % promoters -
    % detractors, to one decimal (half up); None without scores."""
    promoters = sum(1 for s in scores if s >= 9)
    detractors = sum(1 for s in scores if s <= 6)
    passives = len(scores) - promoters - detractors
    nps = None
    if scores:
        value = Decimal(100 * (promoters - detractors)) / len(scores)
        nps = str(value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP))
    return {"scores": len(scores), "promoters": promoters, "passives": passives,
            "detractors": detractors, "nps": nps}


def rating_figures(ratings: list[int], scale: int) -> dict[str, Any]:
    """Average rating (two decimals, half up) and satisfaction: the share of ratings in
    the top two steps of the scale (4 and 5 of 5), as a percentage to one decimal."""
    if not ratings:
        return {"ratings": 0, "average_rating": None, "satisfaction": None}
    average = (Decimal(sum(ratings)) / len(ratings)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    satisfied = sum(1 for r in ratings if r >= scale - 1)
    share = (Decimal(100 * satisfied) / len(ratings)).quantize(Decimal("0.1"), ROUND_HALF_UP)
    return {"ratings": len(ratings), "average_rating": str(average),
            "satisfaction": str(share)}
