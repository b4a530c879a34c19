"""Erasure coding of blocks with zfec.

An object is cut into blocks of ``block_size`` bytes (1 MiB by default). Each block is split
into ``data`` equal shards (the last block is zero-padded to a multiple of ``data``) and zfec
adds ``parity`` more. Any ``data`` of the ``data + parity`` shards rebuild the block.

These functions are CPU-bound and synchronous; the object layer runs them in a thread pool
(zfec and the hashes release the GIL), never on the event loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import zfec

from storage.errors import InvalidArgument, ReadQuorum

DEFAULT_BLOCK_SIZE = 1 << 20


class Erasure:
    """Encoder and decoder for one ``data + parity`` layout."""

    def __init__(self, data: int, parity: int, block_size: int = DEFAULT_BLOCK_SIZE) -> None:
        if data < 1 or parity < 0 or data + parity > 256:
            raise InvalidArgument(f"bad erasure layout {data}+{parity}")
        if block_size < data:
            raise InvalidArgument("block size must be at least the number of data shards")
        self.data = data
        self.parity = parity
        self.total = data + parity
        self.block_size = block_size
        self._parity_nums = tuple(range(data, self.total))

    def shard_len(self, block_len: int) -> int:
        """Shard size for a block of ``block_len`` bytes."""
        return -(-block_len // self.data)

    def encode(self, block: bytes) -> list[bytes]:
        """Split one block into ``total`` shards (data shards first)."""
        size = self.shard_len(len(block))
        if size * self.data != len(block):
            block = block + bytes(size * self.data - len(block))
        view = memoryview(block)
        shards = [bytes(view[i * size : (i + 1) * size]) for i in range(self.data)]
        if self.parity:
            # A fresh encoder per call: creating one costs under a microsecond, and it keeps
            # concurrent calls from different threads independent.
            encoder = zfec.Encoder(self.data, self.total)
            shards.extend(encoder.encode(tuple(shards), self._parity_nums))
        return shards

    def encode_views(self, block: bytes) -> list[bytes | memoryview]:
        """Like :meth:`encode`, without copying the block: the data shards are memoryviews of
        ``block`` (of a zero-padded copy of it when its length is not a multiple of ``data``,
        as for the last block of an object) and only the parity shards are new bytes. zfec
        reads its input through the buffer protocol, so it encodes straight from the block."""
        size = self.shard_len(len(block))
        if size * self.data != len(block):
            block = block + bytes(size * self.data - len(block))
        view = memoryview(block)
        shards: list[bytes | memoryview] = [
            view[i * size : (i + 1) * size] for i in range(self.data)
        ]
        if self.parity:
            encoder = zfec.Encoder(self.data, self.total)
            shards.extend(encoder.encode(tuple(shards), self._parity_nums))
        return shards

    def encode_some(self, block: bytes, wanted: Sequence[int]) -> dict[int, bytes]:
        """Only the shards ``wanted`` of one block (index -> bytes), for healing.

        A data shard is a slice of the block; zfec computes just the parity shards asked
        for, so rebuilding one lost shard costs a fraction of a full encode."""
        size = self.shard_len(len(block))
        if size * self.data != len(block):
            block = block + bytes(size * self.data - len(block))
        view = memoryview(block)
        data = [bytes(view[i * size : (i + 1) * size]) for i in range(self.data)]
        out = {index: data[index] for index in wanted if index < self.data}
        parity = tuple(sorted(index for index in wanted if index >= self.data))
        if parity:
            encoder = zfec.Encoder(self.data, self.total)
            out.update(zip(parity, encoder.encode(tuple(data), parity), strict=True))
        return out

    def decode(self, shards: Mapping[int, bytes], block_len: int) -> bytes:
        """Rebuild a block of ``block_len`` bytes from any ``data`` shards (index → bytes)."""
        if all(index in shards for index in range(self.data)):
            block = b"".join(shards[index] for index in range(self.data))
        else:
            if len(shards) < self.data:
                raise ReadQuorum(f"need {self.data} shards to decode, have {len(shards)}")
            chosen = sorted(shards)[: self.data]
            # zfec reorders the lists it is given, so each call builds fresh ones.
            blocks = [shards[index] for index in chosen]
            decoder = zfec.Decoder(self.data, self.total)
            block = b"".join(decoder.decode(blocks, list(chosen)))
        return block if len(block) == block_len else block[:block_len]

    def needs_decode(self, indices: Sequence[int]) -> bool:
        """Whether these shard indices need zfec (some data shard is missing)."""
        return not all(index in indices for index in range(self.data))
