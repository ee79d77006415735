"""Members: enrol or update (enrolment posts the ``signup`` event), and read."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa

from setia.adapters.db.store import PRUNED, UnitOfWork
from setia.domain import tiers
from setia.domain.errors import IdempotencyConflict, InvalidField, UnknownMember
from setia.domain.events import Event, parse_time
from setia.domain.member import Member
from setia.domain.programme import Programme
from setia.service import outbox
from setia.service.common import (
    Clock,
    request_hash,
    require_programme,
    transaction,
    utc_now,
)
from setia.service.views import member_view

PROFILE_KEYS = frozenset({"name", "email", "phone", "birthday", "attributes", "enrolled_at"})
MEMBER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$")


def parse_profile(raw: Any) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidField("the member must be a JSON object", field="(body)")
    unknown = sorted(set(raw) - PROFILE_KEYS)
    if unknown:
        raise InvalidField(f"unknown field {unknown[0]!r}", field=unknown[0])
    profile: dict[str, Any] = {}
    for key, limit in (("name", 200), ("email", 320), ("phone", 40)):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or len(value) > limit:
            raise InvalidField(f"{key} must be a string of at most {limit} characters", field=key)
        profile[key] = value
    if "email" in profile and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", profile["email"]):
        raise InvalidField("email is not an email address", field="email")
    if "phone" in profile and not re.fullmatch(r"\+?[0-9 ()-]{5,40}", profile["phone"]):
        raise InvalidField("phone may hold digits, spaces, dashes and a leading +", field="phone")
    if raw.get("birthday") is not None:
        try:
            profile["birthday"] = date.fromisoformat(str(raw["birthday"]))
        except ValueError:
            raise InvalidField(
                "birthday must be a date such as 1990-05-17", field="birthday"
            ) from None
    if raw.get("attributes") is not None:
        if not isinstance(raw["attributes"], dict):
            raise InvalidField("attributes must be an object", field="attributes")
        profile["attributes"] = raw["attributes"]
    if raw.get("enrolled_at") is not None:
        profile["enrolled_at"] = parse_time(raw["enrolled_at"], "enrolled_at")
    return profile


def require_member_id(member_id: str) -> None:
    if not MEMBER_ID.fullmatch(member_id):
        raise InvalidField(
            "member id may hold letters, digits and . _ : @ + - (at most 128)", field="member"
        )


def signup_event(member_id: str, enrolled_at: datetime) -> tuple[Event, dict[str, Any]]:
    """The event that enrols a member (it posts the signup bonus), and its request."""
    signup = Event(
        id=f"signup:{member_id}", type="signup", member=member_id, occurred_at=enrolled_at
    )
    return signup, {"id": signup.id, "type": "signup", "member": member_id,
                    "occurred_at": enrolled_at.isoformat()}


def signup_taken(uow: UnitOfWork, programme: Programme, member_id: str,
                 enrolled_at: datetime, known: dict[str, Any] | None = None) -> bool:
    """Whether the member's signup event id (``signup:<id>``) already holds the signup
    Setia made for this member id: that of a person erased since, who enrols again under
    the same id, or that of a concurrent enrolment. Enrolling then posts no second signup
    (and no second welcome bonus). Raise ``IdempotencyConflict`` when another event holds
    the id (a client's own event named ``signup:<id>``), before anything is written.
    ``known``: stored events already read (a batch's, with its new members' signups).
    A signup pruned since, its id still registered on PostgreSQL, is found only on the
    retry after posting it again collided (``UnitOfWork.after_collision``)."""
    signup, payload = signup_event(member_id, enrolled_at)
    if known is not None:
        stored = known.get(signup.id)
    else:  # read once: the signup applied by ``enrol`` finds it read
        stored = uow.stored_events(programme.id, [signup.id]).get(signup.id)
    if stored is None:
        return False
    # Pruned by event retention, its id still registered on PostgreSQL: taken as hers, as
    # posting it again would collide with the registered id (whose it was is not known).
    if stored is PRUNED or stored.request_hash == request_hash(payload):
        return True
    # Enrolled at another time: the stored request, its member named again as erasure
    # relabelled it, is the signup Setia made for this id if it has that request's fields
    # only and hashes the same (a client's event of that shape would be the same signup).
    earlier = uow.stored_payload(programme.id, signup.id)
    if (isinstance(earlier, dict) and earlier.keys() == payload.keys()
            and earlier.get("type") == "signup"
            and stored.request_hash == request_hash({**earlier, "member": member_id})):
        return True
    raise IdempotencyConflict(
        f"event id {signup.id!r} was already used for a different event", field="id")


def enrol(
    uow: UnitOfWork,
    programme: Programme,
    member_id: str,
    profile: dict[str, Any],
    *,
    enrolled_at: datetime,
    now: datetime,
    known: dict[str, Any] | None = None,
    taken: bool | None = None,
) -> tuple[Member, bool]:
    """Create the member at the first level and post its signup event; the member, and
    False if another transaction enrolled it meanwhile (then nothing is written).
    ``known``: a batch's stored events, which the signup joins. ``taken``: what
    ``signup_taken`` answered, if the caller asked it already (no signup is posted when
    the member's signup id holds an earlier signup of the same id)."""
    from setia.service.events import apply_event

    require_member_id(member_id)
    signup, payload = signup_event(member_id, enrolled_at)
    if taken is None:
        taken = signup_taken(uow, programme, member_id, enrolled_at, known)
    local = enrolled_at.astimezone(programme.tz)
    first = programme.model.tiers.levels[0]
    member = uow.add_member(
        programme.id,
        member_id,
        enrolled_at=enrolled_at,
        tier_id=first.id,
        tier_reviewed=tiers.review_period(programme, local),
        profile=profile,
    )
    if member is None:  # enrolled concurrently: use that one
        existing = uow.member(programme.id, member_id)
        assert existing is not None
        return existing, False
    if not taken:
        apply_event(uow, programme, signup, payload, now, known=known)
    outbox.enrolled(uow, programme, member, now)
    return member, True


def upsert_member(
    engine: sa.Engine, program_id: str, member_id: str, body: Any, clock: Clock = utc_now,
    *, update: bool = True,
) -> tuple[dict[str, Any], bool]:
    """Enrol a new member or update a profile; answers the member and whether it was created.
    With ``update=False`` a member found is left as it is (enrolment only)."""
    profile = parse_profile(body)

    def work(uow: UnitOfWork) -> tuple[dict[str, Any], bool]:
        programme = require_programme(uow, program_id)
        now = clock()
        member = uow.member(program_id, member_id)
        created = False
        if member is None:
            enrolled_at = profile.pop("enrolled_at", now)
            member, created = enrol(uow, programme, member_id, profile,
                                    enrolled_at=enrolled_at, now=now)
        if not created and update:  # a member found, or enrolled by another request meanwhile
            profile.pop("enrolled_at", None)
            for key, value in profile.items():
                setattr(member, key, value)
            uow.update_profile(member)
        view = member_view(programme, member, now)
        uow.commit()
        return view, created

    return transaction(engine, work)


def get_member(
    engine: sa.Engine, program_id: str, member_id: str, clock: Clock = utc_now
) -> dict[str, Any]:
    def work(uow: UnitOfWork) -> dict[str, Any]:
        # The programme cached in this process, confirmed by the version the member
        # statement reads; the member read without a lock and without its rule usage, with
        # its open lots: two statements.
        programme = uow.cached_programme(program_id)
        member = uow.member(program_id, member_id, lock=False, usage=False, lots=True)
        if programme is None or not uow.is_current(programme):
            programme = require_programme(uow, program_id)
        if member is None:
            raise UnknownMember(
                f"no member {member_id!r} in programme {program_id}", field="member"
            )
        return member_view(programme, member, clock())

    return transaction(engine, work, read_only=True)
