"""What the console's buttons do: each one is the admin requests ``minigrid`` would send.

A click arrives as ``POST /minigrid/console/action`` with ``{"action": ..., ...}``; this module
turns it into signed admin requests (SigV4, the admin keys) to the nodes that must act, over
HTTP like any admin client, and answers with every request made and its answer, plus the
equivalent ``minigrid`` command. So a click is exactly ``minigrid fault ...``'s admin call,
and a node refuses it exactly as it would refuse the CLI (403 ``FaultsDisabled`` without
``--allow-faults``).

| action | admin requests |
|---|---|
| ``freeze``/``thaw`` ``node`` | ``POST /fault/freeze|thaw?peer=HOST`` to the serving node |
| ``partition`` ``a`` ``b`` ``mode`` | ``POST /fault/partition?peer=`` to both ends |
| ``unpartition`` | ``DELETE /fault/partition`` to every node |
| ``loop-block`` ``node`` ``seconds`` | ``POST /fault/loop-block?seconds=`` |
| ``wipe-drive`` ``node`` ``drive`` | ``POST /fault/wipe-drive?drive=`` (the node's drive index) |
| ``slow-drive`` ``node`` ``drive`` ``ms`` | ``POST /fault/slow-drive?drive=&ms=`` |
| ``heal`` | ``POST /heal`` to the node serving the console (read to the end in the background) |
| ``scanner`` ``speed`` | ``POST /scanner?speed=`` to every node |
| ``clear`` | ``POST /fault/clear`` to every node, after thawing every frozen node |

Freeze and thaw are signals (SIGSTOP, SIGCONT), which a stopped node cannot send itself: the
node serving the console sends them, to a peer on its own machine only (see
:mod:`node.procident` and ``POST /fault/freeze``). The CLI sends the same signals by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp

from node.s3 import sigv4
from node.services import ADMIN_PREFIX

log = logging.getLogger("node.console")

ADMIN_TIMEOUT = 8.0
#: How long the console keeps reading an admin heal it started (it runs in the background).
HEAL_TIMEOUT = 3600.0
MAX_ANSWER = 1 << 20
SPEEDS: Final = ("fastest", "fast", "default", "slow", "slowest")


class ActionError(ValueError):
    """A click the console cannot turn into admin requests (400, with the message)."""


@dataclass(frozen=True)
class Call:
    """One admin request a click makes: to node ``node``, ``method`` ``path?query``."""

    node: int
    method: str
    path: str
    query: Mapping[str, str]
    optional: bool = False  # its refusal does not fail the click (thawing a running node)


class AdminCaller:
    """Signed admin requests to the cluster's nodes (by index), over HTTP(S)."""

    def __init__(self, urls: Sequence[str], access_key: str, secret_key: str, region: str,
                 tls: ssl.SSLContext | None = None,
                 clock: Callable[[], dt.datetime] | None = None) -> None:  # fmt: skip
        self.urls = list(urls)
        self._keys = (access_key, secret_key, region)
        self._tls = tls
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT),
                connector=aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else True,
                                               force_close=True),
            )  # fmt: skip
        return self._session

    def _request(self, call: Call) -> tuple[str, dict[str, str]]:
        base = self.urls[call.node]
        host = urlsplit(base).netloc
        path = ADMIN_PREFIX + call.path
        access_key, secret_key, region = self._keys
        headers = sigv4.sign_request(call.method, host, path, call.query, access_key,
                                     secret_key, region, self._clock())  # fmt: skip
        url = base.rstrip("/") + path
        if call.query:
            url += "?" + sigv4.canonical_query(call.query.items())
        return url, headers

    async def send(self, call: Call) -> dict[str, Any]:
        """Make one admin request; its status and JSON answer (never raises for a refusal)."""
        url, headers = self._request(call)
        result: dict[str, Any] = {"node": call.node, "method": call.method,
                                  "path": ADMIN_PREFIX + call.path, "query": dict(call.query)}
        try:
            async with self._client().request(call.method, url, headers=headers) as response:
                raw = await response.content.read(MAX_ANSWER)
                result["status"] = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            result.update(status=0, answer={"error": f"no answer: {exc or type(exc).__name__}"})
            return result
        try:
            result["answer"] = json.loads(raw) if raw else {}
        except ValueError:
            result["answer"] = {"error": f"not JSON: {raw[:200]!r}"}
        return result

    async def stream_lines(self, call: Call, timeout: float) -> list[dict[str, Any]]:
        """An admin request that answers JSON lines (``POST /heal``): the last few lines."""
        url, headers = self._request(call)
        lines: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout), self._client().request(
            call.method, url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)
        ) as response:
            if response.status != 200:
                raise ActionError(f"HTTP {response.status}: {(await response.text())[:300]}")
            async for raw in response.content:
                with contextlib.suppress(ValueError):
                    lines = [*lines[-9:], json.loads(raw)]
        return lines


def _int(params: Mapping[str, Any], name: str, low: int, high: int) -> int:
    value = params.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ActionError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def _number(params: Mapping[str, Any], name: str, low: float, high: float) -> float:
    value = params.get(name)
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not math.isfinite(value) or not low <= value <= high):  # fmt: skip
        raise ActionError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
    return float(value)


def _choice(params: Mapping[str, Any], name: str, choices: Sequence[str]) -> str:
    value = params.get(name)
    if value not in choices:
        raise ActionError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


@dataclass(frozen=True)
class Plan:
    """A click, planned: the admin requests in order, and the command that does the same."""

    calls: list[Call]
    command: str
    background: bool = False  # read the answer in the background (a heal)


class Planner:
    """Turns a click into a :class:`Plan` for one cluster (hosts and drives per node)."""

    def __init__(self, hosts: Sequence[str], drives_per_node: Sequence[int], me: int) -> None:
        self.hosts = list(hosts)
        self.drives = list(drives_per_node)
        self.me = me

    def plan(self, params: Mapping[str, Any]) -> Plan:
        action = params.get("action")
        planner = self._PLANS.get(str(action))
        if planner is None:
            raise ActionError(f"action must be one of {', '.join(self._PLANS)}, not {action!r}")
        return planner(self, params)

    def _node(self, params: Mapping[str, Any], name: str = "node") -> int:
        return _int(params, name, 0, len(self.hosts) - 1)

    def _signal(self, params: Mapping[str, Any], verb: str) -> Plan:
        node = self._node(params)
        if node == self.me:
            raise ActionError(f"this console is served by node {node}: a stopped node serves "
                              f"nothing and cannot thaw itself; open another node's console "
                              f"to {verb} it")  # fmt: skip
        return Plan([Call(self.me, "POST", f"/fault/{verb}", {"peer": self.hosts[node]})],
                    f"minigrid fault {verb} {node}")  # fmt: skip

    def _freeze(self, params: Mapping[str, Any]) -> Plan:
        return self._signal(params, "freeze")

    def _thaw(self, params: Mapping[str, Any]) -> Plan:
        return self._signal(params, "thaw")

    def _partition(self, params: Mapping[str, Any]) -> Plan:
        a, b = self._node(params, "a"), self._node(params, "b")
        if a == b:
            raise ActionError("a partition needs two different nodes")
        mode = _choice(params, "mode", ("silent", "reset"))
        calls = [Call(a, "POST", "/fault/partition", {"peer": self.hosts[b], "mode": mode}),
                 Call(b, "POST", "/fault/partition", {"peer": self.hosts[a], "mode": mode})]
        return Plan(calls, f"minigrid fault partition {a} {b} --mode {mode}")

    def _unpartition(self, _params: Mapping[str, Any]) -> Plan:
        calls = [Call(n, "DELETE", "/fault/partition", {}) for n in range(len(self.hosts))]
        return Plan(calls, "minigrid fault unpartition")

    def _loop_block(self, params: Mapping[str, Any]) -> Plan:
        node = self._node(params)
        seconds = _number(params, "seconds", 0.1, 60)
        return Plan([Call(node, "POST", "/fault/loop-block", {"seconds": f"{seconds:g}"})],
                    f"minigrid fault loop-block {node} --seconds {seconds:g}")  # fmt: skip

    def _drive(self, params: Mapping[str, Any]) -> tuple[int, int]:
        node = self._node(params)
        return node, _int(params, "drive", 0, self.drives[node] - 1)

    def _wipe_drive(self, params: Mapping[str, Any]) -> Plan:
        node, drive = self._drive(params)
        return Plan([Call(node, "POST", "/fault/wipe-drive", {"drive": str(drive)})],
                    f"minigrid fault wipe-drive {node} {drive}")  # fmt: skip

    def _slow_drive(self, params: Mapping[str, Any]) -> Plan:
        node, drive = self._drive(params)
        ms = _number(params, "ms", 0, 10_000)
        return Plan([Call(node, "POST", "/fault/slow-drive", {"drive": str(drive),
                                                               "ms": f"{ms:g}"})],
                    f"minigrid fault slow-drive {node} {drive} --ms {ms:g}")  # fmt: skip

    def _heal(self, _params: Mapping[str, Any]) -> Plan:
        return Plan([Call(self.me, "POST", "/heal", {})], "minigrid admin heal",
                    background=True)  # fmt: skip

    def _scanner(self, params: Mapping[str, Any]) -> Plan:
        speed = _choice(params, "speed", SPEEDS)
        calls = [Call(n, "POST", "/scanner", {"speed": speed}) for n in range(len(self.hosts))]
        return Plan(calls, f"minigrid admin scanner --speed {speed}")

    def _clear(self, _params: Mapping[str, Any]) -> Plan:
        calls = [Call(self.me, "POST", "/fault/thaw", {"peer": host}, optional=True)
                 for n, host in enumerate(self.hosts) if n != self.me]  # fmt: skip
        calls += [Call(n, "POST", "/fault/clear", {}) for n in range(len(self.hosts))]
        return Plan(calls, "minigrid fault clear")

    _PLANS: Final[dict[str, Callable[[Planner, Mapping[str, Any]], Plan]]] = {
        "freeze": _freeze, "thaw": _thaw, "partition": _partition, "unpartition": _unpartition,
        "loop-block": _loop_block, "wipe-drive": _wipe_drive, "slow-drive": _slow_drive,
        "heal": _heal, "scanner": _scanner, "clear": _clear,
    }  # fmt: skip


def _summary(results: Sequence[Mapping[str, Any]]) -> str:
    """One clause per distinct request and answer: ``POST /scanner: 200 on nodes 0, 1, 2``."""
    groups: dict[str, list[str]] = {}
    for r in results:
        failed = "" if 200 <= r["status"] < 300 else f" ({r['answer'].get('error', '')})"
        path = r["path"].removeprefix(ADMIN_PREFIX)
        groups.setdefault(f"{r['method']} {path}: {r['status']}{failed}", []).append(
            str(r["node"]))
    return "; ".join(f"{key} on node{'s' if len(nodes) > 1 else ''} {', '.join(nodes)}"
                     for key, nodes in groups.items())  # fmt: skip


class Actions:
    """Carries out clicks: plans them, makes the admin requests, says what happened."""

    def __init__(self, planner: Planner, caller: AdminCaller) -> None:
        self.planner = planner
        self.caller = caller
        self._background: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.caller.close()

    async def run(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Do one click (:class:`ActionError` for a click that makes no sense)."""
        plan = self.planner.plan(params)
        if plan.background:
            if self._background:
                raise ActionError("a heal started here is still running; wait for it to end")
            task = asyncio.create_task(self._heal(plan), name="console heal")
            self._background.add(task)
            task.add_done_callback(self._background.discard)
            log.info("console: %s (started; it runs in the background)", plan.command)
            return {"action": params.get("action"), "command": plan.command, "ok": True,
                    "calls": [], "background": True}  # fmt: skip
        results = [await self.caller.send(call) for call in plan.calls]
        ok = all(200 <= r["status"] < 300 or call.optional
                 for call, r in zip(plan.calls, results, strict=True))  # fmt: skip
        summary = _summary(results)
        (log.info if ok else log.warning)("console: %s -> %s", plan.command, summary)
        return {"action": params.get("action"), "command": plan.command, "ok": ok,
                "calls": results}  # fmt: skip

    async def _heal(self, plan: Plan) -> None:
        try:
            lines = await self.caller.stream_lines(plan.calls[0], HEAL_TIMEOUT)
        except (ActionError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning("console: %s failed: %s", plan.command, exc or type(exc).__name__)
            return
        summary: dict[str, Any] = next(
            (line["summary"] for line in reversed(lines) if "summary" in line), {})
        log.info("console: %s finished: %s", plan.command,
                 ", ".join(f"{k} {v}" for k, v in summary.items()) or "no summary")  # fmt: skip


__all__ = ["ActionError", "Actions", "AdminCaller", "Call", "Plan", "Planner"]
