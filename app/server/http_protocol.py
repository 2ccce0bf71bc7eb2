"""uvicorn's HTTP/1.1 protocol, with the head and the body of an answer sent in one write.

uvicorn's h11 protocol sends a response's status line and headers with one ``send`` and its body
with another. A replica killed between the two (``kill -9``, the OOM killer) leaves nginx with a
response it has already begun to pass on: it cannot try another replica, and the client gets a
truncated answer. Here the writes made during one step of the event loop are joined and handed to
the socket at the end of that step, so an answer that fits the socket buffer (every JSON answer
does) leaves the process whole or not at all. Streams (the UI's event stream) still go out chunk
by chunk, each at the end of the step that wrote it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


class StepCoalescingTransport:
    """A transport whose ``write`` calls within one event-loop step reach ``transport`` as one write.

    Everything else is the wrapped transport's own; ``close``, ``write_eof`` and ``abort`` keep the
    order of what was written before them.
    """

    def __init__(self, transport: asyncio.WriteTransport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, chunks) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        if self._pending:
            data, self._pending = b"".join(self._pending), []
            if not self._transport.is_closing():
                self._transport.write(data)

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._pending))

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        self._pending.clear()
        self._transport.abort()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class WholeResponseH11Protocol(H11Protocol):
    """uvicorn's h11 protocol over a :class:`StepCoalescingTransport`; pass it as ``uvicorn.Config(http=...)``."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(StepCoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
