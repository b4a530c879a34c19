"""A sans-IO decoder for ``Content-Encoding: aws-chunked`` request bodies.

Bytes go in through :meth:`AwsChunkedDecoder.feed` in pieces of any size; the decoded payload
comes out. Each chunk is framed as::

    <hex size>[;chunk-signature=<64 hex>]\\r\\n<data>\\r\\n

and the body ends with a zero-size chunk, optional trailer lines (``name:value\\r\\n``, e.g. a
``x-amz-checksum-crc32``; ``x-amz-trailer-signature`` when signed) and an empty line.

With a :class:`~node.s3.sigv4.ChunkSigner` every chunk signature (and the trailer signature)
is checked against the chain that starts at the request's seed signature. With a ``limit`` (the
declared ``x-amz-decoded-content-length``) a chunk that would take the payload past it fails at
its size line, before any of its data is taken. Whatever arrives, the decoder either succeeds or
raises :class:`ChunkedError`; framing lines and trailers are capped.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

from node.s3.sigv4 import ChunkSigner

MAX_LINE = 4096  # a chunk header or one trailer line
MAX_TRAILER_BYTES = 16 * 1024
MAX_CHUNK_SIZE = 1 << 32
TRAILER_SIGNATURE = "x-amz-trailer-signature"


class ChunkedError(Exception):
    """The body is not valid aws-chunked.

    ``kind`` says what the caller can report: ``"signature"`` (a chunk or trailer signature is
    wrong or missing), ``"truncated"`` (the body ended early), ``"too_long"`` (the payload runs
    past the declared length) or ``"malformed"``.
    """

    def __init__(self, message: str, *, kind: str = "malformed") -> None:
        super().__init__(message)
        self.kind = kind


class _State(enum.Enum):
    SIZE = "size line"
    DATA = "chunk data"
    DATA_END = "CRLF after chunk data"
    TRAILER = "trailer"
    DONE = "done"
    ERROR = "error"


_TRANSITIONS: dict[_State, frozenset[_State]] = {
    _State.SIZE: frozenset({_State.DATA, _State.DATA_END, _State.TRAILER}),
    _State.DATA: frozenset({_State.DATA_END}),
    _State.DATA_END: frozenset({_State.SIZE}),
    _State.TRAILER: frozenset({_State.DONE}),
    _State.DONE: frozenset(),
    _State.ERROR: frozenset(),
}


class AwsChunkedDecoder:
    """Decode an aws-chunked body fed in arbitrary pieces.

    ``signer`` given: every chunk must carry a ``chunk-signature`` and it is verified, as is
    the trailer signature when ``trailer`` is true. ``trailer`` false: the body must end right
    after the zero-size chunk. ``limit``: the most payload bytes the body may carry.
    """

    def __init__(
        self, signer: ChunkSigner | None = None, *, trailer: bool = False, limit: int | None = None
    ) -> None:
        self._signer = signer
        self._expect_trailer = trailer
        self._limit = limit
        self._state = _State.SIZE
        self._line = bytearray()
        self._remaining = 0  # data bytes left in the current chunk
        self._chunk_signature = ""
        self._chunk_hash: Any = None
        self._trailer_bytes = 0
        self._trailer_lines: list[tuple[str, str]] = []
        self.trailers: dict[str, str] = {}
        self.decoded = 0

    @property
    def done(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payload pieces it completed (possibly none)."""
        if self._state is _State.ERROR:
            raise ChunkedError("the decoder already failed")
        try:
            return self._feed(memoryview(data))
        except ChunkedError:
            self._state = _State.ERROR
            raise

    def end_of_input(self) -> None:
        """Call at the end of the body: ChunkedError unless the final chunk was complete."""
        if self._state is not _State.DONE:
            failed_in = self._state.value
            self._state = _State.ERROR
            raise ChunkedError(
                f"the aws-chunked body ended early (in the {failed_in})", kind="truncated"
            )

    # --- internals --------------------------------------------------------------------------

    def _goto(self, state: _State) -> None:
        if state not in _TRANSITIONS[self._state]:
            raise ChunkedError(f"aws-chunked: {self._state.value} cannot go to {state.value}")
        self._state = state

    def _feed(self, view: memoryview) -> list[bytes]:
        out: list[bytes] = []
        pos = 0
        while pos < len(view):
            state = self._state
            if state is _State.DATA:
                take = min(self._remaining, len(view) - pos)
                piece = bytes(view[pos : pos + take])
                pos += take
                self._remaining -= take
                if self._chunk_hash is not None:
                    self._chunk_hash.update(piece)
                self.decoded += take
                out.append(piece)
                if self._remaining == 0:
                    self._goto(_State.DATA_END)
            elif state is _State.DONE:
                raise ChunkedError("aws-chunked: data after the end of the body")
            else:
                line, pos = self._take_line(view, pos)
                if line is None:
                    continue
                if state is _State.SIZE:
                    self._on_size_line(line)
                elif state is _State.DATA_END:
                    if line:
                        raise ChunkedError("aws-chunked: chunk data runs past its declared size")
                    self._finish_chunk()
                    self._goto(_State.SIZE)
                else:
                    self._on_trailer_line(line)
        return out

    def _take_line(self, view: memoryview, pos: int) -> tuple[bytes | None, int]:
        """Gather one CRLF-terminated line; (None, end) when the piece ends first."""
        end = bytes(view[pos : pos + MAX_LINE + 2]).find(b"\n")
        if end < 0:
            self._line += view[pos:]
            if len(self._line) > MAX_LINE:
                raise ChunkedError(f"aws-chunked: a framing line is longer than {MAX_LINE} bytes")
            return None, len(view)
        self._line += view[pos : pos + end]
        line = bytes(self._line)
        self._line.clear()
        if not line.endswith(b"\r"):
            raise ChunkedError("aws-chunked: framing lines must end with CRLF")
        if len(line) > MAX_LINE + 1:
            raise ChunkedError(f"aws-chunked: a framing line is longer than {MAX_LINE} bytes")
        return line[:-1], pos + end + 1

    def _on_size_line(self, line: bytes) -> None:
        size_text, _, extension = line.partition(b";")
        try:
            if not 0 < len(size_text) <= 16:
                raise ValueError
            size = int(size_text.decode("ascii"), 16)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ChunkedError(f"aws-chunked: bad chunk size {size_text[:32]!r}") from exc
        if size > MAX_CHUNK_SIZE:
            raise ChunkedError(f"aws-chunked: chunk of {size} bytes is over the limit")
        if self._limit is not None and self.decoded + size > self._limit:
            raise ChunkedError(
                f"aws-chunked: a chunk of {size} bytes after {self.decoded} takes the payload past "
                f"its declared x-amz-decoded-content-length of {self._limit} bytes",
                kind="too_long",
            )
        if self._signer is not None:
            name, _, value = extension.partition(b"=")
            if name.strip() != b"chunk-signature" or len(value) != 64:
                raise ChunkedError(
                    "aws-chunked: the chunk has no chunk-signature", kind="signature"
                )
            self._chunk_signature = value.decode("ascii", "replace")
            self._chunk_hash = hashlib.sha256()
        self._remaining = size
        if size == 0:
            self._finish_chunk()
            self._goto(_State.TRAILER)
        else:
            self._goto(_State.DATA)

    def _finish_chunk(self) -> None:
        if self._signer is None:
            return
        digest = self._chunk_hash.hexdigest()
        if not self._signer.verify_chunk(digest, self._chunk_signature):
            raise ChunkedError(
                "aws-chunked: a chunk signature does not match (the body was altered or signed "
                "with another key)",
                kind="signature",
            )

    def _on_trailer_line(self, line: bytes) -> None:
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > MAX_TRAILER_BYTES:
            raise ChunkedError(f"aws-chunked: the trailer is over {MAX_TRAILER_BYTES} bytes")
        if not line:
            self._finish_trailer()
            return
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError as exc:
            raise ChunkedError("aws-chunked: a trailer line is not ASCII") from exc
        name, sep, value = text.partition(":")
        if not sep or not name.strip():
            raise ChunkedError(f"aws-chunked: bad trailer line {text[:64]!r}")
        self._trailer_lines.append((name.strip().lower(), value.strip()))

    def _finish_trailer(self) -> None:
        lines = self._trailer_lines
        if not self._expect_trailer and lines:
            raise ChunkedError("aws-chunked: a trailer was sent but none was declared")
        if self._signer is not None and self._expect_trailer:
            given = [value for name, value in lines if name == TRAILER_SIGNATURE]
            signed = [(name, value) for name, value in lines if name != TRAILER_SIGNATURE]
            if len(given) != 1:
                raise ChunkedError(
                    "aws-chunked: the trailer signature is missing", kind="signature"
                )
            canonical = "".join(f"{name}:{value}\n" for name, value in signed).encode()
            if not self._signer.verify_trailer(canonical, given[0]):
                raise ChunkedError(
                    "aws-chunked: the trailer signature does not match", kind="signature"
                )
        self.trailers = {name: value for name, value in lines if name != TRAILER_SIGNATURE}
        self._goto(_State.DONE)
