"""Signed JSON calls to the nodes' admin API, for the fault and lab commands.

One place that knows how admin requests are signed (the admin SigV4 keys of ``cluster.json``),
so the fault and lab commands do not depend on how the object commands talk S3.
"""

from __future__ import annotations

import json
from typing import Any

from cli.cluster import ClusterFile
from cli.errors import S3ClientError, describe
from cli.signed import SignedClient

ADMIN_PREFIX = "/minigrid/admin/v1"


class AdminError(Exception):
    """A node refused an admin call or did not answer; the message says which and why."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class AdminClient:
    """Admin calls to the nodes of one local cluster, by node index."""

    def __init__(self, cluster: ClusterFile, timeout: float = 5.0) -> None:
        config = cluster.config
        self.urls = cluster.urls
        self._clients = [
            SignedClient(url, str(config["admin_access_key"]), str(config["admin_secret_key"]),
                         region=str(config.get("region", "us-east-1")), timeout=timeout,
                         ca=cluster.ca)
            for url in self.urls
        ]

    def call(self, node: int, method: str, path: str, **query: Any) -> dict[str, Any]:
        """``method ADMIN_PREFIX+path?query`` on node ``node``: the JSON answer."""
        params = {name: str(value) for name, value in query.items() if value is not None}
        try:
            raw = self._clients[node].call(method, ADMIN_PREFIX + path, params)
        except S3ClientError as exc:
            raise AdminError(f"node {node} ({self.urls[node]}): {describe(exc)}", exc.code,
                             exc.status) from exc  # fmt: skip
        except OSError as exc:
            raise AdminError(f"node {node} ({self.urls[node]}): no answer: {exc}") from exc
        try:
            answer: dict[str, Any] = json.loads(raw or b"{}")
        except ValueError as exc:
            raise AdminError(f"node {node}: not JSON: {exc}") from exc
        return answer

    def lines(self, node: int, method: str, path: str, **query: Any) -> list[dict[str, Any]]:
        """An admin call that answers JSON lines (``POST /heal``): every line, parsed."""
        params = {name: str(value) for name, value in query.items() if value is not None}
        try:
            raw = self._clients[node].call(method, ADMIN_PREFIX + path, params)
        except S3ClientError as exc:
            raise AdminError(f"node {node}: {describe(exc)}", exc.code, exc.status) from exc
        except OSError as exc:
            raise AdminError(f"node {node} ({self.urls[node]}): no answer: {exc}") from exc
        try:
            return _split_lines(raw)
        except ValueError as exc:
            raise AdminError(f"node {node}: not JSON lines: {exc}") from exc


def _split_lines(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


__all__ = ["ADMIN_PREFIX", "AdminClient", "AdminError"]
