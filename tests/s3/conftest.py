"""Fixtures for the S3 gateway tests: one gateway server (HTTP and HTTPS) per session."""

from __future__ import annotations

import itertools
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.s3.helpers import GatewayServer, client

_names = itertools.count()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path] | None:
    """A self-signed certificate for 127.0.0.1, made with the openssl CLI (None without it)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return None
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path] | None
) -> Iterator[GatewayServer]:
    tls = None
    if tls_files is not None:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(str(tls_files[0]), str(tls_files[1]))
    gateway = GatewayServer(str(tmp_path_factory.mktemp("drives")), tls)
    gateway.start()
    yield gateway
    gateway.stop()


@pytest.fixture(scope="session")
def s3(server: GatewayServer) -> Iterator[Any]:
    """A boto3 client with the default configuration, over plain HTTP."""
    s3_client = client(server.url)
    yield s3_client
    s3_client.close()


@pytest.fixture(scope="session")
def s3_tls(server: GatewayServer, tls_files: tuple[Path, Path] | None) -> Iterator[Any]:
    """A default boto3 client over HTTPS: there boto3 sends aws-chunked bodies with a
    STREAMING-UNSIGNED-PAYLOAD-TRAILER and a CRC32 trailer."""
    if tls_files is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    s3_client = client(server.tls_url, verify=str(tls_files[0]))
    yield s3_client
    s3_client.close()


@pytest.fixture
def bucket(s3: Any) -> str:
    """A fresh, empty bucket."""
    name = f"bkt-{next(_names)}-{os.getpid()}"
    s3.create_bucket(Bucket=name)
    return name
