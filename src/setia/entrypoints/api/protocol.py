"""uvicorn's httptools protocol, writing a response's head and the first part of its body
in one ``transport.write``.

uvicorn writes the status line and headers when the application sends
``http.response.start`` and the body when it sends ``http.response.body``: two writes,
so two system calls and, on loopback or a fast network, two segments and two wake-ups
of the client for every small JSON answer. ``JoinedWrites`` keeps the head's bytes
until the body's first write and sends both together; everything else (header checks,
content length, keep-alive, chunking, HEAD, errors) is uvicorn's own code, unchanged.
A response whose body is never written (HEAD, an empty body) gets its head written
before anything else touches the transport.

``setia serve`` passes ``http=JoinedWritesProtocol`` to uvicorn (server.py).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle


class _Held:
    """Stands in for the transport while uvicorn writes a response's head: keeps it."""

    __slots__ = ("data", "transport")

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.data: bytes | None = None

    def write(self, data: bytes) -> None:
        self.data = data if self.data is None else self.data + data

    def __getattr__(self, name: str) -> Any:  # close(), is_closing(), ...: the real one
        return getattr(self.transport, name)


class _Prefixed:
    """Stands in for the transport while uvicorn writes a body: the first write carries
    the held head; any other use of the transport first writes the head alone."""

    __slots__ = ("head", "transport")

    def __init__(self, transport: Any, head: bytes) -> None:
        self.transport = transport
        self.head: bytes | None = head

    def write(self, data: bytes) -> None:
        head, self.head = self.head, None
        self.transport.write(data if head is None else head + data)

    def flush(self) -> None:
        head, self.head = self.head, None
        if head is not None:
            self.transport.write(head)

    def __getattr__(self, name: str) -> Any:
        self.flush()
        return getattr(self.transport, name)


class JoinedWrites(RequestResponseCycle):
    _head: bytes | None = None

    async def send(self, message: Any) -> None:
        kind = message["type"]
        if kind == "http.response.start" and not self.response_started:
            real = self.transport
            held = self.transport = _Held(real)  # type: ignore[assignment]
            try:
                await super().send(message)
            finally:
                self.transport = real
            if held.data is not None and self.response_started and not self.disconnected:
                self._head = held.data
            elif held.data is not None:
                real.write(held.data)
            return
        head = self._head
        if head is None:
            await super().send(message)
            return
        self._head = None
        real = self.transport
        prefixed = self.transport = _Prefixed(real, head)  # type: ignore[assignment]
        try:
            await super().send(message)
        finally:
            self.transport = real
            prefixed.flush()


class JoinedWritesProtocol(HttpToolsProtocol):
    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        cycle.__class__ = JoinedWrites  # same fields; only ``send`` differs
        super()._start_asgi_task(cycle, app)
