"""Web pages (server-rendered, Jinja2, a little plain JavaScript, no build step): the
staff's cashier screen and admin pages, and the member portal. ``install(app)`` adds
them to the FastAPI application that ``setia serve`` and ``setia demo`` serve."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from starlette.exceptions import HTTPException

from setia.entrypoints.web import growth_pages, portal, report_pages, staff_pages
from setia.entrypoints.web.base import (
    WebForbidden,
    WebRedirect,
    redirect,
    render,
    staff_locale,
)

STATIC = Path(__file__).parent / "static"
_FILES = {path.name: path for path in STATIC.iterdir() if path.is_file()}
_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml",
          ".txt": "text/plain"}

static = APIRouter(include_in_schema=False)


@static.get("/static/web/{name}")
def static_file(name: str) -> Response:
    path = _FILES.get(name)
    if path is None:
        raise HTTPException(404, "no such file")
    return FileResponse(path, media_type=_TYPES.get(path.suffix, "application/octet-stream"),
                        headers={"Cache-Control": "public, max-age=3600"})


def _redirect(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, WebRedirect)
    return redirect(exc.location)


def _forbidden(request: Request, _: Exception) -> HTMLResponse:
    return render(request, "forbidden.html", staff_locale(request), status=403)


def install(app: FastAPI) -> None:
    app.include_router(static)
    app.include_router(staff_pages.router)
    app.include_router(growth_pages.router)
    app.include_router(report_pages.router)
    app.include_router(portal.router)
    app.add_exception_handler(WebRedirect, _redirect)
    app.add_exception_handler(WebForbidden, _forbidden)
