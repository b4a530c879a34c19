"""One S3 request being served: what admission decided, and what the handlers need."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp import web
from multidict import CIMultiDict

from node.s3 import routes as s3_routes
from node.s3.auth import Authenticated
from node.s3.body import BodyPlan


@dataclass
class Call:
    """One request being served: what admission decided, and what the handler needs."""

    request: web.Request
    request_id: str
    bucket: str
    key: str
    route: s3_routes.Route | None = None
    auth: Authenticated | None = None
    plan: BodyPlan | None = None
    refused: Exception | None = None

    @property
    def owner(self) -> str:
        """The access key that signed the request (listings name it as the owner)."""
        return self.auth.access_key if self.auth is not None else ""

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.rel_url.query

    def headers(self, extra: Mapping[str, str] | None = None) -> CIMultiDict[str]:
        headers: CIMultiDict[str] = CIMultiDict()
        headers["x-amz-request-id"] = self.request_id
        headers["x-amz-id-2"] = self.request_id
        headers["Server"] = "minigrid"
        headers.update(extra or {})
        return headers

    def describe(self) -> str:
        """``PUT /b/k?tagging`` for log lines (the query cut short)."""
        query = self.request.rel_url.raw_query_string
        where = self.request.rel_url.raw_path + (f"?{query[:120]}" if query else "")
        return f"{self.request.method} {where[:300]}"
