"""Signing in to the console: one-time links signed with the admin keys, then a session cookie.

Why a link and not a password form: the admin keys never cross the network (a SigV4 signature
does, as with every admin request), there is no password to type on a projector, and the
browser keeps no key, only a cookie it cannot read from script.

- **The link** is a SigV4 *presigned* ``GET /minigrid/console/login`` made with the admin keys
  (``minigrid console`` and ``cluster up`` print one): the node checks it with the same
  authenticator as every admin request. Its query also carries, signed, a random ``nonce`` and
  the node's grid ``instance`` (a fresh UUID each time the process starts). The node accepts a
  link once: it remembers used nonces until the link expires (at most
  :data:`MAX_LINK_SECONDS`), and a link made for an earlier run of the node names another
  instance, so a restart does not make a used link good again.
- **The session** is a random 256-bit token in an ``HttpOnly``, ``SameSite=Strict`` cookie
  scoped to ``/minigrid/console`` (``Secure`` under TLS), named after the node's port (cookies
  ignore ports; two consoles on one host must not overwrite each other's). The node keeps
  only its SHA-256. A session ends after :data:`SESSION_SECONDS` whatever happens, after
  :data:`IDLE_SECONDS` without a request (an open live page counts as use), on sign-out, and
  when the node restarts. At most :data:`MAX_SESSIONS` live at once; a new one pushes out the
  oldest.
- **Clicks** (``POST``) also need the session's CSRF token in a header and, when the browser
  sends one, an ``Origin`` equal to the node's own: ``SameSite`` alone would let another port
  of the same host (the same *site*) ride the cookie.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode, urlsplit

from aiohttp import web

from node.s3 import errors as s3_errors
from node.s3 import sigv4
from node.s3.auth import Authenticator

LOGIN_PATH = "/minigrid/console/login"
MAX_LINK_SECONDS = 3600
SESSION_SECONDS = 8 * 3600
IDLE_SECONDS = 3600
MAX_SESSIONS = 32
MAX_USED_NONCES = 4096
_NONCE = re.compile(r"^[0-9a-f]{32,64}$")


class LoginRefused(Exception):
    """A sign-in link that does not sign in; the message says why, for the person holding it."""


@dataclass
class Session:
    """One signed-in browser."""

    token_hash: str
    csrf: str
    created: float
    last_used: float


@dataclass
class Sessions:
    """The live sessions of one node's console (see the module docstring)."""

    clock: Callable[[], float] = time.monotonic
    lifetime: float = SESSION_SECONDS
    idle: float = IDLE_SECONDS
    capacity: int = MAX_SESSIONS
    _sessions: dict[str, Session] = field(default_factory=dict)

    def create(self) -> tuple[str, Session]:
        """A new session: ``(the cookie's token, the session)``."""
        self._expire()
        while len(self._sessions) >= self.capacity:
            oldest = min(self._sessions.values(), key=lambda s: s.created)
            del self._sessions[oldest.token_hash]
        token = secrets.token_urlsafe(32)
        now = self.clock()
        session = Session(_digest(token), secrets.token_urlsafe(24), now, now)
        self._sessions[session.token_hash] = session
        return token, session

    def find(self, token: str | None) -> Session | None:
        """The live session of a cookie's token (and note the use), or None."""
        if not token or len(token) > 128:
            return None
        session = self._sessions.get(_digest(token))
        if session is None or not self.alive(session):
            self._expire()
            return None
        session.last_used = self.clock()
        return session

    def alive(self, session: Session) -> bool:
        now = self.clock()
        return (session.token_hash in self._sessions and now - session.created < self.lifetime
                and now - session.last_used < self.idle)  # fmt: skip

    def end(self, session: Session) -> None:
        self._sessions.pop(session.token_hash, None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _expire(self) -> None:
        for token_hash, session in list(self._sessions.items()):
            if not self.alive(session):
                del self._sessions[token_hash]


class LoginLinks:
    """Checks one-time sign-in links (see the module docstring)."""

    def __init__(self, authenticator: Authenticator, instance: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._auth = authenticator
        self._instance = instance
        self._clock = clock
        self._used: dict[str, float] = {}  # nonce -> when it can be forgotten (monotonic)

    def redeem(self, request: web.Request) -> None:
        """Accept the link this request carries, once; raise :class:`LoginRefused` otherwise."""
        query = request.rel_url.query
        nonce, instance = query.get("nonce", ""), query.get("instance", "")
        if "X-Amz-Signature" not in query:
            raise LoginRefused("this is not a sign-in link: get one with 'minigrid console'")
        try:
            expires = int(query.get("X-Amz-Expires", ""))
        except ValueError:
            raise LoginRefused("the link has no valid X-Amz-Expires") from None
        if not 0 < expires <= MAX_LINK_SECONDS:
            raise LoginRefused(f"a sign-in link may live at most {MAX_LINK_SECONDS} s")
        if not _NONCE.match(nonce):
            raise LoginRefused("the link has no valid nonce")
        try:
            self._auth.authenticate(request)
        except s3_errors.S3Error as exc:
            raise LoginRefused(f"the link's signature is not valid: {exc.message}") from None
        if not hmac.compare_digest(instance.encode(), self._instance().encode()):
            raise LoginRefused("the link was made for an earlier run of this node: get a new "
                               "one with 'minigrid console'")  # fmt: skip
        self._remember(nonce, expires)

    def _remember(self, nonce: str, expires: int) -> None:
        now = self._clock()
        for old, until in list(self._used.items()):
            if until <= now:
                del self._used[old]
        if nonce in self._used:
            raise LoginRefused("this link was used already: each sign-in link works once")
        if len(self._used) >= MAX_USED_NONCES:
            raise LoginRefused("too many sign-ins in the last hour; try again later")
        # Forget it only once no clock could still accept the link (its expiry plus the skew
        # SigV4 allows for a date in the future).
        self._used[nonce] = now + expires + 15 * 60


def login_link(url: str, instance: str, access_key: str, secret_key: str, region: str,
               expires: int = 900, now: dt.datetime | None = None) -> str:  # fmt: skip
    """A one-time sign-in link to the console of the node at ``url`` (its base URL), whose
    current grid instance is ``instance`` (``admin info``'s ``node.grid_instance``)."""
    if not 0 < expires <= MAX_LINK_SECONDS:
        raise ValueError(f"a sign-in link may live 1-{MAX_LINK_SECONDS} s, not {expires}")
    parts = urlsplit(url)
    query = {"nonce": secrets.token_hex(16), "instance": instance}
    signed = sigv4.presign_query("GET", parts.netloc, LOGIN_PATH, query, access_key, secret_key,
                                 region, now or dt.datetime.now(dt.UTC), expires)  # fmt: skip
    return f"{parts.scheme}://{parts.netloc}{LOGIN_PATH}?" + urlencode(
        signed, quote_via=lambda text, *_: sigv4.uri_encode(str(text)))  # fmt: skip


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


__all__ = [
    "IDLE_SECONDS",
    "LOGIN_PATH",
    "MAX_LINK_SECONDS",
    "LoginLinks",
    "LoginRefused",
    "Session",
    "Sessions",
    "login_link",
]
