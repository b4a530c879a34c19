"""Node-to-node authentication: an HMAC bearer token derived from the cluster secret.

The token is ``v1.<host, base64url>.<unix ms>.<hex HMAC-SHA256>`` over the host and the
timestamp, keyed by a key derived from the cluster secret. The receiver checks the skew against
its own wall clock (the only wall-clock use in the grid: two machines share no other clock) and
compares the MAC in constant time. A token proves "someone holding the secret claimed this host
at this time"; the Connect message that follows must name the same host.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from typing import Final

MAX_SKEW_S: Final = 15 * 60.0
_CONTEXT: Final = b"minigrid grid token v1"


class TokenError(Exception):
    """The token is missing, malformed, stale or signed with another secret."""


def derive_key(secret: str | bytes) -> bytes:
    """Derive the token key, so the raw secret is never used as a MAC key for two things."""
    raw = secret.encode() if isinstance(secret, str) else secret
    if not raw:
        raise ValueError("the cluster secret must not be empty")
    return hmac.new(raw, _CONTEXT, hashlib.sha256).digest()


def _mac(key: bytes, host: str, stamp_ms: int) -> str:
    return hmac.new(key, f"{host}\n{stamp_ms}".encode(), hashlib.sha256).hexdigest()


def make_token(key: bytes, host: str, *, now: float | None = None) -> str:
    """Make a bearer token for ``host`` at wall-clock time ``now`` (default: now)."""
    stamp_ms = int((time.time() if now is None else now) * 1000)
    host_b64 = base64.urlsafe_b64encode(host.encode()).decode().rstrip("=")
    return f"v1.{host_b64}.{stamp_ms}.{_mac(key, host, stamp_ms)}"


def verify_token(
    key: bytes, token: str, *, now: float | None = None, max_skew: float = MAX_SKEW_S
) -> str:
    """Check a token and return the host it names; raise :class:`TokenError` saying why not."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != "v1":
        raise TokenError("malformed grid token")
    _, host_b64, stamp_text, mac = parts
    try:
        host = base64.urlsafe_b64decode(host_b64 + "=" * (-len(host_b64) % 4)).decode()
        stamp_ms = int(stamp_text)
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise TokenError("malformed grid token") from exc
    expected = _mac(key, host, stamp_ms)
    if not hmac.compare_digest(expected.encode(), mac.encode()):
        raise TokenError(f"bad token signature from {host!r} (is the cluster secret the same?)")
    skew = abs((time.time() if now is None else now) - stamp_ms / 1000)
    if skew > max_skew:
        raise TokenError(
            f"token from {host!r} is {skew:.0f}s away from our clock (limit {max_skew:.0f}s); "
            "check NTP on both nodes"
        )
    return host
