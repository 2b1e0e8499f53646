"""Scaling of ``focusdeep batch`` with LocalCluster workers on this machine.

Writes ``--stacks`` simulated RGB brackets as multi-page TIFFs, starts one local
cluster per worker count (worker processes, one thread each, as ``focusdeep batch
--workers N`` does), warms each cluster up with one untimed pass (imports, first
OpenCV calls), then times ``--repeats`` full batches per worker count, interleaving
the worker counts so that a change in the machine's background load hits them
alike. Reports the median wall time per batch, stacks per second and the speed-up
over the first worker count, plus the load average before and after.

Usage::

    python benchmarks/scaling.py                      # 1 vs 2 workers, 8 stacks of 8 x 512x512
    python benchmarks/scaling.py --workers 1 2 4 --stacks 16 --size 1024 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np


def make_stacks(folder: Path, n: int, size: int, frames: int) -> list[Path]:
    from napari_focusdeep.io import write_stack
    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    paths = []
    for i in range(n):
        sharp, depth = synthetic_scene((size, size), channels=3, seed=i)
        sim = simulate_stack(sharp, depth, frames, breathing=0.01, shake=0.5, dtype=np.uint8, seed=i)
        paths.append(write_stack(folder / f"stack{i:02d}.tif", sim.frames))
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stacks", type=int, default=8)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--method", default="pyramid")
    ap.add_argument("--no-register", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args()

    from napari_focusdeep.batch import FuseSettings, batch_client, discover_stacks, plan_batch, run_batch

    root = Path(tempfile.mkdtemp(prefix="focusdeep-scaling-"))
    try:
        make_stacks(root / "in", args.stacks, args.size, args.frames)
        settings = FuseSettings(method=args.method, register=not args.no_register)
        load_before = os.getloadavg()
        times: dict[int, list[float]] = {n: [] for n in args.workers}
        startup: dict[int, float] = {}
        with ExitStack() as stack:
            clients = {}
            for n in args.workers:
                t0 = time.perf_counter()
                clients[n] = stack.enter_context(batch_client(workers=n, processes=True))
                startup[n] = time.perf_counter() - t0

            def one_batch(n: int, tag: str) -> float:
                out = root / f"out-{n}-{tag}"
                tasks, failed = plan_batch(discover_stacks([root / "in"]), out)
                assert not failed
                t0 = time.perf_counter()
                results = run_batch(tasks, settings, clients[n])
                elapsed = time.perf_counter() - t0
                bad = [r for r in results if r.status != "fused"]
                if bad:
                    raise RuntimeError(f"{bad[0].name}: {bad[0].message}")
                shutil.rmtree(out)
                return elapsed

            for n in args.workers:
                one_batch(n, "warmup")
            for rep in range(args.repeats):
                for n in args.workers:
                    times[n].append(one_batch(n, str(rep)))
        load_after = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    base = statistics.median(times[args.workers[0]])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.stacks} stacks of {args.frames} x {args.size}x{args.size} RGB uint8, method {args.method}, "
          f"registration {'off' if args.no_register else 'on'}; {cores} cores; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print("| workers | median s / batch | runs (s) | stacks / s | speed-up | cluster start (s) |")
    print("|---:|---:|---|---:|---:|---:|")
    rows = []
    for n in args.workers:
        med = statistics.median(times[n])
        rows.append({"workers": n, "median_s": med, "runs_s": times[n], "stacks_per_s": args.stacks / med,
                     "speedup": base / med, "startup_s": startup[n]})
        runs = ", ".join(f"{t:.1f}" for t in times[n])
        print(f"| {n} | {med:.2f} | {runs} | {args.stacks / med:.2f} | {base / med:.2f}x | {startup[n]:.1f} |")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "cores": cores,
                                         "load_before": load_before, "load_after": load_after, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
