"""What every page shares: templates per language, sessions from cookies, CSRF checks,
redirects, and the helpers templates format with."""

from __future__ import annotations

import logging
import os
import secrets
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from setia.entrypoints.web import i18n
from setia.service import staff
from setia.service.staff import Session

HERE = Path(__file__).parent
STAFF_COOKIE = "setia_staff"
MEMBER_COOKIE = "setia_member"
LANG_COOKIE = "setia_lang"
FORM_COOKIE = "setia_form"  # double-submit CSRF token of forms shown before signing in
PUBLIC_URL = "SETIA_PUBLIC_URL"  # where members reach the site: the base of emailed links
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

log = logging.getLogger("setia.web")


class WebRedirect(Exception):  # noqa: N818 - a control-flow signal, not an error
    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


class WebForbidden(Exception):  # noqa: N818
    pass


@cache
def environment(locale: str) -> Any:
    """The templates for one language (jinja2 is imported on the first page, not at start)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(["html"]),
                      extensions=["jinja2.ext.i18n"], trim_blocks=True, lstrip_blocks=True)
    env.install_gettext_translations(  # type: ignore[attr-defined]
        i18n.translations(locale), newstyle=True)
    return env


def engine_of(request: Request) -> sa.Engine:
    engine: sa.Engine = request.app.state.engine
    return engine


def secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(response: Response, request: Request, name: str, value: str,
               max_age: int | None = None) -> None:
    response.set_cookie(name, value, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure(request), path="/")


def staff_session(request: Request, program: str | None = None,
                  role: str | None = None) -> Session:
    session = staff.session_for(engine_of(request), request.cookies.get(STAFF_COOKIE))
    if session is None or session.kind != "staff":
        raise WebRedirect("/staff/login")
    if program is not None and not session.may_use(program):
        raise WebForbidden()
    if role is not None and session.role != role:
        raise WebForbidden()
    return session


def member_session(request: Request, program: str) -> Session:
    session = staff.session_for(engine_of(request), request.cookies.get(MEMBER_COOKIE))
    if session is None or session.kind != "member" or session.program_id != program:
        raise WebRedirect(f"/portal/{program}/signin")
    return session


def public_url(request: Request) -> str | None:
    """The base of every link the server emails (``https://rewards.example.com``), never
    the request's ``Host`` header, which the client chooses: SETIA_PUBLIC_URL. Without it
    (a laptop trying the demo) the request's own base when its host is a loopback name,
    which can only lead back to the machine that asked; else None, with a warning: then no
    link is sent."""
    configured = os.environ.get(PUBLIC_URL, "").strip().rstrip("/")
    if configured:
        parts = urlsplit(configured)
        if parts.scheme in ("http", "https") and parts.hostname and not (
                parts.query or parts.fragment):
            return configured
        log.warning("%s is not an http(s) URL without query or fragment; ignored", PUBLIC_URL)
    if request.url.hostname in LOOPBACK_HOSTS:
        return str(request.base_url).rstrip("/")
    log.warning("%s is not set: no sign-in link is sent to a request for host %r; set it to "
                "the address members reach this site at", PUBLIC_URL, request.url.hostname)
    return None


def whole_number(text: str) -> bool:
    """Digits 0-9 only (``str.isdigit`` takes ² and other digits ``int`` refuses)."""
    return text.isascii() and text.isdigit()


def check_csrf(expected: str | None, given: str) -> None:
    if not expected or not given or not secrets.compare_digest(expected, given):
        raise WebForbidden()


def form_token(request: Request) -> str:
    """The double-submit token for forms shown before signing in (a cookie and a field)."""
    return request.cookies.get(FORM_COOKIE) or secrets.token_urlsafe(24)


def staff_locale(request: Request) -> str:
    return i18n.choose(request.query_params.get("lang"), request.cookies.get(LANG_COOKIE),
                       i18n.from_accept_language(request.headers.get("accept-language")))


def render(request: Request, template: str, locale: str, status: int = 200,
           **context: Any) -> HTMLResponse:
    currency = context.setdefault("currency", "MYR")
    timezone = context.setdefault("timezone", "UTC")

    def money(amount: Any, exact: bool = False) -> str:
        return i18n.money(Decimal(str(amount)), currency, locale, exact=exact)

    context.update(
        request=request, locale=locale, html_lang=i18n.HTML_LANG[locale],
        locales=[(code, i18n.NAMES[code]) for code in i18n.LOCALES],
        money=money, num=lambda value: i18n.number(value, locale),
        day=lambda value: i18n.day(value, locale),
        moment=lambda value: i18n.moment(value, locale, timezone),
        path=request.url.path,
    )
    html = environment(locale).get_template(template).render(**context)
    response = HTMLResponse(html, status_code=status)
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "frame-ancestors 'none'; form-action 'self'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    # the pages' own origin may use the camera: the cashier's Scan buttons read QR codes
    response.headers["Permissions-Policy"] = (
        "camera=(self), microphone=(), geolocation=(), payment=()")
    response.headers["Cache-Control"] = "no-store"
    if request.query_params.get("lang") in i18n.LOCALES:
        set_cookie(response, request, LANG_COOKIE, request.query_params["lang"],
                   max_age=365 * 86400)
    return response


def redirect(location: str) -> RedirectResponse:
    return RedirectResponse(location, status_code=303)
