"""Fine-tuning on a domain pre-training never saw: a mirror lens's "donut" defocus PSF.

``python -m benchmarks.finetune [--minutes 10] [--psf donut] ...``

What it does, end to end through the user-facing paths:

1. renders ``--train-stacks`` focus stacks with ``--psf`` (training photo sources
   and procedural scenes, seeds 0, 1, ...) as a lab's folder: 16-bit PNG frames and
   ``ground_truth.tif`` per sub-folder, low noise (``--inject`` adds noise on the fly,
   as for a lab's low-noise stacks) with focus breathing and shake, so the loader's
   registration has work to do;
2. renders ``--held-out`` stacks the same way but from other scenes (held-out
   photo sources, seeds from 50 000) with ``--noise`` baked in (default: a random
   Brooks et al. level per stack; ``low``/``medium``/``high``: a lab's fixed camera
   setting);
3. scores the shipped ``focusdeep-any`` and ``pyramid`` on them with
   ``fuse(..., register=True)``, PSNR against the ground truth over the region every
   registered frame covers (less an 8-pixel border), and the shipped model on the
   same scenes rendered with the ``disk`` PSF it was trained with (the size of the
   domain gap);
4. fine-tunes with ``training.train`` on the folder (``--data``; the shipped weights
   are the start) for ``--minutes`` of this process's CPU time (``--clock cpu``:
   the machine's other load does not shorten it) on ``--threads`` threads;
5. scores the fine-tuned weights on the held-out stacks and prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

HELD_OUT_SEED = 50_000


def render_stack(
    seed: int, *, psf: str, size: int, frames: int, photos: Sequence[str], noise: object
) -> Any:
    """One ``size`` x ``size`` RGB focus stack of a photo crop or a procedural scene."""
    from napari_focusdeep.training.simulate import image_source, random_depth, simulate_stack, synthetic_scene

    rng = np.random.default_rng([seed, 7])
    if photos and rng.random() < 0.5:
        name = str(rng.choice(list(photos)))
        img, depth = image_source(name, seed=int(rng.integers(1 << 30)))
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=-1)
        img = img[..., :3]
        h, w = img.shape[:2]
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        sharp = np.ascontiguousarray(img[y : y + size, x : x + size])
        if name != "motorcycle":  # its depth is the real disparity; others get fresh random depth
            depth = random_depth((size, size), seed=rng, steps=int(rng.integers(0, 4)))
        else:
            depth = depth[y : y + size, x : x + size]
            depth = (depth - depth.min()) / max(float(np.ptp(depth)), 1e-6)
    else:
        kind = str(rng.choice(["mixed", "fractal", "cells", "fibres", "text"]))
        sharp, depth = synthetic_scene((size, size), channels=3, kind=kind, seed=rng)
    return simulate_stack(
        sharp,
        depth,
        frames,
        psf=psf,
        max_blur=float(rng.uniform(3.0, 9.0)),
        breathing=float(rng.uniform(0.0, 0.02)),
        shake=float(rng.uniform(0.0, 0.7)),
        noise=noise,
        reference="middle",
        layers=12,
        dtype=np.uint16,
        seed=rng,
    )


def write_lab_folder(folder: Path, seeds: Sequence[int], *, psf: str, size: int, frames: int, ground_truth: bool = True) -> Path:
    """Render stacks into ``folder/stack_SEED/`` as a lab would hand them over."""
    from napari_focusdeep.io import write_image
    from napari_focusdeep.training.data import PHOTO_SOURCES

    folder.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        sim = render_stack(seed, psf=psf, size=size, frames=frames, photos=PHOTO_SOURCES, noise="low")
        d = folder / f"stack_{seed:03d}"
        d.mkdir(exist_ok=True)
        for i, frame in enumerate(sim.frames):
            write_image(d / f"frame_{i:02d}.png", frame, overwrite=True)
        if ground_truth:
            write_image(d / "ground_truth.tif", sim.sharp, overwrite=True)
    return folder


def held_out(n: int, *, psf: str, size: int, frames: int, noise: str = "random") -> list[Any]:
    """Held-out stacks: other scenes and photos, ``noise`` baked in (random: Brooks et al.)."""
    from napari_focusdeep.training.data import HELD_OUT_SOURCES

    return [
        render_stack(HELD_OUT_SEED + i, psf=psf, size=size, frames=frames, photos=HELD_OUT_SOURCES, noise=noise)
        for i in range(n)
    ]


def score(stacks: Sequence[Any], method: str, weights: str | None = None, border: int = 8) -> float:
    """Mean PSNR of ``fuse(stack, method, register=True)`` against the ground truth."""
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.fusion.core import to_float
    from napari_focusdeep.training.data import psnr

    out = []
    for sim in stacks:
        opts = {"weights": weights, "device": "cpu"} if weights else {}
        res = fuse(sim.frames, method=method, register=True, reference=sim.reference, **opts)
        y0, y1, x0, x1 = res.valid_region
        y0, y1, x0, x1 = y0 + border, y1 - border, x0 + border, x1 - border
        img = to_float(res.image)[y0:y1, x0:x1]
        out.append(psnr(img, sim.sharp[y0:y1, x0:x1]))
    return float(np.mean(out))


def _parts(weights: str) -> set[str]:
    """Top-level parts of the network in ``weights`` (what ``--freeze`` can name)."""
    from napari_focusdeep.models.weights import load_state

    return {k.split(".", 1)[0] for k in load_state(weights)}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.finetune", description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="fine-tuning budget in CPU minutes (default 10)")
    ap.add_argument("--psf", default="donut", help="the unseen PSF (default donut)")
    ap.add_argument("--train-stacks", type=int, default=10)
    ap.add_argument("--held-out", type=int, default=12)
    ap.add_argument("--size", type=int, default=192, help="stack side in pixels")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (the trainer's fine-tuning default)")
    ap.add_argument(
        "--freeze", default="extract,align",
        help="parts kept fixed, those the network has ('' trains everything; a network without alignment has no align)",
    )
    ap.add_argument("--val-every", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument(
        "--noise", default="random", choices=["random", "low", "medium", "high"],
        help="noise of the held-out stacks: random Brooks levels, or a lab's fixed camera setting",
    )
    ap.add_argument(
        "--inject", default="random", choices=["random", "none", "low", "medium", "high"],
        help="noise injected into the (low-noise) training crops on the fly",
    )
    ap.add_argument("--pseudo-gt", default="none", choices=["none", "pyramid"], help="train on pyramid pseudo-GT instead of the true one")
    ap.add_argument("--work", default=None, help="folder for the rendered data and the run (default: a temporary one)")
    ap.add_argument("--quick", action="store_true", help="a 1-minute version (3 + 3 stacks)")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.train_stacks, a.held_out = min(a.minutes, 1.0), 3, 3

    import tempfile

    import torch

    from napari_focusdeep.models.weights import default_weights
    from napari_focusdeep.training.train import TrainConfig, train

    torch.set_num_threads(a.threads)
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="focusdeep-finetune-"))
    say = lambda s: print(f"[{time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.monotonic()
    say(f"rendering {a.train_stacks} training stacks ({a.psf} PSF) into {work / 'data'}")
    write_lab_folder(work / "data", range(a.train_stacks), psf=a.psf, size=a.size, frames=a.frames, ground_truth=a.pseudo_gt == "none")
    say(f"rendering {a.held_out} held-out stacks")
    test = held_out(a.held_out, psf=a.psf, size=a.size, frames=a.frames, noise=a.noise)
    test_known = held_out(a.held_out, psf="disk", size=a.size, frames=a.frames, noise=a.noise)
    shipped = str(default_weights("focusdeep-any"))
    parts = _parts(shipped)
    freeze = tuple(x for x in a.freeze.split(",") if x and x in parts)
    say("scoring the shipped weights and pyramid")
    before = score(test, "focusdeep-any", shipped)
    pyramid = score(test, "pyramid")
    before_known = score(test_known, "focusdeep-any", shipped)
    pyramid_known = score(test_known, "pyramid")
    say(f"held-out {a.psf}: shipped {before:.2f} dB, pyramid {pyramid:.2f} dB; same scenes with the disk PSF: shipped {before_known:.2f} dB")
    cfg = TrainConfig(
        architecture="focusdeep-any", steps=100_000, minutes=a.minutes, clock="cpu", batch_size=a.batch_size,
        lr=a.lr, min_lr=a.lr / 20, crop=a.crop, val_every=a.val_every, val_count=8, device="cpu",
        noise={"random": True, "none": False}.get(a.inject, a.inject),
        data=str(work / "data"), pseudo_gt=None if a.pseudo_gt == "none" else a.pseudo_gt,
        freeze=freeze, seed=0,
    )
    cpu0, wall0 = time.process_time(), time.monotonic()
    result = train(cfg, work / "run", resume=False, log=say)
    cpu_s, wall_s = time.process_time() - cpu0, time.monotonic() - wall0
    after = score(test, "focusdeep-any", str(result.weights))
    after_known = score(test_known, "focusdeep-any", str(result.weights))
    record = {
        "benchmark": "finetune",
        "psf": a.psf,
        "held_out_stacks": a.held_out,
        "train_stacks": a.train_stacks,
        "size": a.size,
        "frames": a.frames,
        "pseudo_gt": a.pseudo_gt,
        "held_out_noise": a.noise,
        "injected_noise": a.inject,
        "psnr_before": round(before, 2),
        "psnr_after": round(after, 2),
        "gain_db": round(after - before, 2),
        "psnr_pyramid": round(pyramid, 2),
        "disk_psf_psnr_before": round(before_known, 2),
        "disk_psf_psnr_after": round(after_known, 2),
        "disk_psf_psnr_pyramid": round(pyramid_known, 2),
        "steps": result.step,
        "best_val_psnr": result.best_psnr,
        "stopped": result.stopped,
        "train_cpu_s": round(cpu_s, 1),
        "train_wall_s": round(wall_s, 1),
        "total_wall_s": round(time.monotonic() - t0, 1),
        "threads": a.threads,
        "frozen": list(freeze),
        "config": {k: v for k, v in vars(a).items()},
        "weights": str(result.weights),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "command": "python -m benchmarks.finetune " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    print(json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
