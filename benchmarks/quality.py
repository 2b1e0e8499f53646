"""Held-out simulated quality benchmark: PSNR/SSIM of every fusion method against ground truth.

The set is rendered with the project's simulator (:mod:`napari_focusdeep.training.simulate`)
from seeds the training never uses (training draws seeds below 10 000, its validation
10 000; this set uses 20 000 and up) and includes textures the pre-training never saw:
the scikit-image images in :data:`napari_focusdeep.training.data.HELD_OUT_SOURCES`
(camera, brick, grass, gravel, cell), beside procedural scenes. It spans noise from
clean to high ISO, 5 to 60 frames, focus breathing 0 or 2-3 % (those stacks are
registered before fusion), gray and RGB, 8- and 16-bit, disk/Gaussian/ring PSFs and
occluding depth edges.

The stacks are 128x128 (the paper's training crop size): the deep networks cost one to
four CPU minutes per megapixel-frame on the shared 2-core machine this was built on,
and the whole set must run in minutes. ``--size`` renders larger ones.

Every method fuses every stack with
``fuse(frames, method=..., register=breathing > 0, reference=sim.reference, device="cpu")``
and is scored on the central 80 % (PSNR and SSIM from ``skimage.metrics``, data range 1;
``bias``, the mean of result minus ground truth, is recorded beside them).

Usage::

    python -m benchmarks.quality            # 12 stacks, 10-20 min on 2 shared cores
    python -m benchmarks.quality --quick    # 4 of them (one per noise level), 2-4 min
    python -m benchmarks.quality --weights focusdeep-any=runs/x/focusdeep-any.safetensors

Writes ``benchmarks/results/quality.json`` (``quality-quick.json`` with ``--quick``) and
prints Markdown tables.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ._common import RESULTS_DIR, central, fmt_table, log, machine, scores, write_json

CLASSICAL = ("pyramid", "laplacian", "wavelet", "pyramid-max")
#: Methods with non-default options, scored as methods of their own: ``pyramid-max`` is
#: ``pyramid`` with ``noise=0``, the classical hard max selection of the paper's baselines
#: and of most focus-stacking tools (ours averages where no frame stands above the noise).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {"pyramid-max": ("pyramid", {"noise": 0.0})}
DEEP = ("focusdeep-any", "focusdeep", "unet")
NOISE_GROUPS = ("none", "low", "medium", "high")
SEED_BASE = 20_000  # training uses seeds < 10 000, its validation set 10 000


@dataclass(frozen=True)
class StackSpec:
    """One stack of the held-out set.

    ``source`` is a held-out scikit-image picture or ``"procedural:KIND"``;
    ``channels`` 1 (gray) or 3 (RGB; a gray picture is tinted by a smooth random
    colour field, so RGB stacks also carry held-out textures).
    """

    name: str
    source: str
    channels: int
    dtype: str
    noise: str
    frames: int
    breathing: float
    psf: str
    max_blur: float
    steps: int = 2

    @property
    def register(self) -> bool:
        return self.breathing > 0


# Three stacks per noise level; (quick) marks the one-per-level subset of --quick.
STACKS: tuple[StackSpec, ...] = (
    StackSpec("camera-gray8", "camera", 1, "uint8", "none", 8, 0.0, "disk", 6.0),  # quick
    StackSpec("brick-gray16", "brick", 1, "uint16", "low", 12, 0.02, "gaussian", 7.0),
    StackSpec("grass-rgb8", "grass", 3, "uint8", "medium", 10, 0.0, "ring", 5.0),
    StackSpec("gravel-gray8", "gravel", 1, "uint8", "high", 15, 0.03, "disk", 6.0),
    StackSpec("cell-gray16", "cell", 1, "uint16", "high", 20, 0.0, "gaussian", 8.0),
    StackSpec("cells-rgb8", "procedural:cells", 3, "uint8", "low", 5, 0.0, "disk", 6.0),  # quick
    StackSpec("fibres-gray16", "procedural:fibres", 1, "uint16", "medium", 30, 0.025, "ring", 6.0),
    StackSpec("text-rgb8", "procedural:text", 3, "uint8", "high", 8, 0.02, "gaussian", 5.0),  # quick
    StackSpec("fractal-rgb16", "procedural:fractal", 3, "uint16", "none", 60, 0.02, "disk", 7.0),
    StackSpec("camera-rgb16", "camera", 3, "uint16", "medium", 6, 0.0, "disk", 6.0),  # quick
    StackSpec("mixed-rgb8", "procedural:mixed", 3, "uint8", "none", 12, 0.03, "ring", 6.0),
    StackSpec("brick-rgb8", "brick", 3, "uint8", "low", 15, 0.0, "gaussian", 6.0),
)
QUICK = ("camera-gray8", "cells-rgb8", "camera-rgb16", "text-rgb8")
SIZE = 128


def _tint(gray: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """RGB from a gray picture: multiply by a smooth random colour field in [0.55, 1]."""
    import cv2

    h, w = gray.shape
    coarse = rng.uniform(0.55, 1.0, size=(4, 4, 3)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return np.clip(gray[..., None] * field, 0, 1).astype(np.float32)


def sharp_scene(source: str, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """The sharp ``size`` x ``size`` image of a held-out stack: a procedural scene
    (``"procedural:<kind>"``), or a scikit-image picture as gray, cropped at random and
    tinted by a smooth colour field when ``channels`` is 3."""
    import cv2

    from napari_focusdeep.training.simulate import image_source, synthetic_scene

    if source.startswith("procedural:"):
        sharp, _ = synthetic_scene((size, size), channels=channels, kind=source.split(":", 1)[1], seed=rng)
        return sharp
    img, _ = image_source(source)
    if img.ndim == 3:
        img = img[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    # a random square crop 1.5x the target side, shrunk: natural texture scale, no distortion
    side = min(img.shape[0], img.shape[1], int(size * 1.5))
    y = int(rng.integers(0, img.shape[0] - side + 1))
    x = int(rng.integers(0, img.shape[1] - side + 1))
    gray = cv2.resize(np.ascontiguousarray(img[y : y + side, x : x + side]), (size, size), interpolation=cv2.INTER_AREA)
    return _tint(gray, rng) if channels == 3 else gray


def render(spec: StackSpec, index: int, size: int = SIZE) -> Any:
    """Render the stack ``spec`` (seed ``SEED_BASE + index``) at ``size`` x ``size``."""
    from napari_focusdeep.training.simulate import random_depth, simulate_stack

    seed = SEED_BASE + index
    rng = np.random.default_rng(seed)
    sharp = sharp_scene(spec.source, size, spec.channels, rng)
    depth = random_depth((size, size), seed=rng, steps=spec.steps)
    return simulate_stack(
        sharp,
        depth,
        spec.frames,
        psf=spec.psf,
        max_blur=spec.max_blur,
        breathing=spec.breathing,
        noise=None if spec.noise == "none" else spec.noise,
        layers=12,
        dtype=np.dtype(spec.dtype),
        seed=rng,
    )


def available_methods(requested: Sequence[str] | None, weights: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The methods to score and, for each one skipped, why (deep methods need weights)."""
    from napari_focusdeep.fusion.registry import get_method

    names = list(requested) if requested else [*CLASSICAL, *DEEP]
    use, skipped = [], {}
    for name in names:
        try:
            meth = get_method(VARIANTS.get(name, (name, {}))[0])
            if meth.kind == "deep":
                # resolves the weights (installed default or the one given) and reads its config
                meth.halo(**{**meth.options, "weights": weights.get(name)})
        except Exception as exc:  # noqa: BLE001 - any reason is reported, the run goes on
            skipped[name] = str(exc).splitlines()[0]
            continue
        use.append(name)
    return use, skipped


def fuse_scored(sim: Any, spec: StackSpec, method: str, weights: dict[str, str]) -> dict[str, float]:
    """Fuse one stack with one method; PSNR, SSIM and wall seconds."""
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.fusion.core import to_float
    from napari_focusdeep.fusion.registry import get_method

    method, opts = VARIANTS.get(method, (method, {}))
    opts = dict(opts)
    if get_method(method).kind == "deep":
        opts["device"] = "cpu"
        if method in weights:
            opts["weights"] = weights[method]
    t = time.perf_counter()
    res = fuse(sim.frames, method=method, register=spec.register, reference=sim.reference, **opts)
    seconds = time.perf_counter() - t
    image = to_float(res.image)
    psnr, ssim = scores(image, sim.sharp)
    # the mean error shows a bias (dark noisy stacks: noise clipped at black, then gamma)
    bias = float(np.mean(central(np.clip(image, 0, 1), 0.8) - central(np.asarray(sim.sharp, np.float32), 0.8)))
    return {"psnr": psnr, "ssim": ssim, "bias": bias, "seconds": seconds}


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Means per group, the best classical method per group and focusdeep-any's margin over it."""
    groups: dict[str, list[dict[str, Any]]] = {"all": records}
    for level in NOISE_GROUPS:
        groups[f"noise={level}"] = [r for r in records if r["spec"]["noise"] == level]
    groups["gray"] = [r for r in records if r["spec"]["channels"] == 1]
    groups["rgb"] = [r for r in records if r["spec"]["channels"] == 3]
    groups["held-out pictures"] = [r for r in records if not r["spec"]["source"].startswith("procedural:")]
    groups["procedural"] = [r for r in records if r["spec"]["source"].startswith("procedural:")]
    groups["breathing"] = [r for r in records if r["spec"]["breathing"] > 0]
    groups["no breathing"] = [r for r in records if r["spec"]["breathing"] == 0]
    out: dict[str, Any] = {}
    for gname, recs in groups.items():
        if not recs:
            continue
        g: dict[str, Any] = {"stacks": len(recs), "methods": {}}
        for m in [*methods, "reference-frame"]:
            vals = [r["results"][m] for r in recs if m in r["results"]]
            g["methods"][m] = {
                "psnr": _mean([v["psnr"] for v in vals]),
                "ssim": _mean([v["ssim"] for v in vals]),
                "seconds": _mean([v["seconds"] for v in vals if "seconds" in v]),
            }
        classical = [m for m in methods if m in CLASSICAL]
        if classical:
            best = max(classical, key=lambda m: g["methods"][m]["psnr"])
            g["best_classical"] = best
            for deep in (m for m in methods if m in DEEP):
                d = g["methods"][deep]["psnr"] - g["methods"][best]["psnr"]
                # per stack: against the best classical method on that very stack (an oracle choice)
                wins = sum(
                    r["results"][deep]["psnr"] > max(r["results"][c]["psnr"] for c in classical) for r in recs
                )
                g.setdefault("deep_vs_best_classical", {})[deep] = {"psnr_diff_db": d, "stacks_won": wins}
        out[gname] = g
    return out


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """Issue 4's targets for focusdeep-any: +2 dB over the best classical on average, +4 dB at high noise."""
    res: dict[str, Any] = {}
    for key, group, want in (("average", "all", 2.0), ("high_noise", "noise=high", 4.0)):
        diff = summary.get(group, {}).get("deep_vs_best_classical", {}).get("focusdeep-any")
        if diff is None:
            continue
        res[key] = {
            "best_classical": summary[group]["best_classical"],
            "psnr_diff_db": diff["psnr_diff_db"],
            "target_db": want,
            "met": bool(diff["psnr_diff_db"] >= want),
        }
    return res


def tables(records: list[dict[str, Any]], summary: dict[str, Any], methods: list[str]) -> str:
    cols = [*methods, "reference-frame"]
    rows = []
    for r in records:
        s = r["spec"]
        desc = f"{s['source']}, {'gray' if s['channels'] == 1 else 'RGB'} {s['dtype']}, {s['frames']} fr, " \
               f"noise {s['noise']}, breathing {s['breathing'] * 100:g}%, {s['psf']}"
        rows.append([s["name"], desc] + [f"{r['results'][m]['psnr']:.2f} / {r['results'][m]['ssim']:.3f}" for m in cols])
    per_stack = fmt_table(["stack", "conditions", *cols], rows)
    grows = []
    for gname, g in summary.items():
        row = [gname, g["stacks"]] + [f"{g['methods'][m]['psnr']:.2f} / {g['methods'][m]['ssim']:.3f}" for m in cols]
        d = g.get("deep_vs_best_classical", {}).get("focusdeep-any")
        row += [g.get("best_classical"), None if d is None else f"{d['psnr_diff_db']:+.2f} ({d['stacks_won']}/{g['stacks']})"]
        grows.append(row)
    grouped = fmt_table(["group", "stacks", *cols, "best classical", "focusdeep-any − best (won)"], grows)
    trows = [[m, g["methods"][m]["seconds"]] for g in [summary["all"]] for m in methods]
    timing = fmt_table(["method", "mean wall s per stack (shared 2-core CPU)"], trows)
    return "PSNR (dB) / SSIM, central 80%\n\n" + per_stack + "\n\nMeans\n\n" + grouped + "\n\n" + timing


def run(
    *,
    quick: bool = False,
    size: int = SIZE,
    methods: Sequence[str] | None = None,
    weights: dict[str, str] | None = None,
    stacks: Sequence[str] | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Render, fuse and score; returns (and writes) the result dictionary."""
    weights = dict(weights or {})
    use, skipped = available_methods(methods, weights)
    for name, why in skipped.items():
        log(f"skipping {name}: {why}")
    chosen = [s for s in STACKS if (stacks is None or s.name in stacks) and (not quick or s.name in QUICK)]
    if not chosen:
        raise SystemExit("no stacks selected")
    out = out or RESULTS_DIR / ("quality-quick.json" if quick else "quality.json")
    info = machine()
    result: dict[str, Any] = {
        "benchmark": "quality",
        "command": "python -m benchmarks.quality" + (" --quick" if quick else ""),
        "complete": False,
        "size": size,
        "seed_base": SEED_BASE,
        "metric": "PSNR (dB) and SSIM (skimage.metrics, data_range=1) on the central 80%",
        "methods": use,
        "skipped": skipped,
        "weights": {m: weights.get(m, "installed default") for m in use if m in DEEP},
        "machine": info,
        "stacks": [],
    }
    started = time.perf_counter()
    try:
        for spec in chosen:
            index = STACKS.index(spec)
            t = time.perf_counter()
            sim = render(spec, index, size)
            log(f"[{len(result['stacks']) + 1}/{len(chosen)}] {spec.name}: rendered {spec.frames} frames in {time.perf_counter() - t:.1f}s")
            from napari_focusdeep.fusion.core import to_float

            ref = to_float(sim.frames[sim.reference])
            psnr, ssim = scores(ref, sim.sharp)
            rec: dict[str, Any] = {"spec": asdict(spec), "seed": SEED_BASE + index, "reference": sim.reference,
                                   "results": {"reference-frame": {"psnr": psnr, "ssim": ssim}}}
            for m in use:
                rec["results"][m] = fuse_scored(sim, spec, m, weights)
                r = rec["results"][m]
                log(f"    {m:14s} {r['psnr']:6.2f} dB  SSIM {r['ssim']:.3f}  {r['seconds']:6.1f}s")
            result["stacks"].append(rec)
            write_json(out, result)  # after every stack: an interrupted run keeps what it measured
    except KeyboardInterrupt:
        log(f"interrupted; {len(result['stacks'])} stacks kept in {out}")
        result["interrupted"] = True
        if result["stacks"]:
            result["summary"] = summarise(result["stacks"], use)
        write_json(out, result)
        raise
    result["complete"] = True
    result["elapsed_s"] = time.perf_counter() - started
    result["machine"]["load_average_end"] = machine()["load_average"]
    result["summary"] = summarise(result["stacks"], use)
    result["targets"] = targets(result["summary"])
    result["table"] = tables(result["stacks"], result["summary"], use)
    write_json(out, result)
    return result


def _weights_arg(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--weights expects METHOD=PATH, got {item!r}")
        k, v = item.split("=", 1)
        weights[k.strip()] = v.strip()
    return weights


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.quality", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)} (one per noise level)")
    ap.add_argument("--size", type=int, default=SIZE, help="side of the square stacks in pixels (default %(default)s)")
    ap.add_argument("--methods", help="comma-separated methods (default: all with weights installed)")
    ap.add_argument("--stacks", help="comma-separated stack names (default: all)")
    ap.add_argument("--weights", action="append", default=[], metavar="METHOD=PATH",
                    help="score a deep method with these weights instead of the installed ones")
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/quality[-quick].json)")
    args = ap.parse_args(argv)
    try:
        res = run(
            quick=args.quick,
            size=args.size,
            methods=args.methods.split(",") if args.methods else None,
            weights=_weights_arg(args.weights),
            stacks=args.stacks.split(",") if args.stacks else None,
            out=args.out,
        )
    except KeyboardInterrupt:
        return 130
    print(res["table"])
    for key, t in res.get("targets", {}).items():
        print(f"target {key}: focusdeep-any − {t['best_classical']} = {t['psnr_diff_db']:+.2f} dB "
              f"(target +{t['target_db']:g} dB: {'met' if t['met'] else 'NOT met'})")
    log(f"wrote {args.out or RESULTS_DIR / ('quality-quick.json' if args.quick else 'quality.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
