"""kadapt.http_client: the lean keep-alive client against a real uvicorn (httptools, asyncio loop) in a
background thread, plus tiny raw asyncio servers for responses uvicorn never sends (end-of-stream bodies,
garbage, a keep-alive connection closed under a request)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from kadapt.http_client import HTTPClientError, HTTPReply, LeanHTTPClient

CHUNKS = [b"alpha-", b"beta-" * 1000, b"gamma"]


@dataclass
class Server:
    """A uvicorn server in a thread; ``seen`` records (path, client port) of every request, so tests can
    tell which connection carried it."""

    url: str
    seen: list[tuple[str, int]] = field(default_factory=list)

    def port_of(self, path: str) -> int:
        return next(port for seen_path, port in reversed(self.seen) if seen_path == path)


def make_app(seen: list[tuple[str, int]]) -> Starlette:
    def record(request: Request) -> int:
        port = request.client.port if request.client is not None else -1
        seen.append((request.url.path, port))
        return port

    async def echo(request: Request) -> Response:
        port = record(request)
        body = await request.body()
        headers = {"x-echo": request.headers.get("x-test", ""), "x-client-port": str(port)}
        return Response(body, headers=headers, media_type="application/octet-stream")

    async def as_json(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "port": record(request)})

    async def chunked(request: Request) -> StreamingResponse:
        record(request)

        async def parts() -> AsyncIterator[bytes]:
            for part in CHUNKS:
                yield part

        return StreamingResponse(parts(), media_type="application/octet-stream")

    async def slow(request: Request) -> PlainTextResponse:
        record(request)
        await asyncio.sleep(float(request.query_params["s"]))
        return PlainTextResponse("slow")

    async def fast(request: Request) -> PlainTextResponse:
        record(request)
        return PlainTextResponse("fast")

    async def close(request: Request) -> PlainTextResponse:
        record(request)
        return PlainTextResponse("bye", headers={"connection": "close"})

    async def big(request: Request) -> Response:
        record(request)
        return Response(b"x" * 5000)

    return Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/json", as_json),
            Route("/chunked", chunked),
            Route("/slow", slow),
            Route("/fast", fast),
            Route("/close", close),
            Route("/big", big),
        ]
    )


def serve(timeout_keep_alive: int, scheme: str = "http", **tls: str) -> Iterator[Server]:
    seen: list[tuple[str, int]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        make_app(seen),
        loop="asyncio",
        http="httptools",
        lifespan="off",
        log_level="warning",
        timeout_keep_alive=timeout_keep_alive,
        **tls,  # type: ignore[arg-type]
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started:
                break
            threading.Event().wait(0.01)
        else:
            raise RuntimeError("uvicorn did not start")
        yield Server(f"{scheme}://127.0.0.1:{sock.getsockname()[1]}", seen)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    yield from serve(timeout_keep_alive=30)


@pytest.fixture(scope="module")
def short_keep_alive_server() -> Iterator[Server]:
    yield from serve(timeout_keep_alive=1)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """uvicorn over TLS with a throw-away self-signed certificate for 127.0.0.1 (the openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    for server in serve(30, "https", ssl_keyfile=str(key), ssl_certfile=str(cert)):
        yield server, cert


@pytest.fixture
async def client() -> AsyncIterator[LeanHTTPClient]:
    client = LeanHTTPClient()
    yield client
    await client.aclose()


async def test_keep_alive_reuses_one_connection(server: Server, client: LeanHTTPClient) -> None:
    first = (await client.get(server.url + "/json")).json()["port"]
    second = (await client.get(server.url + "/json")).json()["port"]
    echoed = await client.post(server.url + "/echo", content=b"hi")
    assert first == second == int(echoed.headers["x-client-port"])


async def test_the_socket_has_nodelay(server: Server, client: LeanHTTPClient) -> None:
    await client.get(server.url + "/fast")
    [connection] = [c for pool in client._idle.values() for c in pool]
    assert connection.transport is not None
    sock = connection.transport.get_extra_info("socket")
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("size", [0, 1, 400_000])
async def test_post_echoes_the_body_byte_exact(server: Server, client: LeanHTTPClient, size: int) -> None:
    body = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    reply = await client.post(server.url + "/echo?q=1", content=body, headers={"X-Test": "abc"})
    assert isinstance(reply, HTTPReply)
    assert reply.status_code == 200
    assert reply.content == body
    assert reply.headers["x-echo"] == "abc"
    assert reply.headers["content-length"] == str(size)


async def test_chunked_body(server: Server, client: LeanHTTPClient) -> None:
    reply = await client.get(server.url + "/chunked")
    assert reply.headers["transfer-encoding"] == "chunked"
    assert reply.content == b"".join(CHUNKS)
    # and the connection carries the next request
    assert (await client.get(server.url + "/fast")).content == b"fast"
    assert server.port_of("/fast") == server.port_of("/chunked")


async def test_404_has_status_and_body(server: Server, client: LeanHTTPClient) -> None:
    reply = await client.get(server.url + "/nowhere")
    assert reply.status_code == 404
    assert reply.content == b"Not Found"


async def test_json_and_bad_json(server: Server, client: LeanHTTPClient) -> None:
    reply = await client.get(server.url + "/json")
    assert reply.json()["ok"] is True
    assert reply.headers["content-type"] == "application/json"
    with pytest.raises(ValueError, match="Expecting value"):
        (await client.get(server.url + "/fast")).json()


async def test_timeout_closes_the_connection(server: Server, client: LeanHTTPClient) -> None:
    await client.get(server.url + "/fast")  # an idle connection the slow request reuses
    with pytest.raises(TimeoutError):
        await client.get(server.url + "/slow?s=0.5", timeout=0.2)
    reply = await client.get(server.url + "/fast", timeout=5.0)
    assert reply.content == b"fast"
    assert server.port_of("/fast") != server.port_of("/slow")


async def test_cancelled_request_never_answers_the_next_one(server: Server, client: LeanHTTPClient) -> None:
    await client.get(server.url + "/fast")
    before = len(server.seen)
    slow = asyncio.create_task(client.get(server.url + "/slow?s=0.5"))
    while ("/slow", server.port_of("/fast")) not in server.seen[before:]:  # the server is at work on it
        await asyncio.sleep(0.01)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    # Had the connection gone back to the pool, uvicorn would answer the slow request first on it.
    reply = await client.get(server.url + "/fast")
    assert reply.content == b"fast"
    assert server.port_of("/fast") != server.port_of("/slow")
    # the same through asyncio.wait_for, as the gateway calls it
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(client.get(server.url + "/slow?s=0.3"), 0.1)
    assert (await client.get(server.url + "/json")).json()["ok"] is True


async def test_connection_close_is_not_reused(server: Server, client: LeanHTTPClient) -> None:
    assert (await client.get(server.url + "/close")).content == b"bye"
    assert not [c for pool in client._idle.values() for c in pool]
    assert (await client.get(server.url + "/fast")).content == b"fast"
    assert server.port_of("/fast") != server.port_of("/close")


async def test_stale_idle_connection_is_replaced(short_keep_alive_server: Server) -> None:
    client = LeanHTTPClient()
    try:
        first = (await client.get(short_keep_alive_server.url + "/json")).json()["port"]
        await asyncio.sleep(1.5)  # uvicorn closes the idle connection after 1 s
        second = (await client.get(short_keep_alive_server.url + "/json")).json()["port"]
        assert second != first
    finally:
        await client.aclose()


async def test_https_with_a_given_context(tls_server: tuple[Server, Path]) -> None:
    server, cert = tls_server
    client = LeanHTTPClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
    try:
        assert (await client.post(server.url + "/echo", content=b"tls" * 1000)).content == b"tls" * 1000
        assert (await client.get(server.url + "/json")).json()["port"] == server.port_of("/echo")
    finally:
        await client.aclose()
    untrusting = LeanHTTPClient()  # the default context does not trust a self-signed certificate
    with pytest.raises(HTTPClientError, match="CERTIFICATE_VERIFY_FAILED"):
        await untrusting.get(server.url + "/json")
    await untrusting.aclose()


def test_under_uvloop(server: Server) -> None:
    """The gateway may run on uvloop (uvicorn's "auto" loop): the same exchanges there."""
    uvloop = pytest.importorskip("uvloop")

    async def exchanges() -> None:
        client = LeanHTTPClient()
        try:
            await client.get(server.url + "/fast")
            [connection] = [c for pool in client._idle.values() for c in pool]
            assert connection.transport is not None
            sock = connection.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert (await client.get(server.url + "/chunked")).content == b"".join(CHUNKS)
            assert (await client.post(server.url + "/echo", content=b"u" * 300_000)).content == b"u" * 300_000
            with pytest.raises(TimeoutError):
                await client.get(server.url + "/slow?s=0.3", timeout=0.05)
            assert (await client.get(server.url + "/fast")).content == b"fast"
            assert server.port_of("/fast") != server.port_of("/slow")
        finally:
            await client.aclose()

    uvloop.run(exchanges())


async def test_refused_port_is_a_client_error(client: LeanHTTPClient) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(HTTPClientError, match="cannot connect") as caught:
            await client.get(f"http://127.0.0.1:{port}/")
    assert isinstance(caught.value, OSError)


async def test_response_too_large(server: Server) -> None:
    client = LeanHTTPClient(max_response_bytes=1000)
    try:
        with pytest.raises(HTTPClientError, match="max_response_bytes"):
            await client.get(server.url + "/big")
        assert (await client.get(server.url + "/fast")).content == b"fast"
    finally:
        await client.aclose()


async def test_max_connections_bounds_open_connections(server: Server) -> None:
    client = LeanHTTPClient(max_connections=2)
    try:
        before = len(server.seen)
        replies = await asyncio.gather(*(client.get(server.url + "/slow?s=0.05") for _ in range(6)))
        assert [reply.content for reply in replies] == [b"slow"] * 6
        assert len({port for _, port in server.seen[before:]}) <= 2
    finally:
        await client.aclose()


async def test_aclose_then_call_raises(server: Server) -> None:
    client = LeanHTTPClient()
    await client.get(server.url + "/fast")
    await client.aclose()
    assert not client._idle
    with pytest.raises(HTTPClientError, match="closed"):
        await client.get(server.url + "/fast")


async def test_bad_urls_and_headers(client: LeanHTTPClient) -> None:
    with pytest.raises(ValueError, match="absolute"):
        await client.get("/relative")
    with pytest.raises(ValueError, match="line break"):
        await client.get("http://127.0.0.1:1/", headers={"x": "a\r\nb: c"})


# Raw servers: each connection is handled by ``handle`` (reader, writer).
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def raw_server(handle: Handler) -> tuple[asyncio.Server, str]:
    async def guarded(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handle(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed its end first
        finally:
            writer.close()

    server = await asyncio.start_server(guarded, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_body_ending_at_eof() -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end")

    server, url = await raw_server(handle)
    client = LeanHTTPClient()
    async with server:
        reply = await client.get(url)
        assert (reply.status_code, reply.content) == (200, b"until the end")
        assert not [c for pool in client._idle.values() for c in pool]  # the stream ended: not pooled
        await client.aclose()


async def test_malformed_and_truncated_responses() -> None:
    answers = iter([b"garbage\r\n\r\n", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"])

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(next(answers))

    server, url = await raw_server(handle)
    client = LeanHTTPClient()
    async with server:
        with pytest.raises(HTTPClientError, match="malformed"):
            await client.get(url)
        with pytest.raises(HTTPClientError, match="before the response was complete"):
            await client.get(url)
        await client.aclose()


async def test_reused_connection_closed_under_a_request_is_retried_once() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # answers one request per connection, then closes on the next one without a byte (a server
        # closing an idle connection just as the client reuses it)
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(f"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{connections}".encode())
        await reader.readuntil(b"\r\n\r\n")

    server, url = await raw_server(handle)
    client = LeanHTTPClient()
    async with server:
        assert (await client.get(url)).content == b"1"
        assert (await client.post(url, content=b"plan")).content == b"2"  # the retry's fresh connection
        assert connections == 2
        await client.aclose()


async def test_fresh_connection_closed_is_not_retried() -> None:
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")

    server, url = await raw_server(handle)
    client = LeanHTTPClient()
    async with server:
        with pytest.raises(HTTPClientError, match="before the response was complete"):
            await client.get(url)
        assert connections == 1
        await client.aclose()
