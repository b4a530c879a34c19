"""The cluster as the console draws it: pure bookkeeping over ``top`` snapshots, no I/O.

:class:`Picture` takes each cluster-wide snapshot (every node's ``top``, asked over the grid by
:class:`~node.observe.ObserveService`, with its journal) and the drive reports, and keeps what
a live page needs: each node's loop-lag history, one state per grid *link* (a pair of nodes,
seen from both ends), S3 rates from the nodes' counters, the merged timeline, and per-drive
heal progress. The rules that decide what a learner sees are here, each in one place:

- :func:`link_state`: a link is **connected** when every end that answered says so;
  **down** when an end has lost its session (or failed to dial) and has none now, even while
  that end redials; **connecting** while the first session is being set up; **unknown** when
  neither end answered.
- :func:`percentile`: S3 latency percentiles from histogram bucket counts (an upper bound).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

HISTORY = 90  # samples kept per series (one per tick: about a minute and a half)
TIMELINE = 400  # events kept for the page
RATE_WINDOW = 5  # ticks the S3 rates and latency are averaged over
_DOWN_STATES = frozenset({"error", "shutdown"})


def link_state(views: Sequence[Mapping[str, Any]]) -> str:
    """The state of one link from the views of the ends that answered (``state``, ``cause``)."""
    if not views:
        return "unknown"
    if all(view.get("state") == "connected" for view in views):
        return "connected"
    for view in views:
        if view.get("state") in _DOWN_STATES:
            return "down"
        if view.get("state") != "connected" and view.get("cause"):
            return "down"
    return "connecting"


def percentile(bounds: Sequence[float], counts: Sequence[float], total: float,
               fraction: float) -> float | None:  # fmt: skip
    """The smallest bucket bound under which ``fraction`` of ``total`` observations fall
    (``counts`` are cumulative per bound, as Prometheus keeps them, and leave out those past
    the last bound); None without observations, ``inf`` when past the last bound."""
    if total <= 0:
        return None
    wanted = fraction * total
    for bound, count in zip(bounds, counts, strict=True):
        if count >= wanted:
            return bound
    return float("inf")


@dataclass
class S3Rates:
    """S3 request and byte rates, and latency percentiles, from each node's cumulative counters."""

    window: int = RATE_WINDOW
    _last: dict[str, tuple[float, Mapping[str, Any]]] = field(default_factory=dict)
    _ticks: collections.deque[dict[str, Any]] = field(
        default_factory=lambda: collections.deque(maxlen=RATE_WINDOW))
    history: collections.deque[float] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY))

    def update(self, when: float, readings: Mapping[str, Mapping[str, Any]]) -> None:
        """One tick: ``readings`` is node key (host and pid) -> its ``s3`` totals at ``when``."""
        tick: dict[str, Any] = {"seconds": 0.0, "requests": 0, "errors": 0, "received": 0,
                                "sent": 0, "counts": None, "le": None, "observed": 0}  # fmt: skip
        elapsed = []
        for key, now in readings.items():
            previous = self._last.get(key)
            self._last[key] = (when, now)
            if previous is None or now["requests"] < previous[1]["requests"]:
                continue  # a first reading, or the node restarted: no rate yet
            then, before = previous
            elapsed.append(when - then)
            tick["requests"] += now["requests"] - before["requests"]
            tick["errors"] += now["errors"] - before["errors"]
            tick["received"] += now["received_bytes"] - before["received_bytes"]
            tick["sent"] += now["sent_bytes"] - before["sent_bytes"]
            tick["observed"] += now["latency_total"] - before["latency_total"]
            delta = [a - b for a, b in zip(now["latency_counts"], before["latency_counts"],
                                           strict=True)]  # fmt: skip
            tick["le"] = now["latency_le"]
            tick["counts"] = delta if tick["counts"] is None else [
                a + b for a, b in zip(tick["counts"], delta, strict=True)]  # fmt: skip
        for key in [k for k in self._last if k not in readings]:
            del self._last[key]
        tick["seconds"] = max(elapsed) if elapsed else 0.0
        self._ticks.append(tick)
        self.history.append(round(tick["requests"] / tick["seconds"], 2) if tick["seconds"] else 0)

    def summary(self) -> dict[str, Any]:
        """Rates over the last few ticks: requests, errors and bytes per second, p50 and p99."""
        seconds = sum(t["seconds"] for t in self._ticks)
        rate = (lambda n: round(n / seconds, 2)) if seconds else (lambda _n: 0.0)
        counts: list[float] | None = None
        bounds: list[float] = []
        for tick in self._ticks:
            if tick["counts"] is not None:
                bounds = tick["le"]
                counts = tick["counts"] if counts is None else [
                    a + b for a, b in zip(counts, tick["counts"], strict=True)]  # fmt: skip
        observed = sum(t["observed"] for t in self._ticks)
        return {
            "requests_per_s": rate(sum(t["requests"] for t in self._ticks)),
            "errors_per_s": rate(sum(t["errors"] for t in self._ticks)),
            "received_per_s": rate(sum(t["received"] for t in self._ticks)),
            "sent_per_s": rate(sum(t["sent"] for t in self._ticks)),
            **_latency("p50", bounds, _pct(bounds, counts, observed, 0.5)),
            **_latency("p99", bounds, _pct(bounds, counts, observed, 0.99)),
            "history": list(self.history),
        }


def _pct(bounds: Sequence[float], counts: Sequence[float] | None, observed: float,
         fraction: float) -> float | None:  # fmt: skip
    return percentile(bounds, counts, observed, fraction) if counts else None


def _latency(name: str, bounds: Sequence[float], value: float | None) -> dict[str, Any]:
    """``{name_s: value}``, and ``name_over: True`` when it is past the last bound (JSON has
    no infinity: the value is then that bound)."""
    if value is not None and math.isinf(value):
        return {f"{name}_s": bounds[-1], f"{name}_over": True}
    return {f"{name}_s": value, f"{name}_over": False}


@dataclass
class Cursor:
    """How far the console has read one node's journal."""

    epoch: str = ""
    seq: int = 0


class Picture:
    """Everything the page shows, updated tick by tick (see the module docstring)."""

    def __init__(self, hosts: Sequence[str], me: str) -> None:
        self.hosts = list(hosts)
        self.me = me
        self.index = {host: i for i, host in enumerate(self.hosts)}
        self.nodes: list[dict[str, Any]] = [
            {"index": i, "host": h, "state": "unknown", "error": ""} for i, h in enumerate(hosts)
        ]
        self.lag: dict[str, collections.deque[float | None]] = {
            host: collections.deque(maxlen=HISTORY) for host in self.hosts
        }
        self.links: list[dict[str, Any]] = []
        self._link_since: dict[tuple[int, int], tuple[str, float]] = {}
        self.cursors: dict[str, Cursor] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=TIMELINE)
        self.event_seq = 0
        self.missed = 0
        self.s3 = S3Rates()
        self.drives: list[dict[str, Any]] = []
        self.time = 0.0

    # --- input --------------------------------------------------------------------------------

    def events_since(self) -> dict[str, int]:
        """What to ask each node's journal for (the ``events_since`` of a snapshot)."""
        return {host: cursor.seq for host, cursor in self.cursors.items()}

    def update(self, snapshot: Mapping[str, Any]) -> None:
        """Take one cluster snapshot (:meth:`ObserveService.snapshot` with events)."""
        self.time = float(snapshot.get("time", 0.0))
        answers = {}
        for answer in snapshot.get("nodes", []):
            host = _host_of(answer)
            if host in self.index:
                answers[host] = answer
        self._update_nodes(answers)
        self._update_links(answers)
        self.s3.update(self.time, {
            f"{host}#{a.get('pid')}": a["s3"] for host, a in answers.items()
            if "error" not in a and isinstance(a.get("s3"), dict)
        })  # fmt: skip
        self._take_events(answers)

    def _update_nodes(self, answers: Mapping[str, Mapping[str, Any]]) -> None:
        for host, node in zip(self.hosts, self.nodes, strict=True):
            answer = answers.get(host, {"error": "no answer"})
            if "error" in answer:
                node.update(state="unreachable", error=str(answer["error"]), ready=None,
                            loop_lag_s=None)  # fmt: skip
                self.lag[host].append(None)
                continue
            node.update(
                state="up", error="", ready=answer.get("ready"),
                loop_lag_s=answer.get("loop_lag_s"), loop_stall_s=answer.get("loop_stall_s"),
                uptime_s=answer.get("uptime_s"), pid=answer.get("pid"),
                s3_inflight=answer.get("s3_inflight"), drives_online=answer.get("drives_online"),
                drives=answer.get("drives"), heal=answer.get("heal"),
            )  # fmt: skip
            self.lag[host].append(answer.get("loop_lag_s"))
        for host, node in zip(self.hosts, self.nodes, strict=True):
            node["lag_history"] = list(self.lag[host])

    def _update_links(self, answers: Mapping[str, Mapping[str, Any]]) -> None:
        views: dict[tuple[int, int], list[dict[str, Any]]] = collections.defaultdict(list)
        for host, answer in answers.items():
            for link in answer.get("links", []) if "error" not in answer else []:
                peer = link.get("peer")
                if peer not in self.index:
                    continue
                a, b = sorted((self.index[host], self.index[peer]))
                views[(a, b)].append({"from": self.index[host], **link})
        links = []
        count = len(self.hosts)
        for a in range(count):
            for b in range(a + 1, count):
                links.append(self._link(a, b, views.get((a, b), [])))
        self.links = links

    def _link(self, a: int, b: int, views: list[dict[str, Any]]) -> dict[str, Any]:
        state = link_state(views)
        since_state, since = self._link_since.get((a, b), ("", self.time))
        if state != since_state:
            since = self.time
            self._link_since[(a, b)] = (state, since)
        connected = [v for v in views if v.get("state") == "connected"]
        rtts = [v["rtt_s"] for v in connected if v.get("rtt_s") is not None]
        seen = [v["last_seen_s"] for v in views if v.get("last_seen_s") is not None]
        causes = [v["cause"] for v in views if v.get("cause") and v.get("state") != "connected"]
        return {
            "a": a, "b": b, "state": state, "since": since,
            "rtt_s": max(rtts) if rtts else None,
            "last_seen_s": min(seen) if seen else None,
            "cause": causes[0] if causes else "",
            "views": [{"from": v["from"], "state": v.get("state"), "cause": v.get("cause", "")}
                      for v in views],
        }  # fmt: skip

    def _take_events(self, answers: Mapping[str, Mapping[str, Any]]) -> None:
        batch: list[dict[str, Any]] = []
        for host, answer in answers.items():
            journal = answer.get("journal")
            if not isinstance(journal, dict):
                continue
            cursor = self.cursors.setdefault(host, Cursor())
            epoch = str(journal.get("epoch", ""))
            if cursor.seq and epoch != cursor.epoch:
                self.cursors[host] = Cursor(epoch, 0)  # the node restarted: read it anew
                continue
            cursor.epoch = epoch
            self.missed += int(journal.get("missed", 0) or 0)
            for event in _valid_events(journal.get("events")):
                if event["seq"] <= cursor.seq:
                    continue  # had it already (an answer that overlaps the last one)
                cursor.seq = event["seq"]
                batch.append({**event, "node": self.index[host], "host": host})
        batch.sort(key=lambda e: e.get("time", 0.0))
        for event in batch:
            self.event_seq += 1
            self.events.append({**event, "id": self.event_seq})

    def set_drives(self, reports: Iterable[Mapping[str, Any]]) -> None:
        """This node's view of every drive (:meth:`Node.drive_states`)."""
        self.drives = [dict(report) for report in reports]

    # --- output -------------------------------------------------------------------------------

    def drive_rows(self) -> list[dict[str, Any]]:
        """The drives, each with its heal progress from its own node's ``top`` (if healing)."""
        progress: dict[str, dict[str, Any]] = {}
        for node in self.nodes:
            for entry in (node.get("heal") or {}).get("drives", []):
                progress[str(entry.get("drive"))] = entry
        rows = []
        local: dict[Any, int] = collections.Counter()
        for drive in sorted(self.drives, key=lambda d: d.get("position", 0)):
            heal = progress.get(str(drive.get("endpoint")))
            # The drive's index on its node, as the fault API and the CLI number drives.
            rows.append({**drive, "heal": heal, "local_index": local[drive.get("node")]})
            local[drive.get("node")] += 1
        return rows

    def frame(self, after: int) -> dict[str, Any]:
        """The page's next message: the whole state, and the events numbered after ``after``."""
        return {
            "time": self.time, "served_by": self.index.get(self.me), "nodes": self.nodes,
            "links": self.links, "drives": self.drive_rows(), "s3": self.s3.summary(),
            "events": [e for e in self.events if e["id"] > after], "missed": self.missed,
        }  # fmt: skip


def _host_of(answer: Mapping[str, Any]) -> str:
    """A ``top`` answer's host: ``host``, or the ``node`` an error entry names."""
    host = answer.get("host") or answer.get("node") or ""
    return str(host).split("://", 1)[-1]


def _valid_events(raw: Any) -> Iterable[dict[str, Any]]:
    """The well-formed events of a peer's journal answer (the peer is authenticated, but what
    it sends is checked all the same: the page shows it)."""
    if not isinstance(raw, list):
        return
    for event in raw:
        if (isinstance(event, dict) and isinstance(event.get("seq"), int)
                and isinstance(event.get("text"), str)):  # fmt: skip
            fields = event.get("fields")
            yield {
                "seq": event["seq"], "time": float(event.get("time") or 0.0),
                "level": str(event.get("level", "")), "component": str(event.get("component", "")),
                "kind": str(event.get("kind", "log")), "text": event["text"][:600],
                "fields": fields if isinstance(fields, dict) else {},
            }  # fmt: skip


__all__ = ["Picture", "S3Rates", "link_state", "percentile"]
