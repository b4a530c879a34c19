"""What a simulated node's handlers do, and how it reads its own streams.

The handlers are stand-ins with the same contract as the real ones run by
:class:`~minigrid.handling.HandlerTasks`: an answer after some service time, a deadline error
when the session marks the call expired, nothing at all when the caller left; a stream
producer that sends only as credit allows and ends its stream when done; a consumer that reads
at its own pace and may cancel part way.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from ..errors import CallError
from ..handlers import HandlerID, Registry
from ..mux import End
from ..records import Mux, ServerCall
from ..session import GridSession
from ..state import MuxState
from .clock import Timer

if TYPE_CHECKING:
    from .node import PeerLink, SimNode

ECHO = int(HandlerID.TEST_ECHO)
SLEEP = int(HandlerID.TEST_SLEEP)
GENERATE = int(HandlerID.TEST_STREAM_GENERATE)
#: Items of a generated stream go out as soon as credit allows; this is its capacity.
GENERATE_CAPACITY = 4


async def _never_called(payload: bytes) -> bytes:  # the registry needs a callable
    raise NotImplementedError


async def _never_streamed(stream: object) -> None:
    raise NotImplementedError


def sim_registry() -> Registry:
    """ECHO (answers after up to 20 ms), SLEEP (answers after the seconds in its payload) and
    GENERATE (a stream of the count in its payload, capacity 4)."""
    registry = Registry()
    registry.add_single(ECHO, _never_called)
    registry.add_single(SLEEP, _never_called)
    registry.add_stream(GENERATE, _never_streamed, out_capacity=GENERATE_CAPACITY)
    return registry


def item(index: int) -> bytes:
    return struct.pack(">I", index)


class Producer:
    """The server side of a GENERATE stream: send each item as credit allows, then the end."""

    def __init__(self, link: PeerLink, session: GridSession, mux: Mux, count: int) -> None:
        self.link = link
        self.session = session
        self.mux = mux
        self.count = count
        self.sent = 0
        self.stopped = False

    def pump(self) -> None:
        streams = self.session.streams
        while not self.stopped and self.sent < self.count:
            try:
                outgoing = streams.send_item(self.mux, item(self.sent))
            except CallError:
                return  # the stream ended under us; its StopHandler follows
            if outgoing is None:
                return  # no credit: a StreamChanged wakes us
            self.sent += 1
            if not self.session.push(outgoing):
                self.link.push(outgoing, self.pump)
                return
        if not self.stopped:
            self.stopped = True
            streams.end(self.mux)
            streams.finish(self.mux)
        self.link.flush()


class Consumer:
    """The client side of a GENERATE stream: read one item per ``read_delay``, and maybe
    cancel after ``cancel_after`` seconds."""

    def __init__(
        self,
        stream_id: int,
        node: SimNode,
        link: PeerLink,
        session: GridSession,
        mux: Mux,
        read_delay: float,
    ) -> None:
        self.stream_id = stream_id
        self.node = node
        self.link = link
        self.session = session
        self.mux = mux
        self.read_delay = read_delay
        self.reading: Timer | None = None
        self.done = False

    def changed(self) -> None:
        if self.reading is None and not self.done:
            self.reading = self.node.after_local(self.read_delay, self.read)

    def read(self) -> None:
        self.reading = None
        if self.done:
            return
        ledger = self.node.sim.ledger
        try:
            got = self.session.streams.take_item(self.mux)
        except CallError as exc:
            self.done = True
            ledger.stream_ended(self.stream_id, exc)
            return
        if got is None:
            return
        if isinstance(got, End):
            self.done = True
            ledger.stream_ended(self.stream_id, None)
            return
        ledger.stream_item(self.stream_id, struct.unpack(">I", got)[0])
        self.link.flush()
        self.changed()  # there may be more already

    def cancel(self) -> None:
        if self.done:
            return
        already_over = self.mux.state is MuxState.CLOSED
        self.node.sim.ledger.stream_cancelled(self.stream_id, already_over)
        self.session.streams.cancel(self.mux)
        self.link.flush()
        self.read()  # what does reading say now? never a complete end it did not have


class Service:
    """One node's running handlers and stream readers, by session and call or mux."""

    def __init__(self, node: SimNode) -> None:
        self.node = node
        self._calls: dict[tuple[GridSession, ServerCall], Timer] = {}
        self._producers: dict[tuple[GridSession, Mux], Producer] = {}
        self._consumers: dict[tuple[GridSession, Mux], Consumer] = {}

    def start_call(self, link: PeerLink, session: GridSession, call: ServerCall) -> None:
        payload = call.take_payload()
        if call.handler.handler_id == SLEEP:
            delay = float(payload.decode() or "3600")
        else:
            delay = self.node.sim.scheduler.random.uniform(0.0, 0.02)
        timer = self.node.after_local(delay, self._answer, link, session, call, payload, False)
        self._calls[(session, call)] = timer

    def _answer(
        self, link: PeerLink, session: GridSession, call: ServerCall, body: bytes, error: bool
    ) -> None:
        self._calls.pop((session, call), None)
        outgoing = session.calls.reply(call, body, error=error)

        def finish() -> None:
            session.calls.finish(call)
            link.flush()

        if outgoing is None:
            finish()
        else:
            link.push(outgoing, finish)

    def start_stream(self, link: PeerLink, session: GridSession, mux: Mux) -> None:
        count = struct.unpack(">I", mux.payload[:4])[0] if len(mux.payload) >= 4 else 0
        producer = Producer(link, session, mux, count)
        self._producers[(session, mux)] = producer
        producer.pump()

    def stop(self, link: PeerLink, session: GridSession, work: ServerCall | Mux) -> None:
        """The session says a handler must stop: as a cancelled task would."""
        if isinstance(work, ServerCall):
            timer = self._calls.pop((session, work), None)
            if timer is not None:
                timer.cancel()
            if work.expired:
                text = f"{work.handler.name}: deadline of {work.timeout:.3f}s exceeded"
                self._answer(link, session, work, text.encode(), True)
            else:
                session.calls.finish(work)
            return
        producer = self._producers.pop((session, work), None)
        if producer is not None:
            producer.stopped = True
        if work.state is MuxState.EXPIRED:
            session.streams.end(work, f"{work.handler_name}: stream deadline exceeded")
        session.streams.finish(work)
        link.flush()

    def changed(self, link: PeerLink, session: GridSession, mux: Mux) -> None:
        producer = self._producers.get((session, mux))
        if producer is not None:
            if mux.state.terminal:
                del self._producers[(session, mux)]
            else:
                producer.pump()
        consumer = self._consumers.get((session, mux))
        if consumer is not None:
            consumer.changed()

    def consume(
        self,
        link: PeerLink,
        session: GridSession,
        mux: Mux,
        count: int,
        read_delay: float,
        cancel_after: float | None,
    ) -> None:
        stream_id = self.node.sim.ledger.new_stream(self.node.name, link.remote, count)
        consumer = Consumer(stream_id, self.node, link, session, mux, read_delay)
        self._consumers[(session, mux)] = consumer
        if cancel_after is not None:
            self.node.after_local(cancel_after, consumer.cancel)

    def forget_session(self, session: GridSession) -> None:
        """The session ended (every StopHandler has been handled): drop what is left of it."""
        for call_key in [key for key in self._calls if key[0] is session]:
            self._calls.pop(call_key).cancel()
        for mux_key in [key for key in self._producers if key[0] is session]:
            del self._producers[mux_key]
        for mux_key in [key for key in self._consumers if key[0] is session]:
            self._consumers.pop(mux_key).changed()  # it reads once more: Disconnected
