"""The chaos soak: a seeded random workload against a seeded random fault schedule, and a
checker in the spirit of Jepsen's.

Workers put (varied sizes, overwrites), get, ranged-get, delete and list keys through random
nodes, each operation with a deadline, and record every operation's interval and outcome.
Every value written is derived from its id (``seed/worker/n``), so any bytes read back can be
traced to the one write that made them, or to none.

The fault schedule comes from its own seeded generator: freeze/thaw, kill/restart, partitions,
wipe-drive, corrupt, loop-block and clock jumps, never more at once than parity survives (one
node-level fault and one drive-level fault on a 4+4 set). The same seed gives the same
schedule (``schedule`` is a pure function of the seed and duration).

The checker, per key, after the faults heal:

- **wrong**: a read returned bytes no write made, or bytes that differ from the write they name;
- **lost**: the final read does not show the last acknowledged write (or delete), nor a write
  that was still in flight or ended without an answer (it may have landed);
- **stuck**: an operation that did not end (success or clear error) within its deadline.
"""

from __future__ import annotations

import hashlib
import random
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from cli.adminclient import AdminError
from cli.cluster import ClusterError
from cli.labs.runner import LabContext, quoted
from cli.labs.workload import s3_client

SOAK_PANELS = [
    ("connected", "link up", "links"),
    ("get_latency_s", "GET latency (s)", "points"),
    ("loop_lag_s", "loop lag (s)", "nodes"),
]
DEADLINE = 20.0
KEYS = 24
SIZES = (0, 100, 4096, 64 * 1024, 300 * 1024, 1 << 20, 3 << 20)
NODE_FAULTS = ("freeze", "kill", "partition-silent", "partition-reset", "loop-block",
               "clock-jump")  # fmt: skip
DRIVE_FAULTS = ("wipe-drive", "corrupt")


def value_bytes(value_id: str, size: int) -> bytes:
    """The content of a write: its id first, then bytes derived from it."""
    head = (value_id + "|").encode()
    seed = hashlib.sha256(head).digest()
    body = random.Random(seed).randbytes(max(0, size - len(head)))
    return (head + body)[: max(size, len(head))]


@dataclass
class Op:
    worker: int
    kind: str  # put, delete, get, range, list
    key: str
    value: str = ""  # the value id a put wrote, or a get read
    size: int = 0
    start: float = 0.0
    end: float | None = None
    outcome: str = "pending"  # ok, error, not-found, timeout
    detail: str = ""


def schedule(seed: int, duration: float, nodes: int = 4) -> list[dict[str, Any]]:
    """The fault schedule for ``seed``: a pure function (the same seed, the same faults)."""
    rng = random.Random(f"faults-{seed}")
    events: list[dict[str, Any]] = []
    t = 2.0
    while t < duration - 4:
        kind = rng.choice(NODE_FAULTS + DRIVE_FAULTS)
        hold = round(rng.uniform(3.0, 7.0), 1)
        node = rng.randrange(nodes)
        event = {"t": round(t, 1), "fault": kind, "node": node, "hold": hold}
        if kind.startswith("partition"):
            event["peer"] = (node + 1 + rng.randrange(nodes - 1)) % nodes
        if kind in DRIVE_FAULTS:
            event["drive"] = rng.randrange(2)
            event["key"] = f"k{rng.randrange(KEYS):02d}"
        if kind == "clock-jump":
            event["seconds"] = rng.choice((3600, -3600))
        events.append(event)
        t += hold + rng.uniform(1.0, 3.0)
    return events


class Worker(threading.Thread):
    def __init__(self, lab: LabContext, index: int, seed: int, stop: threading.Event,
                 history: list[Op], lock: threading.Lock) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.lab, self.index, self.stop_event = lab, index, stop
        self.rng = random.Random(f"work-{seed}-{index}")
        self.seed = seed
        self.history, self.lock = history, lock
        self.clients = [s3_client(lab.cl.cluster, n, timeout=DEADLINE / 2) for n in range(4)]
        self.count = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.one()

    def one(self) -> None:
        rng = self.rng
        kind = rng.choices(("put", "get", "range", "delete", "list"), (4, 4, 2, 1, 1))[0]
        op = Op(self.index, kind, f"k{rng.randrange(KEYS):02d}")
        s3 = rng.choice(self.clients)
        if kind == "put":
            self.count += 1
            op.value, op.size = f"{self.seed}/{self.index}/{self.count}", rng.choice(SIZES)
        op.start = self.lab.now()
        with self.lock:
            self.history.append(op)
        try:
            self._do(s3, op)
        except Exception as exc:  # every failure is recorded; the checker judges it
            code = _code(exc)
            op.outcome = "not-found" if code in ("NoSuchKey", "404") else "error"
            op.detail = code or type(exc).__name__
        op.end = self.lab.now()
        if op.end - op.start > DEADLINE:  # even an error is stuck if it came this late
            op.outcome, op.detail = "late", f"{op.outcome} after {op.end - op.start:.1f}s"

    def _do(self, s3: Any, op: Op) -> None:
        if op.kind == "put":
            s3.put_object(Bucket="soak", Key=op.key, Body=value_bytes(op.value, op.size))
        elif op.kind == "delete":
            s3.delete_object(Bucket="soak", Key=op.key)
        elif op.kind == "list":
            s3.list_objects_v2(Bucket="soak")
        else:
            extra = {"Range": "bytes=0-63"} if op.kind == "range" else {}
            data = s3.get_object(Bucket="soak", Key=op.key, **extra)["Body"].read()
            op.value, op.detail = traced(data, ranged=op.kind == "range")
            self.lab.record(0, "get_latency_s", self.lab.now() - op.start)
        op.outcome = "ok"


def _code(exc: Exception) -> str:
    """The S3 error code of a botocore error ("" for a timeout or a dropped connection, which
    carry no response)."""
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def traced(data: bytes, ranged: bool) -> tuple[str, str]:
    """(the value id these bytes name, "" or why they are wrong)."""
    head, sep, _ = data[:64].partition(b"|")
    if not sep:
        return "?", "bytes that no write made"
    value_id = head.decode(errors="replace")
    if ranged:
        return value_id, ""  # the first 64 bytes: the id itself is the check
    size = len(data)
    return value_id, "" if data == value_bytes(value_id, size) else "bytes differ from the write"


def check(history: list[Op], final: dict[str, tuple[str, str]],
          sizes: dict[str, int]) -> dict[str, Any]:  # fmt: skip
    """Judge a history and the final reads (key -> (value id or "", detail))."""
    wrong = [op for op in history if op.kind in ("get", "range") and op.outcome == "ok"
             and (op.detail or op.value not in sizes)]  # fmt: skip
    stuck = [op for op in history if op.end is None or op.outcome == "late"]
    lost = []
    for key in sorted({op.key for op in history}):
        writes = [op for op in history if op.key == key and op.kind in ("put", "delete")]
        acked = [op for op in writes if op.outcome == "ok"]
        # An acknowledged write is superseded by another that started after it ended.
        latest = [a for a in acked if not any(b.start > (a.end or 0) for b in acked)]
        unsure = [op for op in writes if op.outcome != "ok"]
        allowed = {op.value if op.kind == "put" else "" for op in latest + unsure}
        if not acked:
            allowed.add("")
        seen, why = final.get(key, ("", ""))
        if why == "unreadable" or seen not in allowed:
            lost.append({"key": key, "read": seen or "(absent)", "why": why,
                         "allowed": sorted(allowed)})  # fmt: skip
    return {"wrong": len(wrong), "lost": len(lost), "stuck": len(stuck),
            "wrong_ops": [vars(op) for op in wrong[:5]], "lost_keys": lost[:5],
            "stuck_ops": [vars(op) for op in stuck[:5]]}  # fmt: skip


def apply(lab: LabContext, event: dict[str, Any]) -> None:
    """Inject one scheduled fault; one a node refused or did not answer (a loaded machine) is
    marked ``skipped`` with the reason, and the report says so."""
    lab.mark(f"{event['fault']} {event['node']}")
    try:
        _inject(lab, event)
    except (AdminError, ClusterError) as exc:
        event["skipped"] = str(exc)[:160]


def _inject(lab: LabContext, event: dict[str, Any]) -> None:
    faults, node, admin = lab.cl.faults, event["node"], lab.cl.admin
    kind = event["fault"]
    if kind == "freeze":
        faults.signal(node, signal.SIGSTOP)
    elif kind == "kill":
        faults.signal(node, signal.SIGKILL)
    elif kind.startswith("partition"):
        faults.partition(node, event["peer"], kind.split("-")[1])
    elif kind == "loop-block":
        admin.call(node, "POST", "/fault/loop-block", seconds=min(2.0, event["hold"]))
    elif kind == "clock-jump":
        admin.call(node, "POST", "/fault/clock-jump", seconds=event["seconds"])
    elif kind == "wipe-drive":
        admin.call(node, "POST", "/fault/wipe-drive", drive=event["drive"])
    elif kind == "corrupt":
        try:
            admin.call(node, "POST", "/fault/corrupt", drive=event["drive"], bucket="soak",
                           key=event["key"])  # fmt: skip
        except Exception as exc:  # the key may not be on that drive now: nothing to corrupt
            event["skipped"] = str(exc)[:120]


def undo(lab: LabContext, event: dict[str, Any]) -> None:
    if event["fault"] in DRIVE_FAULTS:
        return  # healing repairs those; nothing to undo
    lab.mark("clear")
    clear(lab)


def clear(lab: LabContext) -> None:
    """Undo every fault, trying again while a node is too busy to answer (a loaded machine,
    a node just restarted): the soak must not stop with a fault still in place."""
    def done() -> bool:
        try:
            lab.cl.faults.clear()
        except (AdminError, ClusterError):
            return False
        return True

    lab.wait_for(done, 90, "the faults to be cleared", interval=1.0)


def chaos_soak(lab: LabContext) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    seed = int(lab.options.get("seed", 1))
    duration = float(lab.options.get("duration", 30.0 if lab.quick else 120.0))
    events = schedule(seed, duration)
    options = {"heal_speed": "fastest", "drive_check_interval": 0.5, "mrf_delay": 0.3,
               "scanner_interval": 0.5, "scanner_deep": "true"}  # fmt: skip
    history: list[Op] = []
    lock = threading.Lock()
    with lab.running("soak", options) as cl:
        cluster = cl.cluster
        s3_client(cluster, 0).create_bucket(Bucket="soak")
        stop = threading.Event()
        workers = [Worker(lab, i, seed, stop, history, lock) for i in range(4)]
        for worker in workers:
            worker.start()
        began = lab.now()
        for event in events:
            _until(lab, began + float(event["t"]))
            apply(lab, event)
            _until(lab, began + float(event["t"]) + float(event["hold"]))
            undo(lab, event)
        lab.wait_for(lambda: lab.now() - began >= duration, duration + 60, "the soak's end")
        stop.set()
        for worker in workers:
            worker.join(DEADLINE + 10)
        lab.mark("workload stopped")
        clear(lab)
        dangling = _remove_dangling(lab)
        redundancy = _wait_redundant(lab)
        sizes = {op.value: op.size for op in history if op.kind == "put"}
        final = _final_reads(cluster, sizes)
    verdict = check(history, final, sizes)
    kinds: dict[str, int] = {}
    for op in history:
        kinds[op.kind] = kinds.get(op.kind, 0) + 1
    summary = {"seed": seed, "duration_s": duration, "ops": len(history), "op_kinds": kinds,
               "ops_failed_cleanly": sum(1 for op in history if op.outcome in ("error",)),
               "faults": sum(1 for e in events if "skipped" not in e),
               "faults_skipped": sum(1 for e in events if "skipped" in e),
               "fault_kinds": sorted({e["fault"] for e in events if "skipped" not in e}),
               "lost": verdict["lost"], "wrong": verdict["wrong"], "stuck": verdict["stuck"],
               "full_redundancy_after_s": redundancy,
               "dangling_removed": dangling,
               "verdict": "pass" if not (verdict["lost"] or verdict["wrong"] or verdict["stuck"])
               else "fail", "schedule": events, "details": {
                   k: verdict[k] for k in ("wrong_ops", "lost_keys", "stuck_ops")}}  # fmt: skip
    sections = [
        ("What happened", f"""
Seed {seed}, {duration:g} s: 4 workers ran {len(history)} operations
({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}) through random
nodes while {summary['faults']} faults were injected one after another
({summary['faults_skipped']} skipped: see the schedule)
({', '.join(summary['fault_kinds'])}).
Operations that failed did so with a clear error within their deadline
({summary['ops_failed_cleanly']} of them). After the last fault was cleared, the cluster was
fully redundant again (every object's every copy good, checked by a deep dry-run heal) after
**{summary['full_redundancy_after_s']} s**. Before that check, one heal with `--remove-dangling`
(what an operator runs after an outage) removed **{summary['dangling_removed']}** dangling
remnants: copies on fewer than 4 drives, which no read can return (a delete or a failed put
that missed drives during a fault, or a heal that rewrote a copy onto a drive just as the
object was deleted through another node).

Checker: **lost {verdict['lost']}, wrong {verdict['wrong']}, stuck {verdict['stuck']}**
(verdict: {summary['verdict']}). Run it again with `--seed {seed}` for the same schedule.
"""),
        ("The schedule", "```\n" + "\n".join(
            f"t={e['t']:>5}s  {e['fault']:<16} node {e['node']}"
            + (f" peer {e['peer']}" if "peer" in e else "")
            + (f" drive {e['drive']} key {e['key']}" if "drive" in e else "")
            + (f" {e['seconds']:+d}s" if "seconds" in e else "") + f"  hold {e['hold']}s"
            + (f"  (skipped: {e['skipped']})" if "skipped" in e else "")
            for e in events) + "\n```"),
        ("Key log lines", quoted(lab.log_lines(
            r"fault:|session lost|offline \(|scanner healed|mrf: healed [1-9]|healed: [1-9]",
            "soak"), 12)),
        ("What the code does about it", """
Writes need a write quorum (5 of 8 drives) and are rolled back below it, so a put is either
acknowledged durable or reported failed. Reads need any 4 good shards and check every bitrot
hash. MRF heals what a put missed or a read found damaged; the deep scanner finds the rest;
a wiped drive is reformatted and refilled. The checker in `cli/labs/soak.py` holds the result to
Jepsen's standard: every acknowledged write readable byte for byte, every acknowledged delete
deleted, nothing read that was never written, nothing hung.
"""),
    ]
    return summary, sections


def _until(lab: LabContext, moment: float) -> None:
    """Wait until the lab's clock reads ``moment`` (the schedule's next step)."""
    lab.wait_for(lambda: lab.now() >= moment, max(1.0, moment - lab.now()) + 60, "the schedule")


def _remove_dangling(lab: LabContext) -> int:
    """One heal of the bucket with ``--remove-dangling``; how many remnants it removed. Safe
    for the checker: an acknowledged write is on a write quorum (5 drives), never dangling, and
    the final reads would find it lost if this removed it."""

    healed: list[list[dict[str, Any]]] = []

    def heal() -> bool:
        try:
            healed.append(lab.cl.admin.lines(0, "POST", "/heal", bucket="soak",
                                             **{"remove-dangling": "true"}))  # fmt: skip
        except AdminError:  # a node still busy after the faults: try again
            return False
        return True

    lab.wait_for(heal, 60, "a heal with --remove-dangling", interval=1.0)
    return sum(1 for line in healed[0] if line.get("object", {}).get("outcome") == "deleted")


def _wait_redundant(lab: LabContext) -> float | None:
    """Seconds until a deep dry-run heal finds nothing to heal (None: not within 120 s)."""
    began = time.monotonic()
    while time.monotonic() - began < 120:
        try:
            lines = lab.cl.admin.lines(0, "POST", "/heal", bucket="soak", deep="true",
                                    **{"dry-run": "true"})  # fmt: skip
        except Exception:
            lines = []
        objects = [line["object"] for line in lines if "object" in line]
        if lines and all(o["outcome"] in ("ok", "not-found") for o in objects):
            return round(time.monotonic() - began, 1)
        time.sleep(1.0)
    return None


def _final_reads(cluster: Any, sizes: dict[str, int]) -> dict[str, tuple[str, str]]:
    s3 = s3_client(cluster, 0, timeout=DEADLINE)
    final: dict[str, tuple[str, str]] = {}
    for n in range(KEYS):
        key = f"k{n:02d}"
        try:
            data = s3.get_object(Bucket="soak", Key=key)["Body"].read()
        except Exception as exc:
            code = _code(exc)
            final[key] = ("", "" if code == "NoSuchKey" else "unreadable")
            continue
        value_id, why = traced(data, ranged=False)
        final[key] = (value_id, why or ("" if value_id in sizes else "never written"))
    return final


__all__ = ["SOAK_PANELS", "chaos_soak", "check", "schedule", "traced", "value_bytes"]
