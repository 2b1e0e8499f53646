"""Raw benchmark: the raw FocusDeep network (packed Bayer in) against fusing demosaiced frames.

A held-out set of simulated raw focus brackets at four ISO-like noise levels. Each stack
is rendered noise-free in sRGB by the project's simulator from seeds and pictures the
raw training never used (training: seeds below 10 000 and the photos in
:data:`napari_focusdeep.training.data.PHOTO_SOURCES`; validation 10 000; this set
30 000 and up, with the held-out pictures camera, brick, grass, gravel, cell beside
procedural scenes), then unprocessed through a random camera
(:func:`napari_focusdeep.training.unprocess.unprocess_burst`: inverse sRGB curve,
inverse colour matrix and white balance, RGGB mosaic) and given shot + read noise in
linear raw at the simulator's ``low``/``medium``/``high`` presets (or none). The sharp
scenes are blurred by a 1-pixel Gaussian first (``--lens-sigma``), as a lens would:
without it, detail at the sensor's Nyquist limit makes demosaicking error dominate.

Every method produces an sRGB image through the camera's own pipeline
(:func:`~napari_focusdeep.training.unprocess.process`: white balance, colour matrix,
sRGB curve), scored against the ground truth through the same pipeline:

* ``raw focusdeep-any``: the raw network on the packed planes, streamed tile by tile
  exactly as :func:`napari_focusdeep.raw_fusion.fuse_raw` runs it on files
  (``raw_fusion._fuse_packed``), then ``process``;
* every other method fuses the demosaiced frames: each mosaic demosaiced by OpenCV's
  edge-aware Bayer interpolation (``COLOR_BayerBG2RGB_EA`` on 16 bits; LibRaw's AHD,
  which real files go through, is not used because the bursts are never written to
  files), processed to sRGB, then ``fuse(frames, method, register=False)``:
  ``focusdeep-any`` (the shipped RGB network), ``pyramid``, ``laplacian``, ``wavelet``.

The frames carry only the small residual misalignment the training simulates (as
after registration), so nothing is registered. PSNR and SSIM (``skimage.metrics``, data
range 1) on the central 80 %.

Usage::

    python -m benchmarks.raw            # 16 stacks (4 per noise level), 128 px
    python -m benchmarks.raw --quick    # 4 stacks (1 per level), 96 px
    python -m benchmarks.raw --weights runs/raw/focusdeep-any.safetensors
    python -m benchmarks.raw --lens-sigma 0 --out benchmarks/results/raw-aliased.json

Writes ``benchmarks/results/raw.json`` (``raw-quick.json`` with ``--quick``) and prints
Markdown tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import RESULTS_DIR, fmt_table, log, machine, scores, write_json

NOISE_LEVELS = ("none", "low", "medium", "high")
RGB_METHODS = ("focusdeep-any", "pyramid", "laplacian", "wavelet")
RAW = "raw focusdeep-any"
SEED_BASE = 30_000  # raw training uses seeds < 10 000, its validation 10 000, benchmarks.quality 20 000
SIZE, QUICK_SIZE = 128, 96
LENS_SIGMA = 1.0  # px: a lens that resolves a little less than the sensor samples


@dataclass(frozen=True)
class RawSpec:
    """One held-out raw stack: a held-out picture or ``"procedural:KIND"``, rendered noise-free."""

    name: str
    source: str
    frames: int
    psf: str
    max_blur: float
    steps: int = 2


#: Four scenes, each rendered at every noise level (the first is the --quick one).
SCENES: tuple[RawSpec, ...] = (
    RawSpec("camera", "camera", 8, "disk", 6.0),
    RawSpec("cells", "procedural:cells", 6, "gaussian", 7.0),
    RawSpec("gravel", "gravel", 10, "ring", 5.0),
    RawSpec("text", "procedural:text", 8, "disk", 6.0),
)


def _scene(spec: RawSpec, size: int, rng: np.random.Generator) -> np.ndarray:
    """The sharp sRGB scene, made as :func:`benchmarks.quality.render` makes its RGB stacks."""
    from .quality import sharp_scene

    return sharp_scene(spec.source, size, 3, rng)


def render_raw(spec: RawSpec, index: int, noise: str, size: int, lens_sigma: float = 0.0) -> dict[str, Any]:
    """The noisy packed burst, its camera and the sRGB ground truth of one stack.

    The scene, blur and camera depend on ``index`` only, so the four noise levels of a
    scene differ in their noise alone. ``lens_sigma`` (pixels) blurs the sharp scene
    first, as a lens (and an anti-aliasing filter) does before the sensor samples it;
    without it the scenes carry detail up to the sensor's Nyquist limit and
    demosaicking error dominates every score.
    """
    import cv2

    from napari_focusdeep.training.simulate import random_depth, simulate_stack
    from napari_focusdeep.training.unprocess import process, random_camera, unprocess_burst

    seed = SEED_BASE + index
    rng = np.random.default_rng(seed)
    sharp = _scene(spec, size, rng)
    if lens_sigma > 0:
        sharp = np.clip(cv2.GaussianBlur(sharp, (0, 0), lens_sigma, borderType=cv2.BORDER_REFLECT), 0, 1)
    depth = random_depth((size, size), seed=rng, steps=spec.steps)
    sim = simulate_stack(sharp, depth, spec.frames, psf=spec.psf, max_blur=spec.max_blur, shake=0.3,
                         layers=12, seed=rng)  # fmt: skip
    camera = random_camera(np.random.default_rng([seed, 1]))
    raw = unprocess_burst(sim.frames, sim.sharp, camera=camera, noise=None if noise == "none" else noise,
                          seed=np.random.default_rng([seed, 2, NOISE_LEVELS.index(noise)]))  # fmt: skip
    return {"packed": raw.frames, "camera": camera, "truth": process(raw.target, camera), "reference": sim.reference}


def demosaic_frames(packed: np.ndarray, camera: Any) -> np.ndarray:
    """Packed ``(N, h, w, 4)`` -> sRGB ``(N, 2h, 2w, 3)`` float32: OpenCV's edge-aware
    demosaic on 16 bits, then the camera's white balance, matrix and sRGB curve."""
    import cv2

    from napari_focusdeep.io.bayer import unpack
    from napari_focusdeep.training.unprocess import process

    out = []
    for frame in packed:
        mosaic16 = np.rint(np.clip(unpack(frame), 0, 1) * 65535).astype(np.uint16)
        cam = cv2.cvtColor(mosaic16, cv2.COLOR_BayerBG2RGB_EA).astype(np.float32) / 65535  # OpenCV's "BG" is RGGB
        out.append(process(cam, camera))
    return np.stack(out)


def fuse_raw_network(packed: np.ndarray, camera: Any, weights: Path) -> np.ndarray:
    """The raw network on the packed planes, as ``fuse_raw`` streams them; sRGB out."""
    from napari_focusdeep.models.weights import read_config
    from napari_focusdeep.raw_fusion import _fuse_packed
    from napari_focusdeep.training.unprocess import process

    gen = _fuse_packed(packed, weights, read_config(weights), device="cpu", tile=256)
    try:
        while True:
            next(gen)
    except StopIteration as stop:
        linear_cam, _ = stop.value
    return process(linear_cam, camera)


def fuse_rgb(frames: np.ndarray, method: str, reference: int) -> np.ndarray:
    from napari_focusdeep.fusion import fuse

    opts = {"device": "cpu"} if method == "focusdeep-any" else {}
    return fuse(frames, method=method, register=False, reference=reference, **opts).image


def _timed(fn: Any, *args: Any) -> tuple[np.ndarray, float]:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def score_stack(data: dict[str, Any], weights: Path) -> dict[str, dict[str, float]]:
    """PSNR, SSIM and wall seconds of every method on one stack."""
    truth = data["truth"]
    res: dict[str, dict[str, float]] = {}
    image, secs = _timed(fuse_raw_network, data["packed"], data["camera"], weights)
    res[RAW] = dict(zip(("psnr", "ssim"), scores(image, truth)), seconds=secs)
    frames, demosaic_s = _timed(demosaic_frames, data["packed"], data["camera"])
    p, s = scores(frames[data["reference"]], truth)
    res["reference frame (demosaiced)"] = {"psnr": p, "ssim": s}
    for m in RGB_METHODS:
        image, secs = _timed(fuse_rgb, frames, m, data["reference"])
        res[m] = dict(zip(("psnr", "ssim"), scores(image, truth)), seconds=secs + demosaic_s)
    return res


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Means per noise level and overall, and the raw network's margin over the best other method."""
    methods = list(records[0]["results"])
    out: dict[str, Any] = {}
    for level in ("all", *NOISE_LEVELS):
        recs = [r for r in records if level == "all" or r["noise"] == level]
        if not recs:
            continue
        g: dict[str, Any] = {"stacks": len(recs), "methods": {}}
        for m in methods:
            g["methods"][m] = {k: float(np.mean([r["results"][m][k] for r in recs])) for k in ("psnr", "ssim")}
        others = [m for m in methods if m not in (RAW, "reference frame (demosaiced)")]
        best = max(others, key=lambda m: g["methods"][m]["psnr"])
        g["best_other"] = best
        g["raw_minus_best_db"] = g["methods"][RAW]["psnr"] - g["methods"][best]["psnr"]
        if "focusdeep-any" in g["methods"]:
            g["raw_minus_rgb_focusdeep_db"] = g["methods"][RAW]["psnr"] - g["methods"]["focusdeep-any"]["psnr"]
        out[level] = g
    return out


def _signed(value: float | None) -> str:
    return "" if value is None else f"{value:+.2f}"


def tables(summary: dict[str, Any]) -> str:
    methods = list(summary["all"]["methods"])
    rows = []
    for level, g in summary.items():
        rows.append([level, g["stacks"]] + [f"{g['methods'][m]['psnr']:.2f} / {g['methods'][m]['ssim']:.3f}" for m in methods]
                    + [_signed(g.get("raw_minus_rgb_focusdeep_db")), f"{g['raw_minus_best_db']:+.2f} ({g['best_other']})"])
    return "PSNR (dB) / SSIM, sRGB, central 80%\n\n" + fmt_table(
        ["noise", "stacks", *methods, "raw − RGB focusdeep-any", "raw − best other"], rows
    )


def run(
    *, quick: bool = False, size: int | None = None, weights: str | None = None, lens_sigma: float = LENS_SIGMA,
    out: Path | None = None,
) -> dict[str, Any]:
    """Render, fuse and score the held-out raw set; returns (and writes) the results."""
    import cv2
    import torch

    from napari_focusdeep.models.weights import read_config, resolve_weights
    from napari_focusdeep.raw_fusion import raw_weights

    torch.set_num_threads(1)  # a shared machine: one thread each for torch and OpenCV
    cv2.setNumThreads(1)
    wpath = resolve_weights(weights) if weights else raw_weights("focusdeep-any")
    wcfg = read_config(wpath)
    if wcfg.get("input") != "raw":
        raise SystemExit(f"{wpath.name} is not a raw-input network")
    size = size or (QUICK_SIZE if quick else SIZE)
    scenes = SCENES[:1] if quick else SCENES
    out = out or RESULTS_DIR / ("raw-quick.json" if quick else "raw.json")
    result: dict[str, Any] = {
        "benchmark": "raw",
        "command": "python -m benchmarks.raw" + (" --quick" if quick else "")
        + (f" --lens-sigma {lens_sigma:g}" if lens_sigma != LENS_SIGMA else ""),
        "complete": False,
        "size": size,
        "lens_sigma": lens_sigma,
        "seed_base": SEED_BASE,
        "metric": "PSNR (dB) and SSIM (skimage.metrics, data_range=1) of the sRGB image on the central 80%",
        "weights": {"path": str(wpath), "sha256": wcfg["sha256"], "training": wcfg.get("training", {})},
        "demosaic": "OpenCV COLOR_BayerBG2RGB_EA (edge-aware), 16-bit",
        "machine": machine(),
        "stacks": [],
    }
    started = time.perf_counter()
    for i, spec in enumerate(scenes):
        for level in NOISE_LEVELS:
            t = time.perf_counter()
            data = render_raw(spec, i, level, size, lens_sigma)
            rec = {"scene": asdict(spec), "noise": level, "seed": SEED_BASE + i, "results": score_stack(data, wpath)}
            result["stacks"].append(rec)
            line = "  ".join(f"{m} {v['psnr']:.2f}" for m, v in rec["results"].items())
            log(f"{spec.name:8s} noise {level:6s} ({time.perf_counter() - t:.0f}s): {line}")
            write_json(out, result)  # after every stack: an interrupted run keeps what it measured
    result["complete"] = True
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["load_average_end"] = machine()["load_average"]
    result["summary"] = summarise(result["stacks"])
    result["table"] = tables(result["summary"])
    write_json(out, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.raw", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one scene at every noise level, 96 px")
    ap.add_argument("--size", type=int, help=f"side of the square stacks (default {SIZE}, {QUICK_SIZE} with --quick)")
    ap.add_argument("--weights", help="raw-input weights (default: the installed focusdeep-any-raw)")
    ap.add_argument("--lens-sigma", type=float, default=LENS_SIGMA,
                    help="Gaussian blur (px) of the sharp scenes before sampling (default %(default)s; 0: aliased)")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/raw[-quick].json)")
    args = ap.parse_args(argv)
    try:
        res = run(quick=args.quick, size=args.size, weights=args.weights, lens_sigma=args.lens_sigma, out=args.out)
    except KeyboardInterrupt:
        return 130
    print(res["table"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
