"""``python -m benchmarks [--quick] [--suites quality,cpu_speed]``: run the benchmark suites.

Each suite is a module of this package with ``main(argv) -> int`` that accepts
``--quick``; it writes its JSON under ``benchmarks/results/`` and prints its tables.
The suites: ``model_table``, ``quality`` and ``cpu_speed`` (our methods and networks on
held-out simulated stacks), ``raw`` (camera raw: raw vs RGB networks), ``compare``
(against today's focus stackers, docs/peers.md) and ``memory`` (peak RSS against frames
and frame size). A full run takes a few hours on a shared 2-core machine; ``--quick``
about fifteen minutes.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from typing import Sequence

from ._common import log

SUITES = ("model_table", "quality", "cpu_speed", "raw", "compare", "memory")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description="Run napari-focusdeep's benchmarks.")
    ap.add_argument("--quick", action="store_true", help="the few-minute version of every suite")
    ap.add_argument("--suites", default=",".join(SUITES), help="comma-separated suites (default: %(default)s)")
    args = ap.parse_args(argv)
    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    status = 0
    for name in suites:
        started = time.perf_counter()
        log(f"== {name}{' (quick)' if args.quick else ''}")
        print(f"\n## {name}\n", flush=True)
        module = importlib.import_module(f"{__package__}.{name}")
        rc = module.main(["--quick"] if args.quick else [])
        log(f"== {name} finished in {time.perf_counter() - started:.0f}s (exit {rc})")
        if rc == 130:
            return rc
        status = status or rc
    return status


if __name__ == "__main__":
    sys.exit(main())
