"""The node's recent events, kept in memory for the console's timeline.

A node already logs one line per event (a grid link going down with its cause, a reconnect, a
drive found blank, a heal finished, a fault injected). The journal is a logging handler that
keeps the last few hundred of those lines as structured events, numbered, so the console can
ask each node over the grid for "everything after number N" (``NODE_TOP`` with
``events_since``) and draw one timeline of the whole cluster. Nothing is logged twice and
nothing new is collected: the events *are* the log lines, with the fields the log call passed
with ``extra=`` (``cause``, ``handler``, ``subroute``, ...).

Each event has a ``kind`` the console colours it by: ``disconnect``, ``connect``, ``fault``,
``cancel`` (a stream given up on), ``heal``, ``stall``, ``console`` (a click in the console)
or ``log``.
"""

from __future__ import annotations

import collections
import logging
import secrets
from typing import Any, Final

CAPACITY = 500
#: Events one answer carries at most; the rest wait for the next question.
MAX_BATCH = 200
#: The packages whose log lines are events (not aiohttp's, not the libraries').
SOURCES: Final = ("minigrid", "storage", "heal", "node")
#: Fields of a log call's ``extra=`` that an event keeps.
FIELDS: Final = (
    "local", "remote", "cause", "cause_detail", "handler", "subroute", "last_seen_s",
    "peer_loop_lag_s", "state",
)  # fmt: skip
MAX_TEXT = 600


def event_kind(component: str, text: str, fields: dict[str, Any]) -> str:
    """What kind of event a log line is (see the module docstring)."""
    state = fields.get("state")
    if state == "connected":
        return "connect"
    if state in ("error", "shutdown", "unconnected"):
        return "disconnect"
    if fields.get("handler"):
        return "cancel"  # a stream cancelled for silence ("canceling remote connection ...")
    if component.startswith("node.console"):
        return "console"
    if component.startswith("node.faults") or text.startswith("fault:"):
        return "fault"
    if component.startswith(("heal", "node.healing")):
        return "heal"
    if "stalled" in text:
        return "stall"
    return "log"


class Journal:
    """A bounded ring of this process's recent events, numbered from 1."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        #: A new value every process start: a reader's position means nothing across restarts.
        self.epoch = secrets.token_hex(8)
        self.seq = 0
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def record(self, level: str, component: str, text: str, when: float,
               fields: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        """Add one event; returns it."""
        self.seq += 1
        fields = {k: v for k, v in (fields or {}).items() if v is not None}
        event = {
            "seq": self.seq, "time": when, "level": level, "component": component,
            "text": text[:MAX_TEXT], "kind": event_kind(component, text, fields),
            "fields": fields,
        }  # fmt: skip
        self._events.append(event)
        return event

    def since(self, seq: int, limit: int = MAX_BATCH) -> dict[str, Any]:
        """The events numbered after ``seq`` (at most ``limit``, oldest first), how many were
        lost to the ring's bound (``missed``), and this journal's ``epoch`` and ``seq``."""
        events = [event for event in self._events if event["seq"] > seq]
        first = events[0]["seq"] if events else self.seq + 1
        missed = max(0, first - seq - 1) if seq < self.seq else 0
        return {"epoch": self.epoch, "seq": self.seq, "missed": missed,
                "events": events[:limit]}  # fmt: skip


class JournalHandler(logging.Handler):
    """Feeds a :class:`Journal` from the log records of this project's packages."""

    def __init__(self, journal: Journal, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.journal = journal

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.split(".", 1)[0] not in SOURCES:
            return
        try:
            text = record.getMessage()
        except (TypeError, ValueError):  # a bad format string: keep the raw template
            text = str(record.msg)
        fields = {name: getattr(record, name, None) for name in FIELDS}
        self.journal.record(record.levelname.lower(), record.name, text, record.created, fields)


__all__ = ["CAPACITY", "Journal", "JournalHandler", "event_kind"]
