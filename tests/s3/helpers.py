"""Helpers for the S3 gateway tests: a gateway server on its own thread, boto3 clients, and
hand-built signed requests (for the cases a well-behaved client never sends)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import http.client
import random
import socket
import ssl
import threading
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any, TypeVar

import boto3
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from node.s3 import S3Gateway
from storage.objects import ObjectLayer
from storage.testing import local_layer

T = TypeVar("T")
ACCESS_KEY = "minigrid-test"
SECRET_KEY = "minigrid-secret-key/with+odd=chars"
OTHER_KEY = "second-user"
OTHER_SECRET = "second-secret"
CREDENTIALS = {ACCESS_KEY: SECRET_KEY, OTHER_KEY: OTHER_SECRET}
REGION = "us-east-1"
MIB = 1 << 20
START_TIMEOUT = 20.0


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    return sock


class GatewayServer:
    """An S3 gateway over a 4-drive local layer, served from a background thread's own loop.

    The app is built the way the node builds it: its own ``/minigrid/...`` route first, then
    the gateway's catch-all routes, and a tiny ``client_max_size`` to show bodies stream.
    ``clock_offset`` shifts the gateway's clock (for the skew tests).
    """

    def __init__(
        self,
        root: str,
        tls: ssl.SSLContext | None = None,
        *,
        faulty: bool = False,
        gateway_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.gateway_options = dict(gateway_options or {})
        self.gateway: S3Gateway | None = None
        self.faulty = faulty
        self.drives: list[Any] = []
        self.clock_offset = 0.0
        self._tls = tls
        self._sock = _bound_socket()
        self._tls_sock = _bound_socket() if tls is not None else None
        self.port = self._sock.getsockname()[1]
        self.tls_port = self._tls_sock.getsockname()[1] if self._tls_sock else 0
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="s3-gateway", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.layer: ObjectLayer | None = None
        self._stop: asyncio.Event | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("the gateway server did not start")
        if self._error is not None:
            raise RuntimeError("the gateway server failed to start") from self._error

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (e.g. to look at the layer directly)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        import time

        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self.layer, self.drives = await local_layer(self.root, 4, faulty=self.faulty)
        app = web.Application(client_max_size=1024)
        app.router.add_get("/minigrid/health/live", _live)
        gateway = self.gateway = S3Gateway(
            self.layer, CREDENTIALS, region=REGION,
            clock=lambda: time.time() + self.clock_offset, **self.gateway_options,
        )  # fmt: skip
        gateway.add_routes(app)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            await web.SockSite(runner, self._sock).start()
            if self._tls_sock is not None:
                await web.SockSite(runner, self._tls_sock, ssl_context=self._tls).start()
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()


async def _live(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def client(
    endpoint: str,
    *,
    access_key: str = ACCESS_KEY,
    secret_key: str = SECRET_KEY,
    verify: str | bool | None = None,
    **config: Any,
) -> Any:
    """A boto3 S3 client with its default configuration, path-style addressing."""
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=REGION
    )
    return session.client(
        "s3",
        endpoint_url=endpoint,
        verify=verify,
        config=Config(s3={"addressing_style": "path"}, **config),
    )


# --- hand-built requests -------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def code(self) -> str:
        """The S3 error code in an XML error body ('' when there is none)."""
        text = self.body.decode(errors="replace")
        start = text.find("<Code>")
        return text[start + 6 : text.find("</Code>")] if start >= 0 else ""


def send(
    port: int,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes | Iterable[bytes] = b"",
) -> RawResponse:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=dict(headers))
        response = connection.getresponse()
        return RawResponse(response.status, dict(response.headers), response.read())
    finally:
        connection.close()


def signed_headers(
    port: int,
    method: str,
    path: str,
    content_sha256: str,
    extra: Mapping[str, str] | None = None,
    *,
    secret_key: str = SECRET_KEY,
) -> dict[str, str]:
    """Headers for a request signed by botocore's own SigV4 signer (an independent check)."""
    headers = {"Host": f"127.0.0.1:{port}", "X-Amz-Content-SHA256": content_sha256}
    headers.update(extra or {})
    request = AWSRequest(method=method, url=f"http://127.0.0.1:{port}{path}", headers=headers)
    SigV4Auth(Credentials(ACCESS_KEY, secret_key), "s3", REGION).add_auth(request)
    return dict(request.headers.items())


def seed_signature(headers: Mapping[str, str]) -> str:
    return headers["Authorization"].rpartition("Signature=")[2]


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def chunk_key(secret: str, date: str) -> bytes:
    key = _hmac(f"AWS4{secret}".encode(), date)
    for part in (REGION, "s3", "aws4_request"):
        key = _hmac(key, part)
    return key


def encode_signed_chunks(
    data: bytes,
    chunk_size: int,
    *,
    headers: Mapping[str, str],
    secret: str = SECRET_KEY,
    trailer: Mapping[str, str] | None = None,
) -> bytes:
    """An aws-chunked body with chunk signatures chained from the request's seed signature
    (written here from the AWS description, independently of node.s3)."""
    amz_date = headers["X-Amz-Date"]
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = chunk_key(secret, amz_date[:8])
    previous = seed_signature(headers)
    empty = hashlib.sha256(b"").hexdigest()
    out = bytearray()
    pieces = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] + [b""]
    for piece in pieces:
        text = "\n".join(
            [
                "AWS4-HMAC-SHA256-PAYLOAD",
                amz_date,
                scope,
                previous,
                empty,
                hashlib.sha256(piece).hexdigest(),
            ]
        )
        previous = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
        out += f"{len(piece):x};chunk-signature={previous}\r\n".encode() + piece
        out += b"\r\n" if piece else b""
    if trailer is None:
        return bytes(out + b"\r\n")
    lines = "".join(f"{name}:{value}\n" for name, value in trailer.items())
    text = "\n".join(
        [
            "AWS4-HMAC-SHA256-TRAILER",
            amz_date,
            scope,
            previous,
            hashlib.sha256(lines.encode()).hexdigest(),
        ]
    )
    signature = hmac.new(key, text.encode(), hashlib.sha256).hexdigest()
    for name, value in trailer.items():
        out += f"{name}:{value}\r\n".encode()
    out += f"x-amz-trailer-signature:{signature}\r\n\r\n".encode()
    return bytes(out)


def encode_unsigned_chunks(
    data: bytes, chunk_size: int, trailer: Mapping[str, str] | None = None
) -> bytes:
    out = bytearray()
    for i in range(0, len(data), chunk_size):
        piece = data[i : i + chunk_size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    out += b"0\r\n"
    for name, value in (trailer or {}).items():
        out += f"{name}:{value}\r\n".encode()
    return bytes(out + b"\r\n")
