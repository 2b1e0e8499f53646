"""CPU speed (seconds per megapixel-frame) and peak memory versus number of frames.

Three measurements, each written to ``benchmarks/results/cpu_speed[-quick].json``:

``classical``
    A 15-frame 2000x1500 RGB 8-bit simulated stack (2 % breathing, medium noise):
    registration alone (``estimate_transforms``), every classical method without
    registration, and the default ``pyramid`` with registration (the whole ``fuse``
    call a user makes). Median of 3 runs; the order of the methods rotates between runs
    so a burst of load from other processes does not always hit the same one.
``deep``
    The deep methods at their shipped size on an 8-frame 256x256 RGB stack (8 frames:
    the shipped fixed-length ``focusdeep`` takes exactly 8, so every method processes
    every frame; 256x256 is one tile, and the cost per pixel of a convolutional network
    does not depend on the tile size), with ``pyramid`` beside them for a ratio measured
    side by side. Median of 3 runs, order rotated. From it, the time for a 15-frame 2000x1500 stack is
    extrapolated with the exact tile overhead (tiles of 512 read ``halo + ramp`` more on
    every side); that figure is labelled as extrapolated.
``deep_full``
    The issue's case measured, not extrapolated: the ``classical`` 15-frame
    2000x1500 stack fused by ``focusdeep-any`` end to end, registration included, as a
    user runs it, beside ``pyramid`` with registration; with the default tile and with
    ``tile=1024`` (fewer, larger tiles re-read less halo). Median of 2 runs, order
    rotated.
``memory``
    Peak resident memory (``VmHWM``) of a fresh subprocess fusing 10, 50 and 200 frames
    generated lazily by a dask array, ``pyramid`` (with registration) at 512x512 and
    ``focusdeep-any`` at 64x64 (sized when the end-to-end network, one to four minutes per
    megapixel-frame on 2 shared cores, was the default; the model's own test suite checks
    constant memory in N too). ``peak - baseline`` (RSS just before ``fuse``) is
    what the fusion itself needed.

Usage::

    python -m benchmarks.cpu_speed            # 20-30 min on 2 shared cores
    python -m benchmarks.cpu_speed --quick    # smaller stacks, 1 run: a few minutes
    python -m benchmarks.cpu_speed --only deep,memory
    python -m benchmarks.cpu_speed --only deep_full   # the 15 x 2000x1500 focusdeep-any case, ~10 min
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ._common import RESULTS_DIR, fmt_table, log, machine, write_json

CLASSICAL = ("pyramid", "laplacian", "wavelet")
DEEP = ("focusdeep-any", "focusdeep", "unet")

FULL = {
    "classical": {"shape": (1500, 2000), "frames": 15, "runs": 3},
    "deep": {"shape": (256, 256), "frames": 8, "runs": 3},
    "deep_full": {"shape": (1500, 2000), "frames": 15, "runs": 2},
    "memory": {"pyramid": (512, (10, 50, 200)), "focusdeep-any": (64, (10, 50, 200))},
}
QUICK = {
    "classical": {"shape": (750, 1000), "frames": 15, "runs": 1},
    "deep": {"shape": (128, 128), "frames": 8, "runs": 1},
    "deep_full": {"shape": (375, 500), "frames": 15, "runs": 1},
    "memory": {"pyramid": (256, (10, 50, 200)), "focusdeep-any": (32, (10, 40))},
}
EXTRAPOLATE = {"shape": (1500, 2000), "frames": 15}  # issue 6: under 2 minutes on 2 cores


def _stack(shape: tuple[int, int], frames: int, seed: int) -> Any:
    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    sharp, depth = synthetic_scene(shape, seed=seed)
    return simulate_stack(sharp, depth, frames, breathing=0.02, noise="medium", dtype=np.uint8, seed=seed, layers=10)


def _timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _rounds(jobs: dict[str, Callable[[], Any]], runs: int) -> dict[str, list[float]]:
    """Run every job ``runs`` times, rotating the order each round; wall seconds per job."""
    names = list(jobs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(runs):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(_timed(jobs[name]))
            log(f"  run {r + 1}/{runs} {name}: {times[name][-1]:.2f}s")
    return times


def _deep_available(names: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    from napari_focusdeep.fusion.registry import get_method

    use, skipped = [], {}
    for name in names:
        try:
            meth = get_method(name)
            meth.halo(**meth.options)
            use.append(name)
        except Exception as exc:  # noqa: BLE001 - reported, the others still run
            skipped[name] = str(exc).splitlines()[0]
    return use, skipped


def _summary(times: dict[str, list[float]], mp_frames: float) -> dict[str, Any]:
    out = {}
    for name, ts in times.items():
        med = float(np.median(ts))
        out[name] = {"runs_s": ts, "median_s": med, "s_per_mp_frame": med / mp_frames}
    return out


def classical_speed(cfg: dict[str, Any]) -> dict[str, Any]:
    """Registration and classical fusion of a 2000x1500 (quick: 1000x750) 15-frame stack."""
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.registration import estimate_transforms

    h, w = cfg["shape"]
    n = cfg["frames"]
    t = time.perf_counter()
    sim = _stack((h, w), n, seed=3)
    log(f"classical: rendered {n} frames of {w}x{h} in {time.perf_counter() - t:.1f}s")
    frames, ref = sim.frames, sim.reference
    import dask.array as da

    jobs: dict[str, Callable[[], Any]] = {
        "registration only": lambda: estimate_transforms(da.from_array(frames, chunks=(1, h, w, 3)), reference=ref),
    }
    for m in CLASSICAL:
        jobs[f"{m} (no registration)"] = lambda m=m: fuse(frames, method=m, register=False, reference=ref)
    jobs["pyramid + registration"] = lambda: fuse(frames, method="pyramid", register=True, reference=ref)
    times = _rounds(jobs, cfg["runs"])
    mpf = n * h * w / 1e6
    return {"stack": f"{n} frames {w}x{h} RGB uint8, 2% breathing, medium noise", "mp_frames": mpf,
            "runs": cfg["runs"], "results": _summary(times, mpf)}


def tile_overhead(method: str, shape: tuple[int, int]) -> dict[str, Any]:
    """Pixels a tiled run reads per output pixel (tiles overlap by ``halo + ramp``)."""
    from napari_focusdeep.fusion.core import block_grid
    from napari_focusdeep.fusion.registry import get_method

    meth = get_method(method)
    opts = meth.options
    halo, align = int(meth.halo(**opts)), int(meth.align(**opts))
    ramp = int(opts.get("ramp", 0)) if meth.blend else 0
    block = int(opts.get("tile") or meth.default_block)
    blocks = block_grid(shape, block, halo, align, ramp)
    read = sum((b.read[1] - b.read[0]) * (b.read[3] - b.read[2]) for b in blocks)
    return {"tile": block, "halo": halo, "ramp": ramp, "tiles": len(blocks), "read_ratio": read / (shape[0] * shape[1])}


def deep_speed(cfg: dict[str, Any]) -> dict[str, Any]:
    """Deep methods (CPU, float32) at the shipped size beside pyramid, on one tile."""
    from napari_focusdeep.fusion import fuse

    use, skipped = _deep_available(DEEP)
    h, w = cfg["shape"]
    n = cfg["frames"]
    sim = _stack((h, w), n, seed=5)
    frames, ref = sim.frames, sim.reference
    jobs: dict[str, Callable[[], Any]] = {"pyramid": lambda: fuse(frames, method="pyramid", register=False, reference=ref)}
    for m in use:
        jobs[m] = lambda m=m: fuse(frames, method=m, register=False, reference=ref, device="cpu")
    for m in use:  # load the weights (and measure the receptive field) outside the timed runs
        fuse(frames[:2, :64, :64], method=m, register=False, device="cpu")
    times = _rounds(jobs, cfg["runs"])
    mpf = n * h * w / 1e6
    res = _summary(times, mpf)
    for m in use:
        res[m]["ratio_to_pyramid"] = res[m]["median_s"] / res["pyramid"]["median_s"]
    out = {"stack": f"{n} frames {w}x{h} RGB uint8 (one tile), no registration", "mp_frames": mpf,
           "runs": cfg["runs"], "skipped": skipped, "results": res}
    out["extrapolated_15x2000x1500"] = extrapolate(out)
    out["target_s"] = 120
    return out


def extrapolate(deep: dict[str, Any]) -> dict[str, Any]:
    """Seconds for a 15-frame 2000x1500 stack from the measured seconds per frame pushed.

    The deep speed stack has as many frames as the shipped fixed-length network takes,
    so every method pushes every frame there. On the 15-frame stack ``focusdeep-any``
    pushes all 15, a fixed-length network only its ``n_frames`` (the others are skipped
    by the resampling), and every tile reads ``halo + ramp`` more pixels on each side.
    """
    from napari_focusdeep.fusion.registry import get_method
    from napari_focusdeep.models.methods import _config_for

    eh, ew = EXTRAPOLATE["shape"]
    out = {}
    for m, r in deep["results"].items():
        if m == "pyramid":
            continue
        meth = get_method(m)
        _, cfg = _config_for(m, meth.options.get("weights"))
        fixed = cfg.get("n_frames")
        pushed = EXTRAPOLATE["frames"] if not fixed else min(EXTRAPOLATE["frames"], int(fixed))
        ov = tile_overhead(m, (eh, ew))
        seconds = r["s_per_mp_frame"] * pushed * eh * ew / 1e6 * ov["read_ratio"]
        out[m] = {**ov, "frames_pushed": pushed, "seconds": seconds, "stack": f"{EXTRAPOLATE['frames']} frames {ew}x{eh}"}
    return out


def deep_full_speed(cfg: dict[str, Any]) -> dict[str, Any]:
    """``focusdeep-any`` on the 15-frame 2000x1500 stack, registration included, beside pyramid."""
    from napari_focusdeep.fusion import fuse

    use, skipped = _deep_available(["focusdeep-any"])
    h, w = cfg["shape"]
    n = cfg["frames"]
    sim = _stack((h, w), n, seed=3)  # the classical part's stack
    frames, ref = sim.frames, sim.reference
    jobs: dict[str, Callable[[], Any]] = {"pyramid + registration": lambda: fuse(frames, method="pyramid", reference=ref)}
    if use:
        fuse(frames[:2, :64, :64], method="focusdeep-any", register=False, device="cpu")  # load outside the timing
        jobs["focusdeep-any + registration"] = lambda: fuse(frames, method="focusdeep-any", reference=ref, device="cpu")
        jobs["focusdeep-any + registration, tile 1024"] = lambda: fuse(
            frames, method="focusdeep-any", reference=ref, device="cpu", tile=1024
        )
    times = _rounds(jobs, cfg["runs"])
    mpf = n * h * w / 1e6
    res = _summary(times, mpf)
    for name, r in res.items():
        r["ratio_to_pyramid"] = r["median_s"] / res["pyramid + registration"]["median_s"]
    return {"stack": f"{n} frames {w}x{h} RGB uint8, 2% breathing, medium noise", "mp_frames": mpf,
            "runs": cfg["runs"], "skipped": skipped, "results": res, "target_s": 120}


# -- memory: one subprocess per point --------------------------------------------------
def _vm(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def lazy_stack(frames: int, size: int, seed: int = 0) -> Any:
    """A ``(frames, size, size, 3)`` uint8 dask array rendered one frame per chunk on demand.

    Each frame mixes a sharp scene with a blurred copy by a per-pixel focus weight,
    so focus moves through the depth map; nothing but the two base images is held.
    """
    import cv2
    import dask.array as da

    from napari_focusdeep.training.simulate import synthetic_scene

    sharp, depth = synthetic_scene((size, size), seed=seed)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3.0)

    def frame(block_id: tuple[int, ...] = (0,)) -> np.ndarray:
        z = block_id[0]
        focus = z / max(frames - 1, 1)
        wgt = np.exp(-(((depth - focus) * 6.0) ** 2))[..., None]
        img = sharp * wgt + blurred * (1 - wgt)
        return np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)[None]

    return da.map_blocks(frame, dtype=np.uint8, chunks=((1,) * frames, (size,), (size,), (3,)))


def _child(method: str, frames: int, size: int) -> None:
    """Runs in the subprocess: fuse a lazy stack, print peak and baseline RSS as JSON."""
    from napari_focusdeep.fusion import fuse

    data = lazy_stack(frames, size)
    register = method == "pyramid"
    opts = {"device": "cpu"} if method in DEEP else {}
    if method in DEEP:  # load the network first, so the baseline includes the weights
        fuse(lazy_stack(2, 32), method=method, register=False, **opts)
    baseline = _vm("VmRSS")
    t = time.perf_counter()
    fuse(data, method=method, register=register, **opts)
    seconds = time.perf_counter() - t
    print(json.dumps({"method": method, "frames": frames, "size": size, "register": register,
                      "baseline_bytes": baseline, "peak_bytes": _vm("VmHWM"), "seconds": seconds}))


def memory_scaling(cfg: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of fresh subprocesses versus the number of frames."""
    rows = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for method, (size, counts) in cfg.items():
        for n in counts:
            cmd = [sys.executable, "-m", "benchmarks.cpu_speed", "--rss-child", method, str(n), str(size)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parent.parent)
            if proc.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
            rec = json.loads(proc.stdout.strip().splitlines()[-1])
            frame_f32 = size * size * 3 * 4
            rec.update(frame_float32_bytes=frame_f32, stack_uint8_bytes=n * size * size * 3,
                       fusion_bytes=rec["peak_bytes"] - rec["baseline_bytes"])
            rec["fusion_in_frames"] = rec["fusion_bytes"] / frame_f32
            log(f"memory: {method} {n} frames {size}x{size}: peak {rec['peak_bytes'] / 2**20:.0f} MiB, "
                f"fusion {rec['fusion_bytes'] / 2**20:.1f} MiB, {rec['seconds']:.1f}s")
            rows.append(rec)
    growth = {}
    for method in cfg:
        pts = [r for r in rows if r["method"] == method]
        growth[method] = pts[-1]["peak_bytes"] / pts[0]["peak_bytes"]
    return {"points": rows, "peak_ratio_max_to_min_frames": growth}


# -- report ---------------------------------------------------------------------------
def tables(res: dict[str, Any]) -> str:
    parts = []
    if "classical" in res:
        c = res["classical"]
        rows = [[k, v["median_s"], v["s_per_mp_frame"], ", ".join(f"{t:.2f}" for t in v["runs_s"])] for k, v in c["results"].items()]
        parts.append(f"Classical, {c['stack']} ({c['mp_frames']:.0f} MP-frames)\n\n"
                     + fmt_table(["step", "median s", "s per MP-frame", "runs (s)"], rows))
    if "deep" in res:
        d = res["deep"]
        rows = [[k, v["median_s"], v["s_per_mp_frame"], v.get("ratio_to_pyramid", 1.0), ", ".join(f"{t:.1f}" for t in v["runs_s"])]
                for k, v in d["results"].items()]
        parts.append(f"Deep (CPU, float32), {d['stack']} ({d['mp_frames']:.2f} MP-frames)\n\n"
                     + fmt_table(["method", "median s", "s per MP-frame", "× pyramid", "runs (s)"], rows))
        rows = [[k, v["frames_pushed"], v["tiles"], v["halo"], v["read_ratio"], v["seconds"], v["seconds"] / 60]
                for k, v in d["extrapolated_15x2000x1500"].items()]
        parts.append("Extrapolated to 15 frames of 2000x1500 (s per MP-frame × frames pushed × 3 MP × tile read ratio)\n\n"
                     + fmt_table(["method", "frames pushed", "tiles", "halo", "read ratio", "seconds", "minutes"], rows))
    if "deep_full" in res:
        d = res["deep_full"]
        rows = [[k, v["median_s"], v["s_per_mp_frame"], v["ratio_to_pyramid"], ", ".join(f"{t:.1f}" for t in v["runs_s"])]
                for k, v in d["results"].items()]
        parts.append(f"Deep end to end (CPU, float32), {d['stack']} ({d['mp_frames']:.0f} MP-frames)\n\n"
                     + fmt_table(["run", "median s", "s per MP-frame", "× pyramid", "runs (s)"], rows))
    if "memory" in res:
        rows = [[p["method"], p["size"], p["frames"], p["stack_uint8_bytes"] / 2**20, p["peak_bytes"] / 2**20,
                 p["fusion_bytes"] / 2**20, p["fusion_in_frames"], p["seconds"]] for p in res["memory"]["points"]]
        parts.append("Peak RSS versus frames (fresh process each; lazy dask stack)\n\n" + fmt_table(
            ["method", "size", "frames", "stack MiB (uint8)", "peak RSS MiB", "peak − baseline MiB", "in float32 frames", "s"], rows))
    return "\n\n".join(parts)


def run(*, quick: bool = False, only: Sequence[str] | None = None, out: Path | None = None) -> dict[str, Any]:
    cfg = QUICK if quick else FULL
    parts = list(only or ("classical", "deep", "deep_full", "memory"))
    out = out or RESULTS_DIR / ("cpu_speed-quick.json" if quick else "cpu_speed.json")
    res: dict[str, Any] = {"benchmark": "cpu_speed", "command": "python -m benchmarks.cpu_speed" + (" --quick" if quick else ""),
                           "machine": machine(), "config": {k: cfg[k] for k in parts}, "complete": False}
    if only and out.is_file():
        # a partial rerun updates its parts and keeps the others' results
        previous = json.loads(out.read_text())
        for part in ("classical", "deep", "deep_full", "memory"):
            if part in previous and part not in parts:
                res[part] = previous[part]
                res["config"][part] = previous.get("config", {}).get(part)
                res.setdefault("machine_of_kept_parts", {})[part] = previous.get("machine")
    started = time.perf_counter()
    funcs = {"classical": classical_speed, "deep": deep_speed, "deep_full": deep_full_speed, "memory": memory_scaling}
    for part in parts:
        if part not in funcs:
            raise SystemExit(f"unknown part {part!r}; choose from {', '.join(funcs)}")
        log(f"{part} ...")
        res[part] = funcs[part](cfg[part])
        write_json(out, res)
    res["complete"] = True
    res["elapsed_s"] = time.perf_counter() - started
    res["machine"]["load_average_end"] = machine()["load_average"]
    res["table"] = tables(res)
    write_json(out, res)
    return res


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cpu_speed", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller stacks, one run each")
    ap.add_argument("--only", help="comma-separated parts: classical, deep, deep_full, memory (default: all)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/cpu_speed[-quick].json)")
    ap.add_argument("--rss-child", nargs=3, metavar=("METHOD", "FRAMES", "SIZE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child:
        method, frames, size = args.rss_child
        _child(method, int(frames), int(size))
        return 0
    try:
        res = run(quick=args.quick, only=args.only.split(",") if args.only else None, out=args.out)
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    print(res["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
