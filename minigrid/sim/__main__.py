"""Search seeds for bugs, or replay one: ``python -m minigrid.sim``.

    python -m minigrid.sim --seeds 0:1000        # search; prints each failing seed
    python -m minigrid.sim --seed 123 --trace    # replay one seed exactly, with its trace

Prints one JSON object at the end (seeds run, failures, virtual and wall seconds).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from .schedule import random_run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minigrid.sim", description=__doc__)
    parser.add_argument("--seed", type=int, help="run this one seed")
    parser.add_argument("--seeds", default="0:100", help="a range of seeds, start:stop")
    parser.add_argument("--seconds", type=float, default=60.0, help="virtual seconds per run")
    parser.add_argument("--trace", action="store_true", help="print the run's trace")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # the grid logs what a real node would; not wanted here
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    else:
        start, _, stop = args.seeds.partition(":")
        seeds = range(int(start), int(stop))
    failures: list[dict[str, object]] = []
    began = time.perf_counter()
    for seed in seeds:
        result = random_run(seed, seconds=args.seconds)
        if args.trace:
            print("\n".join(result.trace), file=sys.stderr)
        if result.violations:
            failures.append({"seed": seed, "violations": result.violations[:5]})
            print(f"seed {seed}: {result.violations[0]}", file=sys.stderr)
    summary = {
        "seeds": len(seeds),
        "failures": failures,
        "virtual_seconds_per_seed": args.seconds,
        "wall_seconds": round(time.perf_counter() - began, 3),
    }
    print(json.dumps(summary))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
