"""The node's log: one line per event, as readable text or as JSON objects.

``--log-format json`` (``log_format``, ``MINIGRID_LOG_FORMAT``) writes one JSON object per line
for log pipelines (Loki, Elasticsearch, ``jq``). The formatting is python-json-logger's, a
maintained formatter for the standard ``logging`` module, so every existing log call works
unchanged. Every line has:

- ``time``: ISO 8601 in UTC; ``level``: ``info``, ``warning``, ...;
- ``node``: this node's host string; ``component``: the logger (``minigrid.grid``, ``node``,
  ``node.s3``, ``heal.mrf``, ...);
- ``event``: what happened, in words (the same text as the text format);
- the structured fields the log call passed with ``extra=``. A peer disconnect carries
  ``local``, ``remote``, ``cause`` (its kind: ``network-silent``, ``remote-stalled``, ...),
  ``cause_detail``, ``handler`` and ``subroute`` (of a cancelled stream, else null),
  ``last_seen_s`` and ``peer_loop_lag_s``;
- ``exc_info`` for a traceback (a real bug only).
"""

from __future__ import annotations

import logging
from typing import Any

from pythonjsonlogger.json import JsonFormatter

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = "%(levelname)s %(name)s %(message)s"
_RENAMED = {"levelname": "level", "name": "component", "message": "event"}


class NodeJsonFormatter(JsonFormatter):
    """JSON lines with the node's field names (see the module docstring)."""

    def __init__(self, node: str) -> None:
        super().__init__(
            _JSON_FIELDS,
            rename_fields=_RENAMED,
            static_fields={"node": node},
            timestamp="time",
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        log_data["level"] = str(log_data.get("level", "")).lower()
        return log_data


def formatter(log_format: str, node: str) -> logging.Formatter:
    """The formatter for ``log_format`` (``text`` or ``json``) on node ``node``."""
    if log_format == "json":
        return NodeJsonFormatter(node)
    return logging.Formatter(TEXT_FORMAT)


__all__ = ["TEXT_FORMAT", "NodeJsonFormatter", "formatter"]
