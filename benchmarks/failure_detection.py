"""How fast does the grid notice a dead peer? Frozen (SIGSTOP) and killed (SIGKILL) peers,
under the ``fast`` profile and the ``minio`` profile (MinIO's own timings), side by side.

Prints one JSON object on stdout: median seconds from the fault to the failure of a call in
flight, per profile and fault, plus how long the connection took to come back after SIGCONT.

    .venv/bin/python benchmarks/failure_detection.py [--rounds 3] [--skip-minio]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import statistics
import sys
import time

from minigrid import Disconnected, HandlerID, Manager, State, profile
from minigrid.testing import (
    TEST_SECRET,
    NodeProcess,
    host_of,
    listening_socket,
    register_test_handlers,
    serve_manager,
)


async def one_round(profile_name: str, fault: str) -> dict[str, float | str]:
    ours, theirs = listening_socket(), listening_socket()
    node = NodeProcess(theirs, [host_of(ours)], profile_name=profile_name)
    manager = Manager(host_of(ours), [node.host], TEST_SECRET, config=profile(profile_name))
    register_test_handlers(manager)
    runner = await serve_manager(manager, ours)
    try:
        await asyncio.to_thread(node.start)
        await manager.start()
        await manager.wait_connected(20)
        conn = manager.connection(node.host)
        call = asyncio.create_task(conn.call(HandlerID.TEST_SLEEP, b"3600", timeout=3600))
        await asyncio.sleep(0)  # let the call register and queue its request
        assert conn.stats().inflight_calls == 1
        started = time.monotonic()
        node.signal(signal.SIGSTOP if fault == "frozen" else signal.SIGKILL)
        cause = ""
        try:
            await call
        except Disconnected as exc:
            cause = exc.cause
        detected = time.monotonic() - started
        result: dict[str, float | str] = {"detect_s": round(detected, 3), "cause": cause}
        if fault == "frozen":
            resumed = time.monotonic()
            node.signal(signal.SIGCONT)
            await conn.wait_state(State.CONNECTED, timeout=60)
            result["reconnect_s"] = round(time.monotonic() - resumed, 3)
        return result
    finally:
        await manager.close()
        await runner.cleanup()
        await asyncio.to_thread(node.kill)
        ours.close()
        theirs.close()


async def main(rounds: int, profiles: list[str]) -> dict[str, object]:
    raw: dict[str, list[dict[str, float | str]]] = {}
    for _ in range(rounds):
        for profile_name in profiles:  # alternate, so drift hits both alike
            for fault in ("frozen", "killed"):
                key = f"{profile_name}_{fault}"
                raw.setdefault(key, []).append(await one_round(profile_name, fault))
                print(key, raw[key][-1], file=sys.stderr)
    out: dict[str, object] = {"benchmark": "failure_detection", "rounds": rounds}
    for key, results in raw.items():
        out[f"{key}_detect_s"] = statistics.median(float(r["detect_s"]) for r in results)
        if key.endswith("frozen"):
            out[f"{key}_reconnect_s"] = statistics.median(float(r["reconnect_s"]) for r in results)
        out[f"{key}_causes"] = sorted({str(r["cause"]).split(":")[0] for r in results})
    if "minio_frozen_detect_s" in out:
        out["frozen_speedup_vs_minio"] = round(
            float(out["minio_frozen_detect_s"]) / float(out["fast_frozen_detect_s"]), 2  # type: ignore[arg-type]
        )
    out["raw"] = raw
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-minio", action="store_true", help="only the fast profile")
    args = parser.parse_args()
    profiles = ["fast"] if args.skip_minio else ["fast", "minio"]
    print(json.dumps(asyncio.run(main(args.rounds, profiles))))
