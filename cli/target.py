"""Where the cluster is, for every command that talks to it: endpoint, keys, region, CA.

``--endpoint URL`` with ``--access-key``/``--secret-key`` (or ``MINIGRID_ENDPOINT``,
``MINIGRID_ACCESS_KEY``, ``MINIGRID_SECRET_KEY``); otherwise the ``cluster.json`` in
``--data-dir``, ``$MINIGRID_DATA_DIR`` or ``./.minigrid``, whose first node that answers is
used (so a command still works while some nodes are down).

An https endpoint's certificate is verified against ``--tls-ca`` (``MINIGRID_TLS_CA``), else
the ``tls_ca`` that ``cluster up --tls`` recorded in ``cluster.json``, else the system's trust
store. Verification is never turned off.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import click

from cli.cluster import ClusterError, ClusterFile, command_hint, http_json, resolve_data_dir
from cli.s3client import S3, Endpoint

F = TypeVar("F", bound=Callable[..., Any])
PROBE_TIMEOUT = 1.0


@dataclass(frozen=True)
class Target:
    """Where to send requests, and the keys to sign them with."""

    endpoints: list[str]
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    #: The CA bundle https endpoints are verified against (None: the system's trust store).
    ca: str | None = None


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit (1: it failed; 2: the command line is wrong)."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def resolve_target(
    data_dir: str | None,
    endpoint: str | None,
    access_key: str | None,
    secret_key: str | None,
    *,
    admin: bool = False,
    ca: str | None = None,
) -> Target:
    """The endpoint(s) and keys, from the flags, the environment or cluster.json.

    ``admin``: the keys are the admin keys (``MINIGRID_ADMIN_ACCESS_KEY``, ...), which is what
    ``Target.access_key`` then holds."""
    prefix = "MINIGRID_ADMIN_" if admin else "MINIGRID_"
    key_prefix = "admin_" if admin else ""
    endpoint = endpoint or os.environ.get("MINIGRID_ENDPOINT")
    access_key = access_key or os.environ.get(prefix + "ACCESS_KEY")
    secret_key = secret_key or os.environ.get(prefix + "SECRET_KEY")
    folder = resolve_data_dir(data_dir)
    try:
        cluster = ClusterFile.load(folder)
    except ClusterError as exc:
        fail(str(exc))
    if cluster is None and (endpoint is None or not access_key or not secret_key):
        fail(
            f"no cluster found in {folder}: start one with '{command_hint('cluster up', folder)}'"
            f", or give --endpoint with --access-key and --secret-key"
        )
    if endpoint is not None:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            fail(f"--endpoint {endpoint!r} is not a URL: write it as http(s)://host:port", 2)
    config = cluster.config if cluster is not None else {}
    ca = ca or os.environ.get("MINIGRID_TLS_CA") or config.get("tls_ca") or None
    if ca is not None and not os.path.isfile(ca):
        fail(f"the CA bundle {ca} does not exist: give the cluster's CA file with --tls-ca", 2)
    return Target(
        endpoints=[endpoint] if endpoint else [str(n["url"]) for n in config["nodes"]],
        access_key=access_key or str(config[key_prefix + "access_key"]),
        secret_key=secret_key or str(config[key_prefix + "secret_key"]),
        region=str(config.get("region", "us-east-1")),
        ca=ca,
    )


def pick_endpoint(endpoints: list[str], ca: str | None = None) -> str:
    """The first endpoint that answers its liveness check (the only one, if just one)."""
    if len(endpoints) == 1:
        return endpoints[0]
    reasons = []
    for url in endpoints:
        status, body = http_json(url + "/minigrid/health/live", PROBE_TIMEOUT, ca)
        if status == 200:
            return url
        reasons.append(f"{url}: {body.get('reason') or f'HTTP {status}'}")
    fail(f"no node answers (is the cluster up?): {'; '.join(reasons)}")


tls_ca_option = click.option(
    "--tls-ca", default=None, metavar="PEM",
    help="verify https endpoints against this CA [env MINIGRID_TLS_CA; cluster.json's tls_ca]",
)  # fmt: skip


def connection_options(func: F) -> F:
    """The options that say where the cluster is; the command gets an ``s3`` argument."""

    @click.option("--data-dir", default=None, metavar="DIR",
                  help="the cluster's directory [env MINIGRID_DATA_DIR; ./.minigrid]")
    @click.option("--endpoint", default=None, metavar="URL",
                  help="an S3 endpoint instead of the local cluster [env MINIGRID_ENDPOINT]")
    @click.option("--access-key", default=None, help="[env MINIGRID_ACCESS_KEY]")
    @click.option("--secret-key", default=None, help="[env MINIGRID_SECRET_KEY]")
    @tls_ca_option
    @functools.wraps(func)
    def wrapper(data_dir: str | None, endpoint: str | None, access_key: str | None,
                secret_key: str | None, tls_ca: str | None, **kwargs: Any) -> Any:  # fmt: skip
        target = resolve_target(data_dir, endpoint, access_key, secret_key, ca=tls_ca)
        url = pick_endpoint(target.endpoints, target.ca)
        s3 = S3(Endpoint(url, target.access_key, target.secret_key, target.region, target.ca))
        return func(s3=s3, **kwargs)

    return wrapper  # type: ignore[return-value]


__all__ = ["Target", "connection_options", "fail", "pick_endpoint", "resolve_target",
           "tls_ca_option"]  # fmt: skip
