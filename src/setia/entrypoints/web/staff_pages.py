"""Staff pages: sign-in, the cashier screen (cashiers and owners) and the owner's admin
pages (dashboard, members, programme, rewards). Thin: every change goes through the same
services as the HTTP API, with the form's hidden key as the idempotency key."""

from __future__ import annotations

import secrets
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response

from setia.domain.errors import (
    IdempotencyConflict,
    InvalidField,
    InvalidProgramme,
    SetiaError,
    VersionConflict,
)
from setia.entrypoints.web import i18n, qr
from setia.entrypoints.web.base import (
    FORM_COOKIE,
    LANG_COOKIE,
    STAFF_COOKIE,
    WebRedirect,
    check_csrf,
    engine_of,
    form_token,
    redirect,
    render,
    set_cookie,
    staff_locale,
    staff_session,
    whole_number,
)
from setia.service import (
    coupons,
    events,
    insights,
    members,
    programmes,
    redemptions,
    staff,
    till,
)
from setia.service.common import utc_now
from setia.service.staff import Session

router = APIRouter(include_in_schema=False)


def _programme_facts(request: Request, program: str) -> dict[str, Any]:
    document = programmes.get_programme(engine_of(request), program)
    model = document["definition"]
    return {"program": program, "program_name": model["name"], "currency": model["currency"],
            "timezone": model["timezone"], "points_name": model["points"].get("name", "points"),
            "definition": model, "version": document["version"]}


def _page(request: Request, template: str, session: Session, program: str,
          status: int = 200, **context: Any) -> HTMLResponse:
    facts = _programme_facts(request, program)
    locale = staff_locale(request)
    return render(request, template, locale, status=status, session=session, csrf=session.csrf,
                  key=secrets.token_urlsafe(12), **facts, **context)


# ----------------------------------------------------------------------------- sign-in


@router.get("/")
def root() -> Response:
    return redirect("/staff/")


@router.get("/staff/login")
def login_form(request: Request) -> Response:
    token = form_token(request)
    response = render(request, "login.html", staff_locale(request), csrf=token, error=None)
    set_cookie(response, request, FORM_COOKIE, token)
    if request.query_params.get("lang") in i18n.LOCALES:
        set_cookie(response, request, LANG_COOKIE, request.query_params["lang"],
                   max_age=365 * 86400)
    return response


@router.post("/staff/login")
def login(request: Request, username: str = Form(""), password: str = Form(""),
          csrf: str = Form("")) -> Response:
    check_csrf(request.cookies.get(FORM_COOKIE), csrf)
    client = request.client.host if request.client else "unknown"
    locale = staff_locale(request)
    try:
        cookie, _ = staff.sign_in(engine_of(request), username, password, client)
    except (staff.SignInFailed, staff.TooManyAttempts) as exc:
        return render(request, "login.html", locale, status=exc.status, csrf=csrf,
                      error=exc.type, username=username)
    response = redirect("/staff/")
    set_cookie(response, request, STAFF_COOKIE, cookie, max_age=staff.SESSION_HOURS * 3600)
    response.delete_cookie(FORM_COOKIE, path="/")
    return response


@router.post("/staff/logout")
def logout(request: Request, csrf: str = Form("")) -> Response:
    session = staff_session(request)
    check_csrf(session.csrf, csrf)
    staff.sign_out(engine_of(request), request.cookies.get(STAFF_COOKIE))
    response = redirect("/staff/login")
    response.delete_cookie(STAFF_COOKIE, path="/")
    return response


@router.get("/staff/language")
def staff_language(request: Request, lang: str = "en", back: str = "/staff/") -> Response:
    response = redirect(back if back.startswith("/") and not back.startswith("//") else "/")
    if lang in i18n.LOCALES:
        set_cookie(response, request, LANG_COOKIE, lang, max_age=365 * 86400)
    return response


@router.get("/staff/")
def staff_home(request: Request) -> Response:
    session = staff_session(request)
    ids = [program for program in insights.programme_ids(engine_of(request))
           if session.may_use(program)]
    if len(ids) == 1:
        landing = "dashboard" if session.role == "owner" else "cashier"
        return redirect(f"/staff/{ids[0]}/{landing}")
    return render(request, "programmes.html", staff_locale(request), session=session,
                  csrf=session.csrf, programs=ids)


# ----------------------------------------------------------------------------- cashier


@router.get("/staff/{program}/cashier")
def cashier(request: Request, program: str, q: str = "") -> Response:
    session = staff_session(request, program)
    found = insights.find_members(engine_of(request), program, q) if q.strip() else []
    if len(found) == 1 and q.strip():
        raise WebRedirect(f"/staff/{program}/cashier/{found[0]['id']}")
    return _page(request, "cashier.html", session, program, q=q, found=found,
                 enrol_phone=q.strip() if q.strip() and not found else "")


@router.post("/staff/{program}/cashier/enrol")
def cashier_enrol(request: Request, program: str, phone: str = Form(""), name: str = Form(""),
                  email: str = Form(""), key: str = Form(""), csrf: str = Form("")) -> Response:
    session = staff_session(request, program)
    check_csrf(session.csrf, csrf)
    engine = engine_of(request)
    digits = "".join(ch for ch in phone if ch.isdigit() or ch == "+")
    existing = [found for found in insights.find_members(engine, program, phone)
                if "".join(ch for ch in found["phone"] or "" if ch.isdigit() or ch == "+")
                == digits] if digits else []
    member_id = "w-" + "".join(ch for ch in key if ch.isalnum())[:12].lower()
    if existing and existing[0]["id"] != member_id:
        return redirect(f"/staff/{program}/cashier/{existing[0]['id']}")
    profile: dict[str, Any] = {"phone": phone.strip()}
    if name.strip():
        profile["name"] = name.strip()
    if email.strip():
        profile["email"] = email.strip()
    try:
        if not phone.strip():
            raise InvalidField("phone is required", field="phone")
        if len(key) < 8 or len(member_id) < 10:
            raise InvalidField("the form has no key; reload the page", field="key")
        # Enrolment only: the form sent twice finds its member and changes nothing (a
        # cashier may not rewrite a member's profile, its email included, this way); sent
        # again with other details, it says so rather than answer as if they were taken.
        view, created = members.upsert_member(engine, program, member_id, profile,
                                              update=False)
        given = members.parse_profile(profile)
        if not created and any(view.get(name) != value for name, value in given.items()):
            raise IdempotencyConflict(
                f"this form enrolled member {member_id} already, with other details: "
                "they were not changed; reload the page to enrol someone else", field="key")
    except SetiaError as exc:
        return _page(request, "cashier.html", session, program, status=exc.status, q=phone,
                     found=[], enrol_phone=phone, error=exc)
    return redirect(f"/staff/{program}/cashier/{member_id}?enrolled=1")


def _cashier_member(request: Request, session: Session, program: str, member_id: str,
                    status: int = 200, **context: Any) -> HTMLResponse:
    engine = engine_of(request)
    member = members.get_member(engine, program, member_id)
    return _page(request, "cashier_member.html", session, program, status=status,
                 member=member, card=qr.svg(qr.member_payload(member_id), scale=4),
                 enrolled=request.query_params.get("enrolled") == "1", **context)


@router.get("/staff/{program}/cashier/{member_id}")
def cashier_member(request: Request, program: str, member_id: str) -> Response:
    session = staff_session(request, program)
    try:
        return _cashier_member(request, session, program, member_id)
    except SetiaError:
        raise WebRedirect(f"/staff/{program}/cashier") from None


def parse_lines(text: str) -> list[dict[str, Any]]:
    """Lines typed one a row as ``SKU, category, quantity, amount`` (category may be empty)."""
    lines = []
    for number, row in enumerate(text.strip().splitlines(), start=1):
        if not row.strip():
            continue
        parts = [part.strip() for part in row.split(",")]
        if len(parts) != 4:
            raise InvalidField(f"line {number}: write SKU, category, quantity, amount",
                               field="lines")
        sku, category, quantity, amount = parts
        if not whole_number(quantity):
            raise InvalidField(f"line {number}: quantity must be a whole number", field="lines")
        line: dict[str, Any] = {"sku": sku, "quantity": int(quantity), "amount": amount}
        if category:
            line["category"] = category
        lines.append(line)
    return lines


@router.post("/staff/{program}/cashier/{member_id}/purchase")
def cashier_purchase(request: Request, program: str, member_id: str, amount: str = Form(""),
                     lines: str = Form(""), store: str = Form(""), coupon: str = Form(""),
                     action: str = Form("record"), key: str = Form(""),
                     csrf: str = Form("")) -> Response:
    """Record a purchase; with a coupon code, the coupon is used for the basket and the
    purchase of what is left to pay is recorded, both or neither (service/till.py).
    ``action=check`` answers the coupon's discount for the basket and writes nothing."""
    session = staff_session(request, program)
    check_csrf(session.csrf, csrf)
    engine = engine_of(request)
    typed = {"amount": amount, "lines": lines, "store": store, "coupon": coupon}
    code = coupon.strip()
    try:
        parsed = parse_lines(lines)
        if not amount.strip() and parsed:
            amount = str(sum((Decimal(line["amount"]) for line in parsed), Decimal(0)))
        if not amount.strip():
            raise InvalidField("amount is required", field="amount")
        if action == "check":
            if not code:
                raise InvalidField("coupon code is required", field="coupon")
            basket: dict[str, Any] = {"code": code, "member": member_id,
                                      "amount": amount.strip()}
            if parsed:
                basket["lines"] = parsed
            checked = coupons.validate(engine, program, basket)
            return _cashier_member(request, session, program, member_id, done="coupon-check",
                                   checked=dict(checked, amount=amount.strip(), paid=str(
                                       Decimal(amount.strip()) - Decimal(checked["discount"]))),
                                   form=typed)
        event_id = f"web-{key}"
        body: dict[str, Any] = {"id": event_id, "type": "purchase", "member": member_id,
                                "order_id": event_id, "amount": amount.strip(),
                                "occurred_at": insights.recorded_time(engine, program, event_id)
                                or utc_now().isoformat()}
        if parsed:
            body["lines"] = parsed
        if store.strip():
            body["store"] = store.strip()
        if code:
            sale = till.purchase_with_coupon(engine, program, body, code, f"web-coupon-{key}")
            return _cashier_member(request, session, program, member_id, done="purchase",
                                   result=sale["purchase"], sale=sale)
        result = events.ingest_event(engine, program, body)
    except (SetiaError, InvalidOperation) as exc:
        error = exc if isinstance(exc, SetiaError) else InvalidField("amount is not a number",
                                                                      field="amount")
        return _cashier_member(request, session, program, member_id, status=error.status,
                               error=error, form=typed)
    return _cashier_member(request, session, program, member_id, done="purchase",
                           result=result)


@router.post("/staff/{program}/cashier/{member_id}/voucher")
def cashier_voucher(request: Request, program: str, member_id: str, code: str = Form(""),
                    key: str = Form(""), csrf: str = Form("")) -> Response:
    session = staff_session(request, program)
    check_csrf(session.csrf, csrf)
    try:
        result = redemptions.use_voucher(engine_of(request), program,
                                         code.strip().removeprefix("setia:voucher:"),
                                         f"web-voucher-{key}")
    except SetiaError as exc:
        return _cashier_member(request, session, program, member_id, status=exc.status,
                               error=exc)
    return _cashier_member(request, session, program, member_id, done="voucher",
                           result=result)


@router.post("/staff/{program}/cashier/{member_id}/points")
def cashier_points(request: Request, program: str, member_id: str, points: str = Form(""),
                   key: str = Form(""), csrf: str = Form("")) -> Response:
    session = staff_session(request, program)
    check_csrf(session.csrf, csrf)
    try:
        if not whole_number(points.strip()) or int(points) > redemptions.MAX_POINTS:
            raise InvalidField(f"points must be a whole number up to "
                               f"{redemptions.MAX_POINTS:,}", field="points")
        result = redemptions.redeem(engine_of(request), program,
                                    {"member": member_id, "points": int(points)},
                                    f"web-points-{key}")
    except SetiaError as exc:
        return _cashier_member(request, session, program, member_id, status=exc.status,
                               error=exc)
    return _cashier_member(request, session, program, member_id, done="points", result=result)


@router.get("/staff/{program}/members/{member_id}/card.svg")
def member_card(request: Request, program: str, member_id: str) -> Response:
    staff_session(request, program)
    return Response(qr.svg(qr.member_payload(member_id)), media_type="image/svg+xml")


# ----------------------------------------------------------------------------- owner


EARLIEST_DAY, LATEST_DAY = date(1900, 1, 1), date(2199, 12, 31)


def _query_day(text: str) -> date | None:
    """A day of the query string, or None if it is none or out of 1900 to 2199 (where
    the period's arithmetic and its moves to UTC would overflow)."""
    try:
        day = date.fromisoformat(text)
    except ValueError:
        return None
    return day if EARLIEST_DAY <= day <= LATEST_DAY else None


def _period(request: Request, program: str) -> tuple[date, date]:
    engine = engine_of(request)
    end = _query_day(request.query_params.get("to", "")) or insights.latest_activity_day(
        engine, program)
    start = _query_day(request.query_params.get("from", "")) or end - timedelta(days=89)
    if start > end:
        start, end = end, start
    return start, min(end, start + timedelta(days=3 * 366))


@router.get("/staff/{program}/dashboard")
def dashboard(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    start, end = _period(request, program)
    figures = insights.dashboard(engine_of(request), program, start, end)
    return _page(request, "dashboard.html", session, program, figures=figures,
                 chart=_bars(figures["series"]))


def _bars(series: dict[str, Any]) -> dict[str, Any]:
    """Bar geometry for the inline SVG charts (no JavaScript). A day whose points are
    negative (more clawed back than issued) draws no bar; its value shows in the title."""
    out: dict[str, Any] = {"keys": series["keys"], "monthly": series["monthly"]}
    for name in ("purchases", "issued", "redeemed"):
        values = series[name]
        top = max(values) if values and max(values) > 0 else 1
        width = 600 / max(len(values), 1)
        out[name] = {"top": top, "bars": [
            {"x": round(i * width, 2), "w": round(max(width - 1, 0.5), 2),
             "h": round(150 * max(v, 0) / top, 2), "v": v, "k": series["keys"][i]}
            for i, v in enumerate(values)]}
    return out


@router.get("/staff/{program}/members")
def member_search(request: Request, program: str, q: str = "") -> Response:
    session = staff_session(request, program, role="owner")
    found = insights.find_members(engine_of(request), program, q) if q.strip() else []
    return _page(request, "members.html", session, program, q=q, found=found)


def _member_page(request: Request, session: Session, program: str, member_id: str,
                 status: int = 200, **context: Any) -> HTMLResponse:
    page = insights.member_page(engine_of(request), program, member_id)
    return _page(request, "member.html", session, program, status=status, page=page,
                 member=page["member"], card=qr.svg(qr.member_payload(member_id), scale=4),
                 **context)


@router.get("/staff/{program}/members/{member_id}")
def member_detail(request: Request, program: str, member_id: str) -> Response:
    session = staff_session(request, program, role="owner")
    try:
        return _member_page(request, session, program, member_id)
    except SetiaError:
        raise WebRedirect(f"/staff/{program}/members?q={member_id}") from None


@router.post("/staff/{program}/members/{member_id}/adjust")
def member_adjust(request: Request, program: str, member_id: str, points: str = Form(""),
                  reason: str = Form(""), key: str = Form(""), csrf: str = Form("")) -> Response:
    session = staff_session(request, program, role="owner")
    check_csrf(session.csrf, csrf)
    try:
        try:
            amount = int(points.strip())
        except ValueError:
            raise InvalidField("points must be a whole number", field="points") from None
        redemptions.adjust(engine_of(request), program,
                           {"member": member_id, "points": amount,
                            "reason": f"{reason.strip()} (by {session.username})"
                            if reason.strip() else ""},
                           f"web-adjust-{key}")
    except SetiaError as exc:
        return _member_page(request, session, program, member_id, status=exc.status,
                            error=exc, points=points, reason=reason)
    return redirect(f"/staff/{program}/members/{member_id}?adjusted=1")


@router.get("/staff/{program}/programme")
def programme_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    engine = engine_of(request)
    history = insights.versions(engine, program)
    current = history[0]["version"]
    try:
        a = int(request.query_params.get("a", current - 1 if current > 1 else current))
        b = int(request.query_params.get("b", current))
    except ValueError:
        a, b = current - 1, current
    if not (1 <= a <= current and 1 <= b <= current):  # versions there are
        a, b = max(current - 1, 1), current
    old, new = insights.version_yaml(engine, program, a), insights.version_yaml(engine, program, b)
    changes = insights.diff(old or "", new or "", f"v{a}", f"v{b}") if old and new else []
    return _page(request, "programme.html", session, program, history=history, a=a, b=b,
                 changes=changes, draft=insights.version_yaml(engine, program, current),
                 base=current,
                 sample={"member": "", "amount": "10.00", "store": "", "lines": ""},
                 period=_whatif_period(request, program))


WHATIF_DAYS = 30  # the what-if's default period: the last 30 days with activity


def _whatif_period(request: Request, program: str) -> dict[str, str]:
    end = insights.latest_activity_day(engine_of(request), program)
    return {"from": (end - timedelta(days=WHATIF_DAYS - 1)).isoformat(), "to": end.isoformat()}


def _day(text: str, field: str) -> date:
    day = _query_day(text.strip())
    if day is None:
        raise InvalidField(f"{field} must be a date (YYYY-MM-DD) from 1900 to 2199",
                           field=field)
    return day


@router.post("/staff/{program}/programme")
def programme_draft(request: Request, program: str, draft: str = Form(""),
                    action: str = Form("validate"), member: str = Form(""),
                    amount: str = Form(""), store: str = Form(""), lines: str = Form(""),
                    whatif_from: str = Form(""), whatif_to: str = Form(""),
                    base: str = Form(""), csrf: str = Form("")) -> Response:
    """Validate, preview, what-if or save a draft. ``base`` is the version the draft was
    edited from (the page puts it in the form): a save while another version is current
    is refused, shows the changes against that one, and takes the current one as the
    draft's base, so that saving again is a choice made after seeing them."""
    session = staff_session(request, program, role="owner")
    check_csrf(session.csrf, csrf)
    engine = engine_of(request)
    history = insights.versions(engine, program)
    current = history[0]["version"]
    base_version = int(base) if whole_number(base) and len(base) <= 9 else None
    context: dict[str, Any] = {"history": history, "a": current, "b": current, "changes": [],
                               "draft": draft, "sample": {"member": member, "amount": amount,
                                                          "store": store, "lines": lines},
                               "period": {"from": whatif_from, "to": whatif_to},
                               "base": base_version if base_version is not None else current}
    try:
        if base.strip() and base_version is None:
            raise InvalidField("base must be a programme version", field="base")
        document = programmes.parse_text(draft)
        model = programmes.validate_document(document)
        if model.id != program:
            raise InvalidField(f"the draft's id {model.id!r} is not {program!r}", field="id")
        context["valid"] = True
        context["changes"] = insights.diff(insights.version_yaml(engine, program, current) or "",
                                           insights.as_yaml(document),
                                           f"v{current}", "draft")
        if action == "preview":
            if not member.strip():
                raise InvalidField("choose a sample member for the preview", field="member")
            sample: dict[str, Any] = {"id": f"preview-{secrets.token_hex(6)}",
                                      "type": "purchase", "member": member.strip(),
                                      "order_id": f"preview-{secrets.token_hex(6)}",
                                      "occurred_at": utc_now().isoformat()}
            parsed = parse_lines(lines)
            if parsed:
                sample["lines"] = parsed
            sample["amount"] = amount.strip() or str(sum(
                (Decimal(line["amount"]) for line in parsed), Decimal(0)))
            if store.strip():
                sample["store"] = store.strip()
            context["preview"] = insights.preview_draft(engine, program, draft, sample)
        elif action == "whatif":
            from setia.service import whatif  # Polars is loaded on the first what-if

            context["whatif"] = whatif.run(engine, program, document,
                                           _day(whatif_from, "whatif_from"),
                                           _day(whatif_to, "whatif_to"))
        elif action == "save":
            stored = programmes.store_programme(engine, document, program_id=program,
                                                base_version=base_version)
            return redirect(f"/staff/{program}/programme?saved={stored['version']}")
    except InvalidProgramme as exc:
        context["valid"] = False
        context["problems"] = exc.errors
        return _page(request, "programme.html", session, program, status=422, **context)
    except VersionConflict as exc:
        history = insights.versions(engine, program)
        latest = history[0]["version"]
        context.update(history=history, a=latest, b=latest, base=latest, error=exc,
                       changes=insights.diff(insights.version_yaml(engine, program, latest) or "",
                                             insights.as_yaml(document), f"v{latest}",
                                             "draft"))
        return _page(request, "programme.html", session, program, status=exc.status, **context)
    except (SetiaError, InvalidOperation) as exc:
        context["error"] = exc if isinstance(exc, SetiaError) else InvalidField(
            "amount is not a number", field="amount")
        return _page(request, "programme.html", session, program, status=422, **context)
    return _page(request, "programme.html", session, program, **context)


@router.get("/staff/{program}/rewards")
def rewards_page(request: Request, program: str) -> Response:
    session = staff_session(request, program, role="owner")
    return _page(request, "rewards.html", session, program,
                 rewards=insights.rewards_with_stock(engine_of(request), program))


__all__ = ["router"]
