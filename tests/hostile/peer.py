"""A hostile grid peer, in its own process: ``python -m tests.hostile.peer``.

It joins the grid as a legitimate peer: it holds the cluster secret, and a real
:class:`minigrid.Manager` does the handshake, so nothing here depends on how the handshake
works. Then it writes raw frames on its session (:meth:`Connection.send_raw_frame`), the bytes
a buggy or hostile node could send.

The test drives it over stdin and stdout, one JSON object per line each way. Every command
gets exactly one answer: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.

================  ===========================================================================
command           what it does
================  ===========================================================================
``wait``          wait until the session is up; answers the session count
``roundtrip``     a call to a handler the node does not have: proves the session carries
                  traffic both ways (answers the node's error text)
``frames``        send raw frames (hex); ``expect`` lists mux ids whose replies to collect
``replies``       the replies collected for those mux ids (after a round trip, so every reply
                  the node queued before it has arrived)
``attack``        run one named attack (see ``ATTACKS``) and answer what it observed
``pause``         stop (``on``) or resume reading the session's socket
``stats``         this side's statistics of the session
================  ===========================================================================
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import socket
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgpack

from minigrid import Disconnected, GridConfig, GridError, HandlerID, Manager, RemoteError, State
from minigrid.connection import Connection
from minigrid.protocol import CHUNK_SIZE, Flags, Op, encode, merge, with_subroute
from minigrid.testing import serve_manager

#: Mux ids for raw requests start here, far above the ids the Manager gives its own calls.
RAW_MUX_BASE = 1 << 48
#: A handler id that no node registers: calls to it prove a round trip.
UNKNOWN_HANDLER = 999
MORE = int(Flags.MORE)
SUBROUTE = int(Flags.SUBROUTE)


class Peer:
    """The hostile side of one session to the node under attack."""

    def __init__(self, manager: Manager, target: str) -> None:
        self.manager = manager
        self.conn: Connection = manager.connection(target)
        self.expected: dict[int, asyncio.Future[bytes]] = {}
        self._next_mux = RAW_MUX_BASE

    def mux(self) -> int:
        self._next_mux += 1
        return self._next_mux

    async def wait(self, timeout: float = 20.0) -> dict[str, Any]:
        await self.conn.wait_state(State.CONNECTED, timeout)
        return {"sessions": self.conn.counters.sessions}

    async def roundtrip(self, timeout: float = 20.0) -> str:
        """Call a handler the node does not have; retried on a new session if the node cut
        this one meanwhile."""
        async with asyncio.timeout(timeout):
            while True:
                await self.conn.wait_state(State.CONNECTED)
                try:
                    await self.conn.call(UNKNOWN_HANDLER, b"", timeout=timeout)
                except RemoteError as exc:
                    return exc.message
                except Disconnected:
                    continue
                raise AssertionError("a handler that should not exist answered")

    async def send(self, frames: Sequence[bytes], expect: Sequence[int] = ()) -> None:
        for mux_id in expect:
            self.expected[mux_id] = self.conn.expect_raw_reply(mux_id)
        for frame in frames:
            await self.conn.send_raw_frame(frame)

    async def replies(self) -> dict[str, str]:
        """What came back for every expected mux: ``ok:<n bytes>``, ``error:<text>`` or
        ``none`` (nothing yet)."""
        await self.roundtrip()
        out: dict[str, str] = {}
        for mux_id, future in self.expected.items():
            if not future.done():
                out[str(mux_id)] = "none"
                future.cancel()
            elif future.cancelled():
                out[str(mux_id)] = "cancelled"
            elif future.exception() is not None:
                out[str(mux_id)] = f"error:{future.exception()}"
            else:
                out[str(mux_id)] = f"ok:{len(future.result())}"
        self.expected.clear()
        return out

    async def until_dropped(self, sessions: int, timeout: float = 20.0) -> None:
        """Wait until the session that was number ``sessions`` is gone (the node cut it)."""
        async with asyncio.timeout(timeout):
            while self.conn.counters.sessions == sessions and self.conn.is_connected:
                await self.conn.wait_change()


def request(mux_id: int, handler: int, payload: bytes, *, flags: int = 0, seq: int = 0) -> bytes:
    return encode(Op.REQUEST, mux_id=mux_id, handler_id=handler, flags=flags, seq=seq,
                  payload=payload, deadline_ms=60_000)  # fmt: skip


def batches(messages: list[bytes], size: int = 4096) -> list[bytes]:
    return [merge(messages[i : i + size]) for i in range(0, len(messages), size)]


# --- the attacks -------------------------------------------------------------------------------


async def many_messages(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """One 4 MiB frame of ~466k PINGs back to back (not wrapped in MERGED, which was the way
    around the merged-message cap): the node must refuse it after 4097 messages."""
    before = peer.conn.counters.sessions
    ping = encode(Op.PING)
    frame = ping * ((4 << 20) // len(ping) - 1)
    await peer.conn.send_raw_frame(frame)
    await peer.until_dropped(before)
    return {"messages": len(frame) // len(ping)}


async def empty_fragments(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """40k empty MORE fragments of one request, then its last fragment."""
    count = int(args.get("count", 40_000))
    mux_id = peer.mux()
    fragments = [request(mux_id, UNKNOWN_HANDLER, b"", flags=MORE, seq=seq) for seq in range(count)]
    fragments.append(request(mux_id, UNKNOWN_HANDLER, b"", seq=count))
    await peer.send(batches(fragments), expect=[mux_id])
    return {"replies": await peer.replies()}


async def partial_payloads(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """Open many muxes and leave a 1 MiB partial payload on each: call requests (``calls``)
    and stream items (``streams``: CREATE_SHARD on one of the node's drives, whose handler
    waits for an item that never completes). Then let them all go."""
    calls, streams = int(args.get("calls", 0)), int(args.get("streams", 0))
    chunk = bytes(CHUNK_SIZE)
    call_muxes = [peer.mux() for _ in range(calls)]
    for mux_id in call_muxes:
        peer.expected[mux_id] = peer.conn.expect_raw_reply(mux_id)
        await peer.conn.send_raw_frame(request(mux_id, UNKNOWN_HANDLER, chunk, flags=MORE))
    stream_muxes = []
    for _ in range(streams):
        mux_id = peer.mux()
        stream_muxes.append(mux_id)
        shard = {"upload": uuid.uuid4().hex, "part": 0}
        opening = with_subroute(args["drive"], msgpack.packb(shard))
        await peer.conn.send_raw_frame(
            merge([
                encode(Op.CONNECT_MUX, mux_id=mux_id, handler_id=HandlerID.CREATE_SHARD,
                       flags=SUBROUTE, payload=opening),
                encode(Op.CLIENT_MSG, mux_id=mux_id, flags=MORE, payload=chunk),
            ])
        )  # fmt: skip
    replies = await peer.replies()
    # Let everything go: the node drops the partial payloads and cancels the streams.
    cancels = [encode(Op.DISCONNECT_SERVER_MUX, mux_id=m) for m in call_muxes + stream_muxes]
    if cancels:
        await peer.send(batches(cancels))
    await peer.roundtrip()
    busy = sum(1 for text in replies.values() if "busy" in text)
    return {"replies": len(replies), "busy": busy,
            "held": sum(1 for text in replies.values() if text == "none")}  # fmt: skip


async def ping_flood(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """Stop reading and send PINGs, 4096 to a frame: every one asks for a PONG."""
    before = peer.conn.counters.sessions
    peer.conn.pause_reading()
    frame = merge([encode(Op.PING, payload=msgpack.packb({"t": 1.0}))] * 4096)
    sent = 0
    try:
        for _ in range(int(args.get("frames", 400))):
            await peer.conn.send_raw_frame(frame)
            sent += 1
            if not peer.conn.is_connected or peer.conn.counters.sessions != before:
                break
    except (GridError, ConnectionError):
        pass
    finally:
        peer.conn.pause_reading(False)
    return {"frames": sent}


async def unread_replies(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """Stop reading and ask for big replies (READ_METADATA of an object stored inline) until
    the node's out-queue is full; then only the Manager's pings (once a second) keep coming."""
    peer.conn.pause_reading()
    payload = with_subroute(args["drive"], msgpack.packb({"vol": args["bucket"],
                                                          "key": args["key"]}))  # fmt: skip
    messages = [
        request(peer.mux(), HandlerID.READ_METADATA, payload, flags=SUBROUTE)
        for _ in range(int(args.get("requests", 2000)))
    ]
    await peer.send(batches(messages, 500))
    return {"requests": len(messages)}


async def huge_credit_grant(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """Open a real stream to the node, then grant its server side credit as a 1 MiB number."""
    opening = msgpack.packb({"upload": uuid.uuid4().hex, "part": 0})
    stream = peer.conn.stream(HandlerID.CREATE_SHARD, opening, subroute=args["drive"])
    async with stream:
        ready = await asyncio.wait_for(stream.recv(), 10)
        await peer.conn.send_raw_frame(
            encode(Op.UNBLOCK_SERVER, mux_id=stream.mux_id, payload=b"\xff" * CHUNK_SIZE)
        )
        try:
            await asyncio.wait_for(stream.recv(), 10)
        except GridError as exc:
            return {"ready": repr(ready), "error": f"{type(exc).__name__}: {exc}"}
    return {"ready": repr(ready), "error": ""}


async def bad_numbers(peer: Peer, args: dict[str, Any]) -> dict[str, Any]:
    """PONGs and PINGs carrying numbers no node sends: inf, NaN, huge, negative, wrong
    types. Each one is a protocol error of that message alone."""
    bad: list[dict[str, Any]] = [
        {"t": math.inf}, {"t": math.nan}, {"lag": math.inf}, {"q": math.nan},
        {"calls": 2**63}, {"streams": -1}, {"stall": 1e308}, {"lag": True},
        {"q": "x" * 4000}, {"t": [1.0] * 64},
    ]  # fmt: skip
    frames = [encode(Op.PONG, payload=msgpack.packb(m)) for m in bad]
    # A ping's only number is its time, which the pong echoes.
    frames += [encode(Op.PING, payload=msgpack.packb(m)) for m in [*bad[:2], bad[-1]]]
    frames.append(encode(Op.PONG, payload=b"\xc1"))  # not msgpack at all
    await peer.send(frames)
    return {"sent": len(frames), "roundtrip": await peer.roundtrip()}


ATTACKS: dict[str, Callable[[Peer, dict[str, Any]], Awaitable[dict[str, Any]]]] = {
    "many_messages": many_messages,
    "empty_fragments": empty_fragments,
    "partial_payloads": partial_payloads,
    "ping_flood": ping_flood,
    "unread_replies": unread_replies,
    "huge_credit_grant": huge_credit_grant,
    "bad_numbers": bad_numbers,
}


# --- the command loop --------------------------------------------------------------------------


async def handle(peer: Peer, command: dict[str, Any]) -> dict[str, Any]:
    name = command["cmd"]
    if name == "wait":
        return await peer.wait(float(command.get("timeout", 20)))
    if name == "roundtrip":
        return {"text": await peer.roundtrip()}
    if name == "frames":
        frames = [bytes.fromhex(text) for text in command["hex"]]
        await peer.send(frames, expect=[int(m) for m in command.get("expect", [])])
        return {}
    if name == "replies":
        return {"replies": await peer.replies()}
    if name == "attack":
        return await ATTACKS[command["name"]](peer, command.get("args", {}))
    if name == "pause":
        peer.conn.pause_reading(bool(command["on"]))
        return {}
    if name == "stats":
        return {"stats": peer.conn.stats().as_dict()}
    raise ValueError(f"unknown command {name!r}")


async def serve(args: argparse.Namespace) -> None:
    sock = socket.socket(fileno=args.fd)
    # Never give up on the node for silence: while this side does not read, the node must be
    # the one that ends the session.
    config = GridConfig(dead_after=3600.0, stream_client_timeout=3600.0)
    manager = Manager(args.host, [args.target], args.secret, config=config)
    runner = await serve_manager(manager, sock)
    await manager.start()
    peer = Peer(manager, args.target)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    try:
        while line := await reader.readline():
            command = json.loads(line)
            try:
                answer = {"ok": True, **await handle(peer, command)}
            except (GridError, OSError, TimeoutError, AssertionError, ValueError) as exc:
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        await manager.close()
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.hostile.peer")
    parser.add_argument("--fd", type=int, required=True, help="inherited listening socket")
    parser.add_argument("--host", required=True, help="this peer's host string")
    parser.add_argument("--target", required=True, help="the node under attack")
    parser.add_argument("--secret", required=True)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
