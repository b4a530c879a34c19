"""SigV4 against the documented AWS examples, and against botocore's own signer."""

from __future__ import annotations

import hashlib
import string
from urllib.parse import quote, urlsplit

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from node.s3 import S3Error, sigv4

# The "get-vanilla" case of the AWS SigV4 test suite: GET / on example.amazonaws.com, signed
# with the suite's example key for service "service" at 2015-08-30 12:36:00 UTC.
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
VANILLA_SCOPE = sigv4.Scope("20150830", "us-east-1", "service")
VANILLA_HEADERS = {"host": ["example.amazonaws.com"], "x-amz-date": ["20150830T123600Z"]}


def test_get_vanilla_canonical_request_and_signature() -> None:
    canonical = sigv4.canonical_request(
        "GET", "/", [], VANILLA_HEADERS, ["host", "x-amz-date"], sigv4.EMPTY_SHA256
    )
    assert canonical == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        "host;x-amz-date\n" + hashlib.sha256(b"").hexdigest()
    )
    to_sign = sigv4.string_to_sign("20150830T123600Z", VANILLA_SCOPE, canonical)
    assert to_sign.splitlines() == [
        "AWS4-HMAC-SHA256",
        "20150830T123600Z",
        "20150830/us-east-1/service/aws4_request",
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
    ]
    key = sigv4.signing_key(EXAMPLE_SECRET, VANILLA_SCOPE)
    assert (
        sigv4.sign(key, to_sign)
        == "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_streaming_upload_example_chunk_chain() -> None:
    """The S3 aws-chunked example: a 66560-byte PUT in a 64 KiB chunk, a 1 KiB chunk and the
    final empty chunk, with the S3 documentation's example key."""
    scope = sigv4.Scope("20130524", "us-east-1", "s3")
    headers = {
        "content-encoding": ["aws-chunked"],
        "content-length": ["66824"],
        "host": ["s3.amazonaws.com"],
        "x-amz-content-sha256": [sigv4.STREAMING_SIGNED],
        "x-amz-date": ["20130524T000000Z"],
        "x-amz-decoded-content-length": ["66560"],
        "x-amz-storage-class": ["REDUCED_REDUNDANCY"],
    }
    canonical = sigv4.canonical_request(
        "PUT", "/examplebucket/chunkObject.txt", [], headers, sorted(headers),
        sigv4.STREAMING_SIGNED,
    )  # fmt: skip
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", scope)
    seed = sigv4.sign(key, sigv4.string_to_sign("20130524T000000Z", scope, canonical))
    assert seed == "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    signer = sigv4.ChunkSigner(key, "20130524T000000Z", scope, seed)
    expected = [
        "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
        "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
        "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
    ]
    for piece, signature in zip([b"a" * 65536, b"a" * 1024, b""], expected, strict=True):
        assert signer.verify_chunk(hashlib.sha256(piece).hexdigest(), signature)


def test_a_wrong_chunk_signature_breaks_the_chain() -> None:
    scope = sigv4.Scope("20130524", "us-east-1", "s3")
    signer = sigv4.ChunkSigner(b"k" * 32, "20130524T000000Z", scope, "0" * 64)
    assert not signer.verify_chunk(sigv4.EMPTY_SHA256, "f" * 64)


def test_canonical_query_is_sorted_and_encoded() -> None:
    pairs = sigv4.query_pairs("prefix=a%20b%2Fc&list-type=2&location&max-keys=5&b=%7E")
    assert sigv4.canonical_query(pairs) == ("b=~&list-type=2&location=&max-keys=5&prefix=a%20b%2Fc")
    assert sigv4.canonical_query(pairs, exclude="prefix") == "b=~&list-type=2&location=&max-keys=5"


def test_canonical_uri_encodes_each_segment_once() -> None:
    assert sigv4.canonical_uri("/bkt/a%20b/c+d/%C3%BC") == "/bkt/a%20b/c%2Bd/%C3%BC"
    assert sigv4.canonical_uri("") == "/"


@pytest.mark.parametrize(
    "header",
    [
        "AWS AKID:signature",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request",
        "AWS4-HMAC-SHA256 Credential=AKID/2015/us-east-1/s3/aws4_request, SignedHeaders=host, "
        "Signature=abc",
        "AWS4-HMAC-SHA256 Credential=AKID/20150830/us-east-1/s3/aws4_request, "
        "SignedHeaders=Host, Signature=abc",
        "AWS4-HMAC-SHA256 garbage",
    ],
)
def test_malformed_authorization_headers(header: str) -> None:
    with pytest.raises(S3Error) as raised:
        sigv4.parse_authorization(header)
    assert raised.value.code == "AuthorizationHeaderMalformed"


def test_clock_skew() -> None:
    when = sigv4.parse_amz_date("20240101T000000Z")
    sigv4.check_skew(when, when.timestamp() + 14 * 60)
    with pytest.raises(S3Error) as skewed:
        sigv4.check_skew(when, when.timestamp() - 16 * 60)
    assert skewed.value.code == "RequestTimeTooSkewed"


_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00/\r\n"), min_size=1, max_size=12
)


@settings(max_examples=60, deadline=None)
@given(
    segments=st.lists(_text, min_size=1, max_size=3),
    query=st.dictionaries(st.text(string.ascii_letters + "-_", min_size=1, max_size=8), _text,
                          max_size=4),
    meta=st.text(string.printable.strip() + " ", max_size=20),
)  # fmt: skip
def test_agrees_with_botocore(segments: list[str], query: dict[str, str], meta: str) -> None:
    """Whatever the path, query and header values, we compute botocore's signature."""
    path = "/bkt/" + "/".join(quote(s, safe="~") for s in segments)
    raw_query = "&".join(
        f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in query.items()
    )
    url = f"http://127.0.0.1:9000{path}" + (f"?{raw_query}" if raw_query else "")
    request = AWSRequest(
        method="PUT", url=url, headers={"X-Amz-Meta-Note": meta, "Host": "127.0.0.1:9000"}
    )
    request.context["payload_signing_enabled"] = False
    S3SigV4Auth(Credentials("AKID", EXAMPLE_SECRET), "s3", "us-east-1").add_auth(request)
    parsed = sigv4.parse_authorization(request.headers["Authorization"])
    headers = {k.lower(): [str(v)] for k, v in request.headers.items()}
    split = urlsplit(url)
    canonical = sigv4.canonical_request(
        "PUT",
        split.path,
        sigv4.query_pairs(split.query),
        headers,
        parsed.signed_headers,
        request.headers["X-Amz-Content-SHA256"],
    )
    amz_date = request.headers["X-Amz-Date"]
    to_sign = sigv4.string_to_sign(amz_date, parsed.credential.scope, canonical)
    key = sigv4.signing_key(EXAMPLE_SECRET, parsed.credential.scope)
    assert sigv4.sign(key, to_sign) == parsed.signature
