"""The member portal: sign-in by a one-time link sent by email, then the member's
balances, expiring points, tier progress, rewards to redeem, vouchers with their QR,
activity, profile and language, and "download my data"."""

from __future__ import annotations

import json
import secrets
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Form, Request
from fastapi.responses import HTMLResponse, Response

from setia.domain import rewards as reward_rules
from setia.domain.errors import SetiaError
from setia.entrypoints.web import i18n, qr
from setia.entrypoints.web.base import (
    FORM_COOKIE,
    LANG_COOKIE,
    MEMBER_COOKIE,
    WebForbidden,
    check_csrf,
    engine_of,
    form_token,
    public_url,
    redirect,
    render,
    set_cookie,
)
from setia.entrypoints.web.mailer import send_signin_link
from setia.service import insights, members, programmes, redemptions, referrals, staff
from setia.service.common import utc_now
from setia.service.staff import Session

router = APIRouter(include_in_schema=False)


def _facts(request: Request, program: str) -> dict[str, Any]:
    try:
        document = programmes.get_programme(engine_of(request), program)
    except SetiaError:
        raise WebForbidden() from None
    model = document["definition"]
    return {"program": program, "program_name": model["name"], "currency": model["currency"],
            "timezone": model["timezone"], "points_name": model["points"].get("name", "points"),
            "definition": model}


def _locale(request: Request, member_pref: str | None = None) -> str:
    return i18n.choose(request.query_params.get("lang"), member_pref,
                       request.cookies.get(LANG_COOKIE),
                       i18n.from_accept_language(request.headers.get("accept-language")))


def _session(request: Request, program: str) -> Session | None:
    session = staff.session_for(engine_of(request), request.cookies.get(MEMBER_COOKIE))
    if session is None or session.kind != "member" or session.program_id != program:
        return None
    return session


def _anonymous(request: Request, program: str, template: str, status: int = 200,
               **context: Any) -> Response:
    facts = _facts(request, program)
    token = form_token(request)
    response = render(request, template, _locale(request), status=status,
                      csrf=token,
                      **facts, **context)
    set_cookie(response, request, FORM_COOKIE, token)
    return response


@router.get("/portal/{program}/signin")
def signin_form(request: Request, program: str) -> Response:
    return _anonymous(request, program, "portal_signin.html")


@router.post("/portal/{program}/signin")
def signin_request(request: Request, program: str, tasks: BackgroundTasks,
                   email: str = Form(""), csrf: str = Form("")) -> Response:
    """The same page, at once, whether or not a member has this email: the link is mailed
    after the answer has gone (a background task), and a mail error is only logged. The
    link points at SETIA_PUBLIC_URL, never at the Host the request named
    (``base.public_url``); with neither that nor a loopback host no link is sent."""
    check_csrf(request.cookies.get(FORM_COOKIE), csrf)
    facts = _facts(request, program)
    engine = engine_of(request)
    try:
        found = staff.request_link(engine, program, email)
    except staff.TooManyAttempts as exc:
        return _anonymous(request, program, "portal_signin.html", status=429, error=exc,
                          email=email)
    base = public_url(request)
    # The same answer whether or not a member has this email.
    response = _anonymous(request, program, "portal_signin.html", sent=True, email=email)
    if found is not None and base is not None:
        member_id, token = found
        lang, cookie = request.query_params.get("lang"), request.cookies.get(LANG_COOKIE)
        accept = i18n.from_accept_language(request.headers.get("accept-language"))

        def mail() -> None:
            locale = i18n.choose(lang, staff.member_locale(engine, program, member_id),
                                 cookie, accept)
            translate = i18n.translations(locale).gettext
            send_signin_link(
                email.strip(), f"{base}/portal/{program}/link/{token}",
                translate("Your sign-in link for %(programme)s")
                % {"programme": facts["program_name"]},
                translate("Open this link within 15 minutes to sign in. If you did not ask "
                          "for it, ignore this email."))

        tasks.add_task(mail)
    return response


@router.get("/portal/{program}/link/{token}")
def link_landing(request: Request, program: str, token: str) -> Response:
    """A button that spends the link: mail scanners that follow links only GET it."""
    return _anonymous(request, program, "portal_link.html", token=token)


@router.post("/portal/{program}/link/{token}")
def link_use(request: Request, program: str, token: str, csrf: str = Form("")) -> Response:
    check_csrf(request.cookies.get(FORM_COOKIE), csrf)
    try:
        cookie, session = staff.use_link(engine_of(request), program, token)
    except staff.LinkInvalid as exc:
        return _anonymous(request, program, "portal_link.html", status=400, token=token,
                          error=exc)
    response = redirect(f"/portal/{program}/")
    set_cookie(response, request, MEMBER_COOKIE, cookie, max_age=staff.SESSION_HOURS * 3600)
    response.delete_cookie(FORM_COOKIE, path="/")
    return response


def _home(request: Request, program: str, session: Session, status: int = 200,
          **context: Any) -> HTMLResponse:
    engine = engine_of(request)
    assert session.member_id is not None
    facts = _facts(request, program)
    page = insights.member_page(engine, program, session.member_id)
    member = page["member"]
    pref = staff.member_locale(engine, program, session.member_id)
    locale = _locale(request, pref)
    now = utc_now()
    offers = []
    for reward in insights.rewards_with_stock(engine, program):
        available = ((reward["left"] is None or reward["left"] > 0)
                     and (not reward["tiers"] or member["tier"]["id"] in reward["tiers"])
                     and (reward["from"] is None or reward["from"] <= now.date())
                     and (reward["until"] is None or reward["until"] >= now.date()))
        if available:
            reward["affordable"] = reward["cost"] <= member["balances"]["available"]
            offers.append(reward)
    vouchers = [dict(v, qr=qr.svg(f"setia:voucher:{v['code']}", scale=4))
                for v in page["vouchers"] if v["status"] == "valid"]
    referral = None
    if facts["definition"].get("referrals"):
        # the member's code and link (made on the first visit, as the API's GET does)
        referral = referrals.code_for(engine, program, session.member_id)
        counts = referral["referrals"]
        referral.update(qr=qr.svg(referral["link"], scale=3),
                        joined=sum(n for status, n in counts.items() if status != "rejected"))
    return render(request, "portal_home.html", locale, status=status,
                  csrf=session.csrf,
                  key=secrets.token_urlsafe(12), member=member, page=page, offers=offers,
                  vouchers=vouchers, pref=pref or locale, referral=referral,
                  card=qr.svg(qr.member_payload(session.member_id), scale=5),
                  normalise=reward_rules.normalise_code, **facts, **context)


@router.get("/portal/{program}/")
def portal_home(request: Request, program: str) -> Response:
    session = _session(request, program)
    if session is None:
        return redirect(f"/portal/{program}/signin")
    return _home(request, program, session,
                 redeemed=request.query_params.get("redeemed"),
                 saved=request.query_params.get("saved") == "1")


@router.post("/portal/{program}/redeem")
def portal_redeem(request: Request, program: str, reward: str = Form(""), key: str = Form(""),
                  csrf: str = Form("")) -> Response:
    session = _session(request, program)
    if session is None:
        return redirect(f"/portal/{program}/signin")
    check_csrf(session.csrf, csrf)
    try:
        result = redemptions.redeem(engine_of(request), program,
                                    {"member": session.member_id, "reward": reward},
                                    f"portal-{key}")
    except SetiaError as exc:
        return _home(request, program, session, status=exc.status, error=exc)
    code = result["voucher"]["code"] if result.get("voucher") else ""
    return redirect(f"/portal/{program}/?redeemed={code}")


@router.post("/portal/{program}/profile")
def portal_profile(request: Request, program: str, name: str = Form(""),
                   phone: str = Form(""), language: str = Form(""),
                   csrf: str = Form("")) -> Response:
    session = _session(request, program)
    if session is None:
        return redirect(f"/portal/{program}/signin")
    check_csrf(session.csrf, csrf)
    assert session.member_id is not None
    engine = engine_of(request)
    profile = {key: value.strip() for key, value in (("name", name), ("phone", phone))
               if value.strip()}
    try:
        members.upsert_member(engine, program, session.member_id, profile)
    except SetiaError as exc:
        return _home(request, program, session, status=exc.status, error=exc)
    if language in i18n.LOCALES:
        staff.set_member_locale(engine, program, session.member_id, language)
    return redirect(f"/portal/{program}/?saved=1")


@router.get("/portal/{program}/my-data.json")
def portal_export(request: Request, program: str) -> Response:
    session = _session(request, program)
    if session is None:
        return redirect(f"/portal/{program}/signin")
    assert session.member_id is not None
    data = insights.member_export(engine_of(request), program, session.member_id)
    return Response(json.dumps(data, indent=2, ensure_ascii=False, default=str),
                    media_type="application/json",
                    headers={"Content-Disposition":
                             f'attachment; filename="{program}-{session.member_id}.json"',
                             "Cache-Control": "no-store"})


@router.post("/portal/{program}/signout")
def portal_signout(request: Request, program: str, csrf: str = Form("")) -> Response:
    session = _session(request, program)
    if session is not None:
        check_csrf(session.csrf, csrf)
        staff.sign_out(engine_of(request), request.cookies.get(MEMBER_COOKIE))
    response = redirect(f"/portal/{program}/signin")
    response.delete_cookie(MEMBER_COOKIE, path="/")
    return response
