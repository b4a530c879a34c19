"""Tools for attacking the grid handshake from a test: a recording TCP proxy, raw websocket
frames, and a client that speaks the handshake with whatever key and nonce it is given."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field

import aiohttp

from minigrid import protocol
from minigrid.handshake import DialerHandshake, Purpose
from minigrid.testing import host_of, listening_socket


class RecordingProxy:
    """Forward every TCP connection to ``target`` and keep what each client sent."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.sock = listening_socket()
        self.host = host_of(self.sock)
        #: Client-to-server bytes of each connection, in order of arrival.
        self.sent: list[bytearray] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, sock=self.sock)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        record = bytearray()
        self.sent.append(record)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            self._handlers.discard(task)
            return
        try:
            await asyncio.gather(_pump(reader, up_writer, record), _pump(up_reader, writer, None))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._handlers.discard(task)

    def requests(self, path: str) -> list[bytes]:
        """What clients sent on each connection whose request line is ``GET path``."""
        prefix = f"GET {path} HTTP/1.1\r\n".encode()
        return [bytes(record) for record in self.sent if record.startswith(prefix)]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        self.sock.close()


async def _pump(
    source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bytearray | None
) -> None:
    try:
        while data := await source.read(65536):
            if record is not None:
                record += data
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            sink.write_eof()


@dataclass
class Frame:
    opcode: int
    payload: bytes
    raw: bytes = field(repr=False)


def parse_frame(data: bytes, offset: int = 0) -> tuple[Frame, int] | None:
    """One websocket frame at ``offset`` (masked or not): the frame and where the next starts."""
    if len(data) < offset + 2:
        return None
    first, second = data[offset], data[offset + 1]
    length, pos = second & 0x7F, offset + 2
    if length == 126:
        length, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
    elif length == 127:
        length, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
    mask = b""
    if second & 0x80:
        mask, pos = data[pos : pos + 4], pos + 4
    if len(data) < pos + length:
        return None
    body = data[pos : pos + length]
    if mask:
        body = bytes(byte ^ mask[i % 4] for i, byte in enumerate(body))
    return Frame(first & 0x0F, body, data[offset : pos + length]), pos + length


def first_message(recorded: bytes) -> tuple[bytes, Frame]:
    """Split a recorded client stream into its HTTP upgrade request and first frame."""
    head_end = recorded.index(b"\r\n\r\n") + 4
    parsed = parse_frame(recorded, head_end)
    assert parsed is not None, "the recording holds no complete frame"
    return recorded[:head_end], parsed[0]


async def replay(address: tuple[str, int], request: bytes, frame: bytes) -> list[Frame]:
    """Send a recorded upgrade and frame on a new connection; the frames the server sends back
    until it closes (or 10s pass)."""
    reader, writer = await asyncio.open_connection(*address)
    frames: list[Frame] = []
    try:
        writer.write(request + frame)
        await writer.drain()
        async with asyncio.timeout(10):
            status = await reader.readuntil(b"\r\n\r\n")
            assert status.startswith(b"HTTP/1.1 101"), status[:80]
            buffer = b""
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buffer += chunk
                while (parsed := parse_frame(buffer)) is not None:
                    frames.append(parsed[0])
                    buffer = buffer[parsed[1] :]
                if any(f.opcode == 0x8 for f in frames):
                    break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return frames


def grid_messages(frames: list[Frame]) -> list[tuple[int, dict[str, object]]]:
    """The grid messages in the binary frames: ``(op, payload map)``."""
    out = []
    for frame in frames:
        if frame.opcode == 0x2:
            for message in protocol.decode_frame(frame.payload):
                out.append((message.op, protocol.unpack_map(message.payload, "test")))
    return out


def address_of(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


async def open_grid(
    session: aiohttp.ClientSession, host: str, path: str = "/minigrid/grid/v1"
) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(f"http://{host}{path}", autoping=True)


async def receive_bytes(ws: aiohttp.ClientWebSocketResponse) -> bytes:
    msg = await asyncio.wait_for(ws.receive(), 10)
    assert msg.type is aiohttp.WSMsgType.BINARY, msg
    data: bytes = msg.data
    return data


async def dial_as(
    session: aiohttp.ClientSession,
    target: str,
    key: bytes,
    host: str,
    instance: str,
    *,
    purpose: Purpose = Purpose.DIAL,
    expected: str = "",
) -> tuple[aiohttp.ClientWebSocketResponse, DialerHandshake, bytes]:
    """Run the dialer's half against ``target`` as ``host``: the websocket, the handshake and
    the acceptor's CONNECT_RESPONSE frame (not yet checked). ``expected``: the host string the
    acceptor goes by, when it is not ``target``."""
    path = "/minigrid/grid/v1/poke" if purpose is Purpose.POKE else "/minigrid/grid/v1"
    ws = await open_grid(session, target, path)
    handshake = DialerHandshake(key, host, instance, expected or target, purpose)
    await ws.send_bytes(handshake.receive_challenge(await receive_bytes(ws)))
    return ws, handshake, await receive_bytes(ws)
