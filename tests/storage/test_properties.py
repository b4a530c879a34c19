"""Property tests: put/get round trips with random sizes and ranges on sets of 4, 6 and 8."""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from storage_helpers import MIB, chunks_of, payload, read_all

from storage.erasure import Erasure
from storage.objects import ObjectLayer
from storage.testing import local_layer

BLOCK = MIB
SIZES = st.one_of(
    st.sampled_from(
        [0, 1, 2, BLOCK - 1, BLOCK, BLOCK + 1, 2 * BLOCK - 1, 2 * BLOCK, 2 * BLOCK + 1]
    ),
    st.integers(min_value=0, max_value=3 * BLOCK + 17),
)


@pytest.fixture(scope="module", params=[4, 6, 8])
def layer(request: pytest.FixtureRequest) -> Iterator[ObjectLayer]:
    # The layer holds no loop-bound state, so each example can run in its own event loop.
    with tempfile.TemporaryDirectory() as root:

        async def build() -> ObjectLayer:
            built, _ = await local_layer(root, request.param)
            await built.make_bucket("bkt")
            return built

        yield asyncio.run(build())


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(size=SIZES, data=st.data())
def test_round_trip_with_ranges(layer: ObjectLayer, size: int, data: st.DataObject) -> None:
    body = payload(size, seed=size)
    offset = data.draw(st.integers(min_value=0, max_value=size), label="offset")
    length = data.draw(st.integers(min_value=0, max_value=size - offset), label="length")
    chunk = data.draw(st.sampled_from([1000, 65536, BLOCK, 3 * BLOCK]), label="chunk")

    async def run() -> None:
        key = f"obj-{size}-{offset}-{length}"
        info = await layer.put_object("bkt", key, chunks_of(body, chunk), size=size)
        assert info.etag == hashlib.md5(body).hexdigest()
        assert await read_all(layer, "bkt", key) == body
        assert await read_all(layer, "bkt", key, offset, length) == body[offset : offset + length]
        await layer.delete_object("bkt", key)

    asyncio.run(run())


@settings(max_examples=30, deadline=None)
@given(
    layout=st.sampled_from([(2, 2), (3, 3), (4, 4), (5, 3), (12, 4)]),
    size=st.integers(min_value=1, max_value=5000),
    data=st.data(),
)
def test_any_k_shards_decode(layout: tuple[int, int], size: int, data: st.DataObject) -> None:
    k, m = layout
    erasure = Erasure(k, m, block_size=8192)
    block = payload(size, seed=k * 100 + size)
    shards = erasure.encode(block)
    assert len(shards) == k + m and len({len(s) for s in shards}) == 1
    chosen = data.draw(st.permutations(range(k + m)), label="order")[:k]
    picked = {index: shards[index] for index in chosen}
    assert erasure.decode(picked, size) == block
    assert erasure.decode(picked, size) == block  # the mapping is not disturbed by zfec
