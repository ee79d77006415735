"""The pieces the live path's routes (entrypoints/api/live.py) and the FastAPI routes
(app.py) share, each written once: reading a request's body (wire.receive_body), the depth
of its nesting (wire.nested_deeper), the shape of a batch (live.batch_events), the reading
of a Bearer header (auth.bearer_credential) and a request's headers read once
(wire.RequestHeaders)."""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request

from setia.domain.errors import InvalidField
from setia.entrypoints.api import wire
from setia.entrypoints.api.app import read_body
from setia.entrypoints.api.auth import bearer_credential, bearer_key
from setia.entrypoints.api.live import batch_events
from setia.entrypoints.api.wire import MAX_BODY_BYTES, RequestHeaders, receive_body

MIB = MAX_BODY_BYTES


def messages(*chunks: bytes, disconnect: bool = False) -> list[dict[str, Any]]:
    """The ASGI messages of a body sent in ``chunks`` (the last says no more body)."""
    sent: list[dict[str, Any]] = [{"type": "http.request", "body": chunk, "more_body": True}
                                  for chunk in chunks]
    if disconnect:
        sent.append({"type": "http.disconnect"})
    elif sent:
        sent[-1]["more_body"] = False
    else:
        sent.append({"type": "http.request", "body": b"", "more_body": False})
    return sent


def receiver(sent: list[dict[str, Any]]) -> tuple[Any, list[int]]:
    """A ``receive`` handing out ``sent`` in order, and how many it handed out."""
    taken = [0]

    async def receive() -> dict[str, Any]:
        taken[0] += 1
        return sent[taken[0] - 1]

    return receive, taken


def scope(headers: dict[str, str]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/", "query_string": b"",
            "headers": [(name.encode(), value.encode()) for name, value in headers.items()]}


async def read_as_before(sent: list[dict[str, Any]], content_length: str | None,
                         limit: int) -> bytes:
    """The reading the FastAPI routes did before it was shared: Starlette's
    ``Request.stream``, stopped past ``limit`` bytes."""
    if content_length is not None and content_length.isdigit() and int(content_length) > limit:
        raise HTTPException(413, f"the body is larger than {limit} bytes")
    receive, _ = receiver(sent)
    raw = bytearray()
    async for chunk in Request(scope({}), receive).stream():
        raw.extend(chunk)
        if len(raw) > limit:
            raise HTTPException(413, f"the body is larger than {limit} bytes")
    return bytes(raw)


def outcome(coroutine: Any) -> tuple[str, Any]:
    try:
        return "body", bytes(asyncio.run(coroutine))
    except HTTPException as exc:
        return "http", (exc.status_code, exc.detail)
    except ClientDisconnect:
        return "disconnect", None


LIMIT = 8  # bytes, in place of 1 MiB: the same arithmetic on small bodies
PIECES = [b"", b"{", b'"a":1}', b"x" * (LIMIT // 2), b"y" * (LIMIT // 2 + 1), b"z" * (LIMIT + 1)]


@pytest.mark.parametrize("count", [0, 1, 2, 3])
@pytest.mark.parametrize("disconnect", [False, True])
def test_a_body_is_read_as_starlettes_request_stream_read_it(
        count: int, disconnect: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wire, "MAX_BODY_BYTES", LIMIT)
    # given every way of sending up to three pieces, empty, small and around the limit
    for chunks in itertools.product(PIECES, repeat=count):
        for length in (None, "3", str(LIMIT), str(LIMIT + 1), "nonsense"):
            sent = messages(*chunks, disconnect=disconnect)
            # when it is read the shared way and the way before
            mine = outcome(receive_body(receiver(sent)[0], length))
            theirs = outcome(read_as_before(sent, length, LIMIT))
            # then both read the same body or refuse it the same way
            assert mine == theirs, (chunks, length, disconnect)


def test_a_body_is_not_read_past_its_limit() -> None:
    # given a body of three pieces whose second passes 1 MiB
    receive, taken = receiver(messages(b"a" * MIB, b"b", b"c"))
    # when it is read, then 413 after the second piece, the third never asked for
    with pytest.raises(HTTPException) as refused:
        asyncio.run(receive_body(receive, None))
    assert refused.value.status_code == 413
    assert taken == [2]
    # and a Content-Length over the limit is refused before any piece is read
    receive, taken = receiver(messages(b"{}"))
    with pytest.raises(HTTPException):
        asyncio.run(receive_body(receive, str(MIB + 1)))
    assert taken == [0]


def test_a_body_in_one_message_is_handed_back_uncopied() -> None:
    body = b'{"id": "ev-1"}'
    assert asyncio.run(receive_body(receiver(messages(body))[0], None)) is body
    joined = asyncio.run(receive_body(receiver(messages(b'{"id": ', b'"ev-1"}'))[0], None))
    assert joined == body


def test_read_body_reads_a_body_a_route_has_read_already() -> None:
    # given a request whose route looked at its body first (await request.body())
    async def run(chunks: tuple[bytes, ...], headers: dict[str, str]) -> Any:
        request = Request(scope(headers), receiver(messages(*chunks))[0])
        await request.body()
        return await read_body(request)

    json = {"content-type": "application/json"}
    # then read_body parses that body, and still refuses one over the limit
    assert asyncio.run(run((b'{"a": ', b"1}"), json)) == {"a": 1}
    with pytest.raises(HTTPException) as refused:
        asyncio.run(run((b'"' + b"x" * MIB + b'"',), json))
    assert refused.value.status_code == 413
    with pytest.raises(HTTPException) as refused:
        asyncio.run(run((b"{}",), {**json, "content-length": str(MIB + 1)}))
    assert refused.value.status_code == 413
    with pytest.raises(HTTPException) as refused:
        asyncio.run(run((b"{}",), {"content-type": "text/plain"}))
    assert refused.value.status_code == 415


def test_a_batch_is_an_object_with_events_only() -> None:
    listed = [{"id": "ev-1"}]
    assert batch_events({"events": listed}) is listed
    assert batch_events({"events": {"id": "ev-1"}}) == {"id": "ev-1"}  # ingest_batch decides
    for wrong in ([listed], {"events": listed, "extra": 1}, {}, None, "events"):
        with pytest.raises(InvalidField) as refused:
            batch_events(wrong)
        assert refused.value.field == "events"
        assert str(refused.value) == 'the body must be {"events": [...]}'


@pytest.mark.parametrize(("header", "credential"), [
    ("Bearer sk_1_abc", "sk_1_abc"), ("bearer  sk_1_abc ", "sk_1_abc"),
    ("BEARER x y", "x y"), ("Bearer", None), ("Bearer   ", None), ("Basic dXNlcjpwdw==", None),
    ("", None), ("Bearersk_1", None), ("Token sk_1_abc", None)])
def test_a_bearer_header_is_read_one_way(header: str, credential: str | None) -> None:
    assert bearer_credential(header) == credential
    if credential is None:
        with pytest.raises(HTTPException) as refused:
            bearer_key(header)
        assert refused.value.status_code == 401
    else:
        assert bearer_key(header) == credential


@pytest.mark.parametrize("raw", [
    [],
    [(b"host", b"till"), (b"authorization", b"Bearer a"), (b"content-type", b"application/json")],
    [(b"authorization", b"Bearer a"), (b"x-request-id", b"r-1"), (b"authorization", b"Bearer b"),
     (b"x-request-id", b"r-2"), (b"content-length", b"2")],
    [(b"content-type", b"text/plain"), (b"content-type", b"application/json")],
    [(b"x-custom", b"caf\xe9")],
])
def test_headers_read_once_answer_as_a_scan_of_them_does(raw: list[tuple[bytes, bytes]]) -> None:
    headers = RequestHeaders(raw)
    starlettes = Request(scope({}) | {"headers": raw}).headers
    for name in {name for name, _ in raw} | {b"authorization", b"missing"}:
        given = [value for key, value in raw if key == name]
        assert headers.first.get(name) == (given[0] if given else None)
        assert headers.last.get(name) == (given[-1] if given else None)
        assert headers.get(name) == starlettes.get(name.decode())


def depth(document: Any) -> int:
    """How deep lists and dicts nest in ``document`` (a scalar: 0)."""
    deepest, stack = 0, [(document, 1)]
    while stack:
        value, level = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, level)
            stack.extend((item, level + 1)
                         for item in (value.values() if isinstance(value, dict) else value))
    return deepest


# strings full of what the scan must see through: brackets, quotes and backslashes
TRICKY = st.text(alphabet='[]{}"\\ax', max_size=6)
DOCUMENTS = st.recursive(
    st.none() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TRICKY, inner, max_size=3),
    max_leaves=40)


@given(DOCUMENTS, st.integers(min_value=1, max_value=8), st.booleans())
def test_the_nesting_scan_finds_the_depth_the_parsed_document_has(
        document: Any, limit: int, ascii_only: bool) -> None:
    # given a document written as JSON (with or without \u escapes) and a limit
    raw = json.dumps(document, ensure_ascii=ascii_only).encode()
    # then the scan of the text and the walk of the document agree with the real depth
    assert wire.nested_deeper(raw, limit) == (depth(document) > limit)
    assert wire.document_deeper(document, limit) == (depth(document) > limit)


@pytest.mark.parametrize("levels", [64, 65, 300, 1100, 100_000])
def test_a_body_nested_past_64_levels_is_refused_before_it_is_parsed(levels: int) -> None:
    # alternating arrays and objects, with a bracket in a string at the bottom
    raw = ('{"k": [' * (levels // 2) + ('{"k": "[["}' if levels % 2 else '"[["')
           + "]}" * (levels // 2)).encode()
    if levels <= 64:
        assert depth(wire.parse_body(raw, "application/json")) == levels
        return
    with pytest.raises(HTTPException) as refused:
        wire.parse_body(raw, "application/json")
    assert (refused.value.status_code, refused.value.detail, refused.value.field) == (
        400, "the body nests arrays and objects more than 64 levels deep", "(body)")


@pytest.mark.parametrize("number", [2**63 - 1, -(2**63), 2**63, 2**64 - 1, 2**64, -(2**63) - 1,
                                    10**30])
def test_a_whole_number_reads_the_same_with_or_without_an_escape(number: int) -> None:
    # A \u escape sends the body through the slow parser, which would keep integers of any
    # size; the request hash (orjson) and the database fail on those past 64 bits (a 500).
    # It reads them as the fast parser does: past 64 bits, a float.
    plain = json.dumps({"events": [{"id": "cafe"}, {"attributes": {"n": number}}]}).encode()
    escaped = plain.replace(b"cafe", b"caf\\u00e9")
    assert b"\\u" in escaped and b"\\u" not in plain
    fast = wire.parse_body(plain, "application/json")["events"][1]["attributes"]["n"]
    slow = wire.parse_body(escaped, "application/json")["events"][1]["attributes"]["n"]
    assert (type(slow), slow) == (type(fast), fast)
    assert isinstance(fast, int) == (-(2**63) <= number < 2**64)
    orjson.dumps(slow)  # the request hash can be taken
