"""Typed single calls: msgpack-serialisable request and response types over raw handlers.

A type is any dataclass whose fields msgpack can carry; it travels as an array of its fields.

    @dataclass
    class Add:
        a: int
        b: int

    ADD = TypedHandler(HandlerID.ADD, Add, Sum)
    ADD.register(manager, handle_add)          # async def handle_add(req: Add) -> Sum
    total = await ADD.call(conn, Add(1, 2))    # -> Sum
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import msgpack

from .connection import Connection
from .errors import RemoteError
from .handlers import handler_name
from .manager import Manager

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Codec(Protocol[T]):
    """Turns one type into bytes and back; ``decode`` raises ValueError on bad input."""

    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


class DataclassCodec(Generic[T]):
    """A dataclass as a msgpack array of its fields, in declaration order."""

    def __init__(self, cls: type[T]) -> None:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} is not a dataclass")
        self.cls = cls
        self._names = [field.name for field in dataclasses.fields(cls)]

    def encode(self, value: T) -> bytes:
        data: bytes = msgpack.packb(
            [getattr(value, name) for name in self._names], use_bin_type=True
        )
        return data

    def decode(self, data: bytes) -> T:
        try:
            values: Any = msgpack.unpackb(data, raw=False)
        except Exception as exc:
            raise ValueError(f"bad {self.cls.__name__} payload: {exc}") from exc
        if not isinstance(values, list) or len(values) != len(self._names):
            raise ValueError(f"bad {self.cls.__name__} payload: expected {len(self._names)} fields")
        try:
            return self.cls(*values)
        except TypeError as exc:
            raise ValueError(f"bad {self.cls.__name__} payload: {exc}") from exc


class TypedHandler(Generic[Req, Resp]):
    """A single-call handler ID bound to a request type and a response type."""

    def __init__(self, handler_id: int, request: type[Req], response: type[Resp]) -> None:
        self.handler_id = int(handler_id)
        self.request: Codec[Req] = DataclassCodec(request)
        self.response: Codec[Resp] = DataclassCodec(response)

    def register(
        self, manager: Manager, fn: Callable[[Req], Awaitable[Resp]], *, subroute: str = ""
    ) -> None:
        """Serve this handler on ``manager`` with ``fn``."""

        async def raw(payload: bytes) -> bytes:
            return self.response.encode(await fn(self.request.decode(payload)))

        manager.register_single(self.handler_id, raw, subroute=subroute)

    async def call(
        self, conn: Connection, request: Req, *, subroute: str = "", timeout: float | None = None
    ) -> Resp:
        """Call the handler on ``conn``'s peer and decode the typed response."""
        data = await conn.call(
            self.handler_id, self.request.encode(request), subroute=subroute, timeout=timeout
        )
        try:
            return self.response.decode(data)
        except ValueError as exc:
            raise RemoteError(f"{handler_name(self.handler_id)}: {exc}") from exc
