"""The aws-chunked decoder, fed in pieces of every size (Hypothesis)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.s3 import sigv4
from node.s3.chunked import MAX_LINE, AwsChunkedDecoder, ChunkedError
from tests.s3.helpers import REGION, SECRET_KEY, encode_signed_chunks, encode_unsigned_chunks

AMZ_DATE = "20240102T030405Z"
SEED = "ab" * 32
HEADERS = {"X-Amz-Date": AMZ_DATE, "Authorization": f"AWS4-HMAC-SHA256 ..., Signature={SEED}"}
SCOPE = sigv4.Scope(AMZ_DATE[:8], REGION, "s3")
TRAILER = {"x-amz-checksum-crc32": "AAAAAA=="}


def signer() -> sigv4.ChunkSigner:
    return sigv4.ChunkSigner(sigv4.signing_key(SECRET_KEY, SCOPE), AMZ_DATE, SCOPE, SEED)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


def decode(decoder: AwsChunkedDecoder, pieces: list[bytes]) -> bytes:
    out = b"".join(b"".join(decoder.feed(piece)) for piece in pieces)
    decoder.end_of_input()
    return out


bodies = st.binary(max_size=3000)
chunk_sizes = st.integers(min_value=1, max_value=700)
cut_points = st.lists(st.integers(min_value=0, max_value=10_000), max_size=40)


@settings(max_examples=150, deadline=None)
@given(data=bodies, chunk=chunk_sizes, cuts=cut_points, trailer=st.booleans())
def test_unsigned_round_trip(data: bytes, chunk: int, cuts: list[int], trailer: bool) -> None:
    body = encode_unsigned_chunks(data, chunk, TRAILER if trailer else None)
    decoder = AwsChunkedDecoder(trailer=trailer)
    assert decode(decoder, split(body, cuts)) == data
    assert decoder.trailers == (TRAILER if trailer else {})
    assert decoder.decoded == len(data)


@settings(max_examples=150, deadline=None)
@given(data=bodies, chunk=chunk_sizes, cuts=cut_points, trailer=st.booleans())
def test_signed_round_trip(data: bytes, chunk: int, cuts: list[int], trailer: bool) -> None:
    body = encode_signed_chunks(data, chunk, headers=HEADERS, trailer=TRAILER if trailer else None)
    decoder = AwsChunkedDecoder(signer(), trailer=trailer)
    assert decode(decoder, split(body, cuts)) == data
    assert decoder.trailers == (TRAILER if trailer else {})


@settings(max_examples=100, deadline=None)
@given(data=st.binary(min_size=1, max_size=2000), chunk=chunk_sizes, where=st.integers(0, 10**6))
def test_any_altered_data_byte_fails_the_signature(data: bytes, chunk: int, where: int) -> None:
    body = bytearray(encode_signed_chunks(data, chunk, headers=HEADERS))
    # Alter one payload byte: find it by walking the framing.
    target = where % len(data)
    pos, seen = 0, 0
    while True:
        line_end = body.index(b"\r\n", pos)
        size = int(body[pos:line_end].split(b";")[0], 16)
        start = line_end + 2
        if target < seen + size:
            body[start + target - seen] ^= 0x01
            break
        seen += size
        pos = start + size + 2
    with pytest.raises(ChunkedError) as failed:
        decode(AwsChunkedDecoder(signer()), [bytes(body)])
    assert failed.value.kind == "signature"


def test_wrong_seed_fails_on_the_first_chunk() -> None:
    body = encode_signed_chunks(b"x" * 100, 64, headers=HEADERS)
    wrong = sigv4.ChunkSigner(sigv4.signing_key("other", SCOPE), AMZ_DATE, SCOPE, SEED)
    decoder = AwsChunkedDecoder(wrong)
    with pytest.raises(ChunkedError) as failed:
        decoder.feed(body)
    assert failed.value.kind == "signature"
    with pytest.raises(ChunkedError):
        decoder.feed(b"")  # stays failed


def test_tampered_trailer_fails_the_trailer_signature() -> None:
    body = encode_signed_chunks(b"data", 3, headers=HEADERS, trailer=TRAILER)
    tampered = body.replace(b"AAAAAA==", b"AAAAAB==")
    with pytest.raises(ChunkedError) as failed:
        decode(AwsChunkedDecoder(signer(), trailer=True), [tampered])
    assert failed.value.kind == "signature"


@given(data=bodies, chunk=chunk_sizes, cut=st.integers(min_value=0))
def test_truncated_bodies_are_reported(data: bytes, chunk: int, cut: int) -> None:
    body = encode_unsigned_chunks(data, chunk)
    short = body[: cut % len(body)]
    with pytest.raises(ChunkedError) as failed:
        decode(AwsChunkedDecoder(), [short])
    assert failed.value.kind == "truncated"


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n",  # not hex
        b"5\r\nabcdefgh\r\n",  # data runs past its size
        b"5\nabcde\r\n",  # bare LF
        b"0\r\n\r\nextra",  # data after the end
        b"1" * (MAX_LINE + 10),  # an endless size line
        b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n",  # undeclared trailer
        b"0\r\nno colon\r\n\r\n",
    ],
)
def test_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ChunkedError):
        decode(AwsChunkedDecoder(), [body])


def test_signed_mode_needs_chunk_signatures() -> None:
    with pytest.raises(ChunkedError) as failed:
        AwsChunkedDecoder(signer()).feed(b"3\r\nabc\r\n")
    assert failed.value.kind == "signature"


@settings(max_examples=300, deadline=None)
@given(garbage=st.binary(max_size=300), signed=st.booleans(), trailer=st.booleans())
def test_garbage_raises_only_chunked_errors(garbage: bytes, signed: bool, trailer: bool) -> None:
    decoder = AwsChunkedDecoder(signer() if signed else None, trailer=trailer)
    try:
        decoder.feed(garbage)
        decoder.end_of_input()
    except ChunkedError:
        pass
