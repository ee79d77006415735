"""The live path's routes (entrypoints/api/live.py) answer exactly as FastAPI's routes they
stand in for, on SQLite and PostgreSQL.

The same requests go, in the same order, to an application with the live routes and to
one without them (``create_app(engine, live_routes=False)``), each on a database of its
own with the same programme: every answer must be the same status, the same headers
(the request id aside, unless the caller gave one) and the same body, byte for byte.
The requests cover the answers of the three routes: applied, replayed and rejected
events, batches, member views, and every refusal (key, scope, programme, content type,
body size, malformed JSON, unstorable text, body shape, unknown programme or member,
the database away). /openapi.json is the same document byte for byte too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from setia.adapters.db.engine import make_engine
from setia.adapters.db.migrate import upgrade
from setia.entrypoints.api.app import create_app
from setia.entrypoints.api.live import HOT_ROUTES, LiveRoutes
from setia.service.keys import create_key
from tests.conftest import assert_journal_ok, load_programme, scratch_postgres_database
from tests.e2e.api_server import CAFE_PROGRAMME

ADMIN_KEY = "live-routes-admin-key-0123456789"
CAFE = CAFE_PROGRAMME["id"]
API = f"/v1/programs/{CAFE}"
OTHER = dict(CAFE_PROGRAMME, id="other-cafe", name="Other Cafe")


@pytest.fixture(autouse=True)
def admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SETIA_ADMIN_KEY", ADMIN_KEY)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_engines(request: pytest.FixtureRequest, sqlite_template: Path,
                tmp_path: Path) -> Iterator[tuple[sa.Engine, sa.Engine]]:
    """Two databases with the same schema, empty."""
    if request.param == "sqlite":
        paths = [tmp_path / "live.db", tmp_path / "plain.db"]
        for path in paths:
            shutil.copy(sqlite_template, path)
        engines = [make_engine(f"sqlite:///{path}") for path in paths]
        yield engines[0], engines[1]
    else:
        with scratch_postgres_database("setia_test_live") as first, \
                scratch_postgres_database("setia_test_plain") as second:
            engines = [make_engine(first), make_engine(second)]
            for engine in engines:
                upgrade(engine)
            yield engines[0], engines[1]
    for engine in engines:
        engine.dispose()


def event(number: int, member: str = "cust-1", **extra: Any) -> dict[str, Any]:
    return {"id": f"live-ev-{number}", "type": "purchase", "member": member,
            "occurred_at": "2021-03-01T10:00:00+08:00", "order_id": f"live-ord-{number}",
            "amount": "12.50", "store": "kl-01", "channel": "app",
            "lines": [{"sku": "croissant", "category": "pastry", "quantity": 1,
                       "amount": "12.50"}], **extra}


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


JSON = {"content-type": "application/json"}


def requests(admin: str, pos_other: str, reader: str) -> list[tuple[str, str, dict[str, str],
                                                                    bytes | None]]:
    """(method, path, headers, body) of every request, in order; the keys' headers."""
    a = {"authorization": f"Bearer {admin}"}
    aj = {**a, **JSON}
    events = f"{API}/events"
    batch = f"{API}/events/batch"
    member = f"{API}/members/cust-1"
    return [
        # member views and their refusals
        ("GET", member, a, None),
        ("GET", f"{API}/members/nobody", a, None),
        ("GET", member, {"authorization": f"Bearer {reader}"}, None),
        ("GET", member, {"authorization": f"Bearer {pos_other}"}, None),
        ("GET", member, {}, None),
        ("GET", "/v1/programs/no-such-cafe/members/cust-1", a, None),
        ("GET", member, {**a, "x-request-id": "till-7.req-42"}, None),
        # single events: applied, replayed, rejected
        ("POST", events, aj, body(event(1))),
        ("POST", events, aj, body(event(1))),
        ("POST", events, {**a, "content-type": "application/cloudevents+json"},
         body(event(2, amount="3.00"))),
        ("POST", events, aj, body(event(3, member="nobody"))),
        ("POST", events, aj, body({"id": "live-ev-4", "type": "purchase"})),
        ("POST", events, aj, body([event(5)])),
        ("POST", events, aj, body(event(6, store="kl-\u0000"))),
        ("POST", events, aj, b'{"id": "live-ev-7", "store": "\\ud800"}'),
        ("POST", events, aj, b'{"id": "live-ev-8", "store": "caf\\u00e9"}'),
        ("POST", events, aj, b'{"id": "live-ev-9",'),
        ("POST", events, aj, b""),
        ("POST", events, {**a, "content-type": "text/plain"}, body(event(10))),
        ("POST", events, a, body(event(11))),
        ("POST", events, {**aj, "content-length": str(2 * 1024 * 1024)}, b"{}"),
        ("POST", events, aj, b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'),
        ("POST", "/v1/programs/no-such-cafe/events", aj, body(event(12))),
        ("POST", events, {"authorization": f"Bearer {reader}", **JSON}, body(event(13))),
        ("POST", events, {"authorization": f"Bearer {pos_other}", **JSON}, body(event(14))),
        ("POST", events, {"authorization": "Basic dXNlcjpwdw==", **JSON}, body(event(15))),
        ("POST", events, {"authorization": "Bearer sk_000000000000_nope", **JSON},
         body(event(16))),
        ("POST", events, {"authorization": "Bearer not-a-key", **JSON}, body(event(17))),
        ("POST", events, {**aj, "x-request-id": "given-1"}, body(event(18))),
        # batches
        ("POST", batch, aj, body({"events": [event(20), event(21, member="nobody"),
                                              event(1), {"id": "live-ev-22"}]})),
        ("POST", batch, aj, body({"events": [event(23)], "extra": 1})),
        ("POST", batch, aj, body({"events": {"id": "live-ev-24"}})),
        ("POST", batch, aj, body({"events": []})),
        ("POST", batch, aj, body([event(25)])),
        ("POST", batch, {"authorization": f"Bearer {reader}", **JSON},
         body({"events": [event(26)]})),
        # the same paths with other methods or shapes go to FastAPI's routes in both
        ("DELETE", events, a, None),
        ("HEAD", member, a, None),
        ("POST", f"{API}/events/", aj, body(event(27))),
        ("GET", "/v1/programs//members/cust-1", a, None),
        ("GET", member, a, None),
    ]


def answers(engine: sa.Engine, live: bool) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    load_programme(engine, CAFE_PROGRAMME)
    load_programme(engine, OTHER)
    pos_other = create_key(engine, "pos", OTHER["id"])
    reader = create_key(engine, "member-read", CAFE)
    client = TestClient(create_app(engine, live_routes=live))
    admin = {"authorization": f"Bearer {ADMIN_KEY}"}
    enrolled = client.put(f"{API}/members/cust-1", headers=admin,
                          json={"enrolled_at": "2021-03-01T09:00:00+08:00"})
    assert enrolled.status_code == 201
    found = []
    for method, path, headers, content in requests(ADMIN_KEY, pos_other, reader):
        answer = client.request(method, path, headers=headers, content=content)
        kept = [(name, value) for name, value in answer.headers.multi_items()
                if name != "x-request-id" or "x-request-id" in headers]
        found.append((answer.status_code, kept, answer.content))
    assert_journal_ok(engine)
    return found


def test_the_live_routes_answer_as_fastapis_routes_do(
        two_engines: tuple[sa.Engine, sa.Engine]) -> None:
    live_engine, plain_engine = two_engines
    live, plain = answers(live_engine, live=True), answers(plain_engine, live=False)
    statuses = [status for status, _, _ in plain]
    # the requests reach every kind of answer
    assert {200, 201, 401, 403, 404, 405, 413, 415, 422}.issubset(statuses), statuses
    for number, (mine, theirs) in enumerate(zip(live, plain, strict=True)):
        assert mine == theirs, f"request {number}: {requests('a', 'p', 'r')[number][:2]}"
    # every answer carries the request id and the security headers
    for status, headers, _ in live:
        names = {name for name, _ in headers}
        assert "x-content-type-options" in names and "content-security-policy" in names, status


def test_the_live_routes_answer_503_when_the_database_is_away(tmp_path: Path) -> None:
    away = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    admin = {"authorization": f"Bearer {ADMIN_KEY}", **JSON}
    found = []
    for live in (True, False):
        client = TestClient(create_app(away, live_routes=live))
        got = [client.get(f"{API}/members/cust-1", headers=admin),
               client.post(f"{API}/events", headers=admin, content=body(event(1))),
               client.post(f"{API}/events/batch", headers=admin,
                           content=body({"events": [event(2)]}))]
        found.append([(a.status_code, a.headers["retry-after"], a.content) for a in got])
    assert found[0] == found[1]
    assert [status for status, _, _ in found[0]] == [503, 503, 503]
    away.dispose()


def test_openapi_is_the_same_document_with_and_without_the_live_routes(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'schema.db'}")
    live = TestClient(create_app(engine)).get("/openapi.json")
    plain = TestClient(create_app(engine, live_routes=False)).get("/openapi.json")
    assert live.status_code == plain.status_code == 200
    assert live.content == plain.content
    paths = json.loads(live.content)["paths"]
    assert {"post"} <= set(paths["/v1/programs/{program}/events"])
    assert {"post"} <= set(paths["/v1/programs/{program}/events/batch"])
    assert {"get", "put"} <= set(paths["/v1/programs/{program}/members/{member}"])
    engine.dispose()


def test_the_live_paths_routes_come_first_in_the_router_and_match_as_there(
        tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'routes.db'}")
    app = create_app(engine)
    first = app.router.routes[:len(HOT_ROUTES)]
    assert {(method, route.path) for route in first  # type: ignore[attr-defined]
            for method in route.methods - {"HEAD"}} == HOT_ROUTES  # type: ignore[attr-defined]
    live = LiveRoutes(app, engine, None, None, None)  # type: ignore[arg-type]
    hits = {(method, hit.route) for method, path in [
        ("POST", "/v1/programs/cafe/events"), ("POST", "/v1/programs/cafe/events/batch"),
        ("GET", "/v1/programs/cafe/members/cust-1")]
        if (hit := live.match({"path": path, "method": method})) is not None}
    assert hits == HOT_ROUTES
    engine.dispose()


def test_a_header_sent_twice_is_read_as_fastapis_routes_read_it(
        two_engines: tuple[sa.Engine, sa.Engine]) -> None:
    # given requests that send a header twice: the first value counts, the request id's last
    admin, bogus = f"Bearer {ADMIN_KEY}", "Bearer sk_000000000000_nope"
    twice: list[tuple[str, str, list[tuple[str, str]], bytes | None]] = [
        ("GET", f"{API}/members/cust-1", [("authorization", admin), ("authorization", bogus)],
         None),
        ("GET", f"{API}/members/cust-1", [("authorization", bogus), ("authorization", admin)],
         None),
        ("POST", f"{API}/events", [("authorization", admin), ("content-type", "text/plain"),
                                   ("content-type", "application/json")], body(event(40))),
        ("POST", f"{API}/events", [("authorization", admin), *JSON.items(),
                                   ("content-type", "text/plain")], body(event(41))),
        ("POST", f"{API}/events/batch", [("authorization", admin), *JSON.items(),
                                         ("x-request-id", "first"), ("x-request-id", "last")],
         body({"events": [event(42)]})),
    ]
    found = []
    for engine, live in zip(two_engines, (True, False), strict=True):
        load_programme(engine, CAFE_PROGRAMME)
        client = TestClient(create_app(engine, live_routes=live))
        client.put(f"{API}/members/cust-1", headers={"authorization": admin},
                   json={"enrolled_at": "2021-03-01T09:00:00+08:00"})
        answers = [client.request(method, path, headers=headers, content=content)
                   for method, path, headers, content in twice]
        found.append([(a.status_code, [(name, value) for name, value in a.headers.multi_items()
                                       if name != "x-request-id" or a.request.headers.get_list(
                                           "x-request-id")], a.content) for a in answers])
    # then the live routes answer them as FastAPI's routes do
    assert found[0] == found[1]
    assert [status for status, _, _ in found[0]] == [200, 401, 415, 201, 200]
    assert ("x-request-id", "last") in found[0][4][1]
