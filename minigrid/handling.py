"""The peer's calls and streams, run here as tasks (the asyncio half of serving them).

Each handler runs as a task held by :class:`HandlerTasks` until it ends; the session decides
when one must stop (:class:`~minigrid.events.StopHandler`: the caller left, the deadline passed,
the stream broke, the session ended) and the task is cancelled then. A deadline is the
session's to keep: a handler cancelled because its deadline passed finds its call or stream
marked expired, and answers with a deadline error instead of vanishing.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from . import trace
from .errors import DeadlineExceeded, GridError, RemoteError
from .handlers import reply_for
from .records import Mux, ServerCall
from .state import MuxState
from .streams import ServerStream

if TYPE_CHECKING:
    from .driver import SessionDriver
    from .session import GridSession


class HandlerTasks:
    """Every handler task of one session, by the call or stream it serves."""

    def __init__(self, driver: SessionDriver) -> None:
        self._driver = driver
        self._loop = asyncio.get_running_loop()
        self._tasks: dict[ServerCall | Mux, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def start_call(self, session: GridSession, call: ServerCall) -> None:
        task = self._loop.create_task(self._run_call(session, call), name=call.handler.name)
        self._tasks[call] = task

    def start_stream(self, session: GridSession, mux: Mux) -> None:
        stream = ServerStream(self._driver, mux)
        self._driver.watch(mux, stream)
        task = self._loop.create_task(self._run_stream(session, mux, stream), name=mux.handler_name)
        self._tasks[mux] = task

    def stop(self, work: ServerCall | Mux) -> None:
        """Cancel the task serving ``work`` (it may not have started yet)."""
        task = self._tasks.pop(work, None)
        if task is not None:
            task.cancel()

    async def _run_call(self, session: GridSession, call: ServerCall) -> None:
        """Run one call and queue its reply. The call keeps its slot (and its payload its
        share of the budget) until the reply is queued: with a peer that does not read, the
        slots fill and further requests are refused at once, instead of replies piling up."""
        handler, driver = call.handler, self._driver
        started = driver.now()
        sizes = (len(call.payload), 0)
        failure: BaseException | None = None
        try:
            # The handler is awaited here, not in a helper coroutine: one frame less per call.
            result: object = None
            try:
                result = await handler.fn(call.take_payload())
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if not call.expired or task is None:
                    failure = exc
                    raise  # the caller left or the connection dropped: nobody wants an answer
                task.uncancel()
                error = True
                body = f"{handler.name}: deadline of {call.timeout:.3f}s exceeded".encode()
                failure = DeadlineExceeded(body.decode())
            except Exception as exc:
                error, body = True, (str(exc) or exc.__class__.__name__).encode()
                failure = exc
            else:
                error, body = reply_for(handler, result)
                if error:
                    failure = RemoteError(body.decode(errors="replace"), handler=handler.name)
            del result
            sizes = (sizes[0], len(body))
            outgoing = session.calls.reply(call, body, error=error)
            del body  # while the reply waits, only what it needs is kept
            if outgoing is not None:
                await driver.push(outgoing)
            driver.flush()
        except GridError as exc:
            failure = exc  # the connection dropped while the reply waited for room
        finally:
            session.calls.finish(call)
            self._tasks.pop(call, None)
            if driver.listeners:
                driver.report(handler.handler_id, handler.subroute, trace.SERVER, trace.CALL,
                              started, failure, *sizes)  # fmt: skip

    async def _run_stream(self, session: GridSession, mux: Mux, stream: ServerStream) -> None:
        """Run one stream's handler; its return, error or expiry is the stream's end."""
        assert mux.handler is not None
        streams, driver = session.streams, self._driver
        failure: BaseException | None = None
        try:
            await mux.handler.fn(stream)
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if mux.state is not MuxState.EXPIRED or task is None:
                failure = exc
                raise
            task.uncancel()
            text = f"{mux.handler_name}: stream deadline of {mux.timeout}s exceeded"
            failure = DeadlineExceeded(text)
            streams.end(mux, text)
        except Exception as exc:
            failure = exc
            streams.end(mux, str(exc) or exc.__class__.__name__)
        else:
            streams.end(mux)
        finally:
            streams.finish(mux)
            self._tasks.pop(mux, None)
            driver.forget(mux)
            driver.flush()
            if driver.listeners:
                driver.report(mux.handler_id, mux.subroute, trace.SERVER, trace.STREAM,
                              mux.opened_at, failure, mux.request_bytes + mux.bytes_received,
                              mux.bytes_sent)  # fmt: skip
