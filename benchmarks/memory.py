"""Peak memory of ``focusdeep fuse`` against the number of frames and the frame size.

Issue 6 asks that our memory not grow with the number of frames, and that a 200-frame
12 MP stack (about 7 GB) fuse from disk in under 1.5 GB. Each case writes one
uncompressed multi-page TIFF (the usual microscopy container: read lazily, a frame at
a time) of simulated RGB frames, runs the command line on it as a subprocess (the
default ``pyramid`` with registration, as a user runs it), and polls the process's
resident set size every 20 ms with psutil.

Cases:

- frames: N = 10, 50, 200 frames of 2000x1500 (3 MP);
- size: 10 frames of 1, 3 and 12 MP (a straight-line fit gives bytes per pixel);
- big: 200 frames of 4000x3000 (12 MP, 7.2 GB on disk), unless ``--no-big``;
- blocks: 10 frames of 3, 12 and 27 MP, and the big stack, fused in 1024-pixel blocks
  (``--block-size 1024``, what ``fuse`` falls back to when the whole image would not
  fit in memory): the working memory is one block's, so peak RSS grows only by the
  result's size.

``--quick`` runs small versions of the first two (about a minute). Results go to
``benchmarks/results/memory.json`` (``--json``) and a table on stdout.

Usage::

    python -m benchmarks.memory --quick
    python -m benchmarks.memory               # about 40 min on 2 cores, 10 GB of disk in --work
    python -m benchmarks.memory --only blocks  # one group; the others' results are kept
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import RESULTS_DIR, fmt_table, log, machine, write_json

MiB = 2**20
GROUPS = ("frames", "size", "blocks", "big")
BLOCK_ARGS = ("--block-size", "1024")


def write_tiff_stack(path: Path, n: int, shape: tuple[int, int], base: tuple[int, int] = (375, 500)) -> Path:
    """``n`` uint8 RGB frames of ``shape`` in one uncompressed TIFF, written frame by frame.

    Frames are rendered at ``base`` by the simulator (layered defocus, 2 % breathing,
    shake, low noise) and upscaled, so a 7 GB stack takes minutes, not hours, and never
    sits in memory whole.
    """
    import cv2
    import tifffile

    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    meta = f"{n}x{shape[0]}x{shape[1]} from {base}"
    marker = path.with_suffix(".done")
    if path.exists() and marker.exists() and marker.read_text() == meta:
        return path
    path.unlink(missing_ok=True)
    sharp, depth = synthetic_scene(base, channels=3, seed=9)
    sim = simulate_stack(sharp, depth, n, breathing=0.02, shake=0.5, noise="low", dtype=np.float32, seed=9, max_blur=4.0)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for frame in sim.frames:
            big = cv2.resize(frame, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)
            tif.write(np.clip(np.rint(big * 255), 0, 255).astype(np.uint8), photometric="rgb", contiguous=True)
    marker.write_text(meta)
    return path


def measure(stack: Path, out: Path, timeout: float, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run ``focusdeep fuse`` on ``stack``; seconds and peak RSS of the process tree."""
    from .peers import PeerError, _exe, run_measured

    try:
        seconds, peak, output = run_measured([_exe("focusdeep"), "fuse", str(stack), "-o", str(out), "--overwrite", *extra],
                                        timeout=timeout, mem_cap=None, poll=0.02)
    except PeerError as exc:
        return {"ok": False, "error": str(exc)}
    finally:
        out.unlink(missing_ok=True)
    found = re.search(r"in (\d+) blocks of", output)
    return {"ok": True, "seconds": seconds, "peak_rss_mib": peak / MiB, "blocks": int(found.group(1)) if found else 1}


def run_case(
    work: Path, n: int, shape: tuple[int, int], timeout: float, keep: bool, extra: Sequence[str] = ()
) -> dict[str, Any]:
    path = work / f"stack-{n}x{shape[1]}x{shape[0]}.tif"
    log(f"writing {path.name}")
    write_tiff_stack(path, n, shape)
    log(f"fusing {path.name} {' '.join(extra)}")
    res = measure(path, work / "out.tif", timeout, extra)
    # Whole-image cases fall into blocks by themselves on a machine with too little free
    # memory (fuse's memory_block_size); the CLI says so, and such a case is left out of
    # the whole-image fit.
    res["auto_blocks"] = bool(res.get("blocks", 1) > 1 and not extra)
    if res["auto_blocks"]:
        log(f"  too little free memory here for the whole image: fuse used {res['blocks']} blocks")
    frame_f32 = shape[0] * shape[1] * 3 * 4
    res.update(frames=n, shape=list(shape), args=list(extra), megapixels=shape[0] * shape[1] / 1e6,
               file_mib=path.stat().st_size / MiB, frame_float32_mib=frame_f32 / MiB)
    if res["ok"]:
        log(f"  {res['seconds']:.1f} s, peak RSS {res['peak_rss_mib']:.0f} MiB")
    else:
        log(f"  failed: {res['error']}")
    if not keep:
        path.unlink(missing_ok=True)
        path.with_suffix(".done").unlink(missing_ok=True)
    return res


def fit(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Peak RSS = constant + slope x frame float32 size, least squares over the cases with
    the first case's number of frames (and the mode their group measures)."""
    ok = [r for r in rows if r.get("ok") and not r.get("auto_blocks") and r["frames"] == rows[0]["frames"]]
    if len(ok) < 2:
        return None
    x = np.array([r["frame_float32_mib"] for r in ok])
    y = np.array([r["peak_rss_mib"] for r in ok])
    slope, const = np.polyfit(x, y, 1)
    return {"frames_of_float32": float(slope), "constant_mib": float(const)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small cases only (about a minute)")
    ap.add_argument("--no-big", action="store_true", help="skip the 200 x 12 MP stack")
    ap.add_argument("--work", type=Path, default=Path("/tmp/focusdeep-memory"), help="where the TIFF stacks go")
    ap.add_argument("--keep", action="store_true", help="keep the stacks (they are reused when kept)")
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--only", choices=GROUPS, nargs="+", default=None,
                    help="run these groups; the others' results are kept from the JSON file")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.quick:
        by_n = [(n, (375, 500)) for n in (5, 20, 60)]
        by_size = [(8, s) for s in ((300, 400), (600, 800), (1200, 1600))]
        blocks = [(8, s) for s in ((1200, 1600), (1500, 2000))]  # both more than one block
        big = []
    else:
        by_n = [(n, (1500, 2000)) for n in (10, 50, 200)]
        by_size = [(10, s) for s in ((750, 1000), (1500, 2000), (3000, 4000))]
        big = [] if args.no_big else [(200, (3000, 4000))]
        blocks = [(10, s) for s in ((1500, 2000), (3000, 4000), (4500, 6000))] + big
    groups = {"frames": by_n, "size": by_size, "blocks": blocks, "big": big}
    groups = {k: v for k, v in groups.items() if args.only is None or k in args.only}
    need = max(n * h * w * 3 for cases in groups.values() for n, (h, w) in cases) * 1.05
    args.work.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.work).free
    if free < need:
        log(f"{args.work} has {free / 2**30:.1f} GiB free; the largest stack needs {need / 2**30:.1f} GiB")
        return 2
    out = args.json or RESULTS_DIR / ("memory-quick.json" if args.quick else "memory.json")
    result: dict[str, Any] = {key: [] for key in GROUPS}
    if args.only is not None and out.exists():
        result.update(json.loads(out.read_text()))
    result.update(machine=machine(), quick=args.quick)
    for key, cases in groups.items():
        extra = BLOCK_ARGS if key == "blocks" else ()
        result[key] = [run_case(args.work, n, shape, args.timeout, args.keep, extra) for n, shape in cases]
    result["size_fit"] = fit(result["size"])
    result["blocks_fit"] = fit(result["blocks"])
    write_json(out, result)
    rows = [[key, r["frames"], f"{r['shape'][1]}x{r['shape'][0]}", f"{r['file_mib']:.0f}",
             (f"{r['seconds']:.1f}" + (" (auto blocks)" if r.get("auto_blocks") else "")) if r["ok"] else "failed", f"{r['peak_rss_mib']:.0f}" if r["ok"] else "-",
             f"{r['peak_rss_mib'] / r['frame_float32_mib']:.1f}" if r["ok"] else "-"]
            for key in GROUPS for r in result[key]]
    print(fmt_table(["case", "frames", "size", "file MiB", "wall s", "peak RSS MiB", "RSS / float32 frame"], rows))
    for key, label in (("size_fit", "whole image"), ("blocks_fit", "1024-pixel blocks")):
        if result[key]:
            f = result[key]
            print(f"\n{label}: peak RSS ~ {f['constant_mib']:.0f} MiB + {f['frames_of_float32']:.2f} x one float32 RGB frame")
    log(f"wrote {out}")
    return 0 if all(r["ok"] for key in groups for r in result[key]) else 1


if __name__ == "__main__":
    sys.exit(main())
