"""The header deadline on a real uvicorn server with a toy app, in this process: a stalled or silent
connection is closed, a request that completes its headers in time is answered."""

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from ml_lifecycle._internal.serving import request_deadline
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

DEADLINE = 0.5


async def hello(request):
    return PlainTextResponse("hello")


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    request_deadline.install(DEADLINE)
    app = Starlette(routes=[Route("/", hello)])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, http="auto"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    thread.join(timeout=10)


def received(port: int, *chunks: bytes, pause: float = 0.0) -> bytes:
    """Send the chunks (pausing between them), then read until the server closes (10 s at most)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        for chunk in chunks:
            connection.sendall(chunk)
            time.sleep(pause)
        data = b""
        while part := connection.recv(65536):
            data += part
        return data


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(port):
    assert received(port) == b""


def test_headers_that_stop_halfway_get_408(port):
    assert received(port, b"GET / HTTP/1.1\r\nHost: x\r\n").startswith(b"HTTP/1.1 408 ")


def test_trickled_headers_are_cut_off_at_the_deadline_not_reset_by_each_byte(port):
    head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    chunks = [head[i : i + 1] for i in range(len(head))]
    try:
        answer = received(port, *chunks, pause=DEADLINE / 4)
    except OSError:  # the server closed the connection while the bytes still arrived: that is the point
        answer = b"HTTP/1.1 408 (closed while sending)"
    assert answer.startswith(b"HTTP/1.1 408 "), answer


def test_headers_that_arrive_in_time_are_answered(port):
    head = [b"GET / HTTP/1.1\r\n", b"Host: x\r\n", b"Connection: close\r\n\r\n"]
    answer = received(port, *head, pause=DEADLINE / 5)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
