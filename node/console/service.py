"""The console service: ``/minigrid/console``, a live page of the cluster, on every node.

Routes (all public paths, each checking the console session itself; nothing but the sign-in
page and the sign-in link is answered without a session):

| route | what |
|---|---|
| ``GET /minigrid/console`` | the page (signed in), else the sign-in page (401) |
| ``GET /minigrid/console/login?...`` | redeem a one-time link: a session cookie, 303 to the page |
| ``POST /minigrid/console/logout`` | end the session |
| ``GET /minigrid/console/static/NAME`` | the page's script and style sheet |
| ``GET /minigrid/console/feed`` | the live picture, as server-sent events (``event: state``) |
| ``POST /minigrid/console/action`` | a click, JSON ``{"action": ...}`` (:mod:`.actions`) |

Every answer carries a Content-Security-Policy that allows only this node's own script, style
and connections and forbids framing (``frame-ancestors 'none'``, and ``X-Frame-Options:
DENY`` for old browsers), ``no-store`` caching and ``no-referrer``. The page needs nothing
from anywhere else: no CDN, no fonts, no build step.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import html
import json
import re
import ssl
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from aiohttp import web

from node.config import NodeConfig
from node.console.actions import ActionError, Actions, AdminCaller, Planner
from node.console.feed import Feed, Snapshots
from node.console.sessions import LOGIN_PATH, LoginLinks, LoginRefused, Session, Sessions
from node.s3.auth import Authenticator
from node.services import Route, Routes

PREFIX: Final = "/minigrid/console"
CSRF_HEADER: Final = "X-Console-CSRF"
KEEPALIVE = 15.0
MAX_ACTION_BODY = 4096
STATIC: Final = {"console.js": "text/javascript", "console.css": "text/css"}
_STYLE = re.compile(r"<style>(.*?)</style>", re.S)


def _load(name: str) -> str:
    return (resources.files("node.console") / "static" / name).read_text("utf-8")


def _style_hash(page: str) -> str:
    match = _STYLE.search(page)
    digest = hashlib.sha256(match.group(1).encode() if match else b"").digest()
    return "'sha256-" + base64.b64encode(digest).decode() + "'"


def _faults_off(allowed: bool, built: bool) -> str:
    """Why the fault buttons are disabled ("" when they are not)."""
    if not allowed:
        return ("fault injection is off: start the cluster with --allow-faults to use these "
                "buttons (the nodes would refuse them)")  # fmt: skip
    if not built:
        return "this node has no fault endpoints (it was built without the fault service)"
    return ""


class ConsoleService:
    """The console of one node (see the module docstring)."""

    name = "console"

    def __init__(self, config: NodeConfig, snapshots: Snapshots,
                 drives: Callable[[], Awaitable[list[dict[str, Any]]]],
                 instance: Callable[[], str], client_tls: ssl.SSLContext | None = None,
                 interval: float = 1.0, faults_built: bool = True) -> None:  # fmt: skip
        self.config = config
        hosts = [spec.host for spec in config.nodes]
        self.feed = Feed(snapshots, drives, hosts, config.host, interval)
        self.sessions = Sessions()
        authenticator = Authenticator({config.admin_access_key: config.admin_secret_key},
                                      config.region, time.time)  # fmt: skip
        self.links = LoginLinks(authenticator, instance)
        caller = AdminCaller([spec.url for spec in config.nodes], config.admin_access_key,
                             config.admin_secret_key, config.region, client_tls)  # fmt: skip
        self.actions = Actions(Planner(hosts, [len(s.drives) for s in config.nodes],
                                       config.node), caller)  # fmt: skip
        self.cookie = f"minigrid_console_{urlsplit(config.me.url).port or 0}"
        self._stopping = asyncio.Event()
        self._pages: dict[str, str] = {}
        self._static: dict[str, bytes] = {}
        self._csp = ""
        self._cluster = {
            "hosts": hosts, "me": config.node,
            "faults": config.allow_faults and faults_built,
            "faults_off": _faults_off(config.allow_faults, faults_built),
            "drives": [list(spec.drives) for spec in config.nodes],
            "profile": config.profile, "tls": config.tls,
        }  # fmt: skip

    async def start(self) -> None:
        self._pages = {name: _load(name) for name in ("index.html", "signin.html")}
        self._static = {name: _load(name).encode() for name in STATIC}
        self._csp = (
            "default-src 'none'; script-src 'self'; "
            f"style-src 'self' {_style_hash(self._pages['signin.html'])}; img-src 'self' data:; "
            "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        )

    def stop_streams(self) -> None:
        """End every open feed (the node is shutting down)."""
        self._stopping.set()
        for reader in self.feed.readers:
            reader.wake.set()

    async def close(self) -> None:
        self.stop_streams()
        await self.feed.close()
        await self.actions.close()

    def routes(self) -> Routes:
        return Routes(public=[
            Route("GET", PREFIX, self.page),
            Route("GET", PREFIX + "/", self.slash),
            Route("GET", LOGIN_PATH, self.login),
            Route("POST", PREFIX + "/logout", self.logout),
            Route("GET", PREFIX + "/static/{name}", self.static),
            Route("GET", PREFIX + "/feed", self.feed_route),
            Route("POST", PREFIX + "/action", self.action),
            Route("*", PREFIX + "/{rest:.*}", self.unknown),
        ])  # fmt: skip

    def info(self) -> dict[str, Any]:
        return {"console": {"sessions": len(self.sessions), "pages": len(self.feed.readers)}}

    # --- answers ------------------------------------------------------------------------------

    def _secure(self, response: web.StreamResponse) -> web.StreamResponse:
        headers = response.headers
        headers["Content-Security-Policy"] = self._csp
        headers["X-Frame-Options"] = "DENY"
        headers["X-Content-Type-Options"] = "nosniff"
        headers["Referrer-Policy"] = "no-referrer"
        headers["Cache-Control"] = "no-store"
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
        headers["Cross-Origin-Resource-Policy"] = "same-origin"
        return response

    def _html(self, text: str, status: int = 200) -> web.StreamResponse:
        return self._secure(web.Response(text=text, status=status, content_type="text/html"))

    def _json(self, value: Any, status: int = 200) -> web.StreamResponse:
        return self._secure(web.json_response(value, status=status))

    def _signin(self, message: str, status: int) -> web.StreamResponse:
        page = self._pages["signin.html"].replace("{{message}}", html.escape(message))
        page = page.replace("{{node}}", html.escape(self.config.me.url))
        return self._html(page, status)

    def _session(self, request: web.Request) -> Session | None:
        return self.sessions.find(request.cookies.get(self.cookie))

    def _set_cookie(self, response: web.StreamResponse, token: str, max_age: int) -> None:
        response.set_cookie(self.cookie, token, path=PREFIX, max_age=max_age, httponly=True,
                            samesite="Strict", secure=self.config.tls)  # fmt: skip

    # --- routes -------------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._signin("Open a sign-in link to see the cluster.", 401)
        page = self._pages["index.html"].replace("{{csrf}}", html.escape(session.csrf))
        return self._html(page)

    async def slash(self, _request: web.Request) -> web.StreamResponse:
        return self._secure(web.HTTPPermanentRedirect(PREFIX))

    async def unknown(self, request: web.Request) -> web.StreamResponse:
        return self._json({"error": f"no console page {request.path}", "code": "NotFound"}, 404)

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            self.links.redeem(request)
        except LoginRefused as exc:
            return self._signin(f"That link does not sign in: {exc}.", 403)
        token, _session = self.sessions.create()
        response = web.HTTPSeeOther(PREFIX)
        self._set_cookie(response, token, int(self.sessions.lifetime))
        return self._secure(response)

    async def logout(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None or not self._same_origin(request, session):
            return self._json({"error": "not signed in", "code": "Unauthenticated"}, 401)
        self.sessions.end(session)
        response = self._json({"signed_out": True})
        response.del_cookie(self.cookie, path=PREFIX)
        return response

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if self._session(request) is None:
            return self._json({"error": "sign in first", "code": "Unauthenticated"}, 401)
        if name not in self._static:
            return self._json({"error": f"no file {name!r}", "code": "NotFound"}, 404)
        return self._secure(web.Response(body=self._static[name], content_type=STATIC[name],
                                         charset="utf-8"))  # fmt: skip

    def _same_origin(self, request: web.Request, session: Session) -> bool:
        """A click must carry the session's CSRF token, and come from this origin."""
        token = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(token.encode(), session.csrf.encode()):
            return False
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    async def action(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._json({"error": "sign in first", "code": "Unauthenticated"}, 401)
        if not self._same_origin(request, session):
            return self._json({"error": "a click must come from this console's own page",
                               "code": "Forbidden"}, 403)  # fmt: skip
        if request.content_type != "application/json" or (request.content_length or 0) > \
                MAX_ACTION_BODY:  # fmt: skip
            return self._json({"error": "send a small JSON object", "code": "BadRequest"}, 400)
        try:
            params = json.loads(await request.content.read(MAX_ACTION_BODY))
            if not isinstance(params, dict):
                raise ActionError("send a JSON object")
            result = await self.actions.run(params)
        except (ValueError, ActionError) as exc:  # ActionError is a ValueError, as is bad JSON
            return self._json({"error": str(exc), "code": "InvalidArgument"}, 400)
        return self._json(result)

    async def feed_route(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request)
        if session is None:
            return self._json({"error": "sign in first", "code": "Unauthenticated"}, 401)
        response = self._secure(web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}))  # fmt: skip
        await response.prepare(request)
        reader = self.feed.subscribe()
        try:
            await self._stream(response, reader, session)
        except ConnectionError:
            pass  # the page closed
        finally:
            await self.feed.unsubscribe(reader)
        return response

    async def _stream(self, response: web.StreamResponse, reader: Any, session: Session) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEEPALIVE):
                    await reader.wake.wait()
            if self._stopping.is_set():
                break
            if not self.sessions.alive(session):
                await response.write(b"event: signed-out\ndata: {}\n\n")
                break
            session.last_used = self.sessions.clock()  # an open page is a page in use
            if not reader.wake.is_set():
                await response.write(b": keep-alive\n\n")
                continue
            reader.wake.clear()
            frame = self.feed.frame(reader)
            frame["cluster"] = self._cluster
            data = json.dumps(frame, separators=(",", ":"), default=str)
            await response.write(f"event: state\ndata: {data}\n\n".encode())


__all__ = ["CSRF_HEADER", "PREFIX", "ConsoleService"]
