"""An answer leaves a Chord process whole or not at all, so nginx can always resend it elsewhere.

A real uvicorn in a subprocess, with the protocol ``python -m app serve`` uses, serves a small ASGI
app that dies by SIGKILL right after it has sent the head of its answer: the moment a replica
killed mid-answer is in. Read over a raw socket, the client must see nothing at all (nginx then
tries the next replica), not a head without its body (which nginx would have to pass on truncated).
uvicorn's own h11 protocol is run beside it to show the test tells the two apart.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from live_server import PROJECT_ROOT, free_port

SERVER = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    import uvicorn
    from app.server.http_protocol import WholeResponseH11Protocol

    BODY = b'{"boxes": [[1, 2, 3, 4]]}'
    HEAD = {"type": "http.response.start", "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]}

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/dies-mid-answer":
            await send(HEAD)
            os.kill(os.getpid(), signal.SIGKILL)
        elif scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"first chunk", "more_body": True})
            await asyncio.sleep(3)
            await send({"type": "http.response.body", "body": b"second chunk"})
        else:
            await send(HEAD)
            await send({"type": "http.response.body", "body": BODY})

    http = WholeResponseH11Protocol if sys.argv[2] == "whole" else "h11"
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), http=http, log_level="warning")
    """
)


@pytest.fixture
def serve(tmp_path):
    started: list[subprocess.Popen] = []

    def start(protocol: str) -> int:
        script = tmp_path / "server.py"
        script.write_text(SERVER)
        port = free_port()
        environ = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        process = subprocess.Popen([sys.executable, str(script), str(port), protocol], env=environ)
        started.append(process)
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "the test server did not start"
                time.sleep(0.1)

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def fetch_raw(port: int, path: str, timeout_s: float = 10) -> bytes:
    """Everything the server sends on one connection for ``GET path``, until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def test_a_process_killed_after_the_head_sends_nothing_of_that_answer(serve):
    port = serve("whole")
    assert fetch_raw(port, "/answer").endswith(b'\r\n\r\n{"boxes": [[1, 2, 3, 4]]}')
    assert fetch_raw(port, "/dies-mid-answer") == b""


def test_uvicorns_own_protocol_would_have_sent_a_head_without_its_body(serve):
    received = fetch_raw(serve("h11"), "/dies-mid-answer")
    assert received.startswith(b"HTTP/1.1 200 OK") and received.endswith(b"\r\n\r\n")


def test_a_stream_still_goes_out_chunk_by_chunk(serve):
    port = serve("whole")
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        received = b""
        while b"first chunk" not in received:
            received += sock.recv(65536)  # times out if the chunk were held until the stream ends
        assert b"second chunk" not in received
