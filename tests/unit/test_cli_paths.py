"""The CLI's pure parts: remote and local paths, where a copy writes, durations, hints, and how
boto3's errors become the CLI's (no sockets)."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, SSLError

from cli.cluster import command_hint
from cli.locations import (
    Local,
    Remote,
    UsageError,
    parse_location,
    parse_remote,
    safe_relative,
    single,
)
from cli.objects import parse_duration
from cli.s3client import translate


def test_remote_paths_with_or_without_the_scheme() -> None:
    assert parse_remote("b/k/x") == Remote("b", "k/x")
    assert parse_remote("s3://b/k/") == Remote("b", "k/")
    assert parse_remote("/b") == Remote("b", "")
    assert parse_location("s3://b") == Remote("b", "")
    assert parse_location("b/k") == Local("b/k")  # in cp, only s3:// is remote
    assert parse_location("-") == Local("-")
    with pytest.raises(UsageError, match="does not name a bucket"):
        parse_remote("s3://")
    with pytest.raises(UsageError, match="does not name an object"):
        parse_remote("b", need_key=True)


def test_where_a_single_copy_writes(tmp_path: Path) -> None:
    source = tmp_path / "photo.jpg"
    source.write_bytes(b"x")
    folder = tmp_path / "folder"
    folder.mkdir()
    into = single(Local(str(source)), Remote("b", "")).dest
    assert into == Remote("b", "photo.jpg")
    assert single(Local(str(source)), Remote("b", "p/")).dest == Remote("b", "p/photo.jpg")
    assert single(Local(str(source)), Remote("b", "p")).dest == Remote("b", "p")
    down = single(Remote("b", "a/c.txt"), Local(str(folder))).dest
    assert down == Local(os.path.join(folder, "c.txt"))  # an existing directory
    fresh = single(Remote("b", "a/c.txt"), Local(str(tmp_path / "new") + "/")).dest
    assert fresh == Local(os.path.join(tmp_path / "new", "c.txt"))  # a trailing slash
    assert single(Remote("b", "a/c.txt"), Local("-")).dest == Local("-")
    assert single(Remote("b", "a/c.txt"), Remote("d", "")).dest == Remote("d", "c.txt")
    with pytest.raises(UsageError, match="both the source and the target"):
        single(Remote("b", "k"), Remote("b", "k"))
    with pytest.raises(UsageError, match="names a directory"):
        single(Remote("b", "dir/"), Local(str(folder)))
    with pytest.raises(UsageError, match="is a directory: add -r"):
        single(Local(str(folder)), Remote("b", ""))


def test_keys_never_leave_the_target_directory() -> None:
    assert safe_relative("a/b/c.txt") == os.path.join("a", "b", "c.txt")
    assert safe_relative("dir/") == "dir"
    for key in ("../escape", "a/../../b", "a//b", "./a", "/abs", "", "a/./b", "a\0b"):
        assert safe_relative(key) is None, key


def test_durations() -> None:
    assert parse_duration("90") == 90
    assert parse_duration("15m") == 900
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == 604800
    for wrong in ("0", "8d", "604801", "soon", "1y", "-5m", ""):
        with pytest.raises(click.BadParameter):
            parse_duration(wrong)


def test_hints_name_a_data_dir_that_is_not_the_default(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert command_hint("cluster down", tmp_path / ".minigrid") == "minigrid cluster down"
    spaced = tmp_path / "my data"
    assert command_hint("cluster down", spaced) == f"minigrid cluster down --data-dir '{spaced}'"


def test_boto_errors_become_s3_codes() -> None:
    bare_404 = ClientError({"Error": {"Code": "404", "Message": "Not Found"},
                            "ResponseMetadata": {"HTTPStatusCode": 404}}, "HeadObject")
    assert (translate(bare_404, "u") or pytest.fail()).code == "NotFound"
    named = ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"},
                         "ResponseMetadata": {"HTTPStatusCode": 404}}, "GetObject")
    error = translate(named, "u")
    assert error is not None and (error.code, error.status) == ("NoSuchKey", 404)
    refused = translate(EndpointConnectionError(endpoint_url="http://h:1"), "http://h:1")
    assert refused is not None and refused.code == "Unreachable"
    untrusted = translate(SSLError(endpoint_url="https://h:1", error="[SSL: CERTIFICATE_VERIFY_"
                                   "FAILED] certificate verify failed: self-signed (_ssl.c:1)"),
                          "https://h:1")  # fmt: skip
    assert untrusted is not None and untrusted.code == "TLSVerifyFailed"
    assert "--tls-ca" in untrusted.message
    assert translate(ValueError("not ours"), "u") is None
