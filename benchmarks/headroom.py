"""How much a denoiser after classical fusion gains on the held-out set's noisy stacks.

The training issue asks the network to beat the best classical method by 4 dB at high
noise. The best classical method here is the noise-aware ``pyramid``, which already
averages noise away wherever frames agree. This script measures what a well-known
single-image denoiser adds on top of it: scikit-image's non-local means on the
``pyramid`` result, with its noise level estimated from that result
(``estimate_sigma``) and the filter strength ``h`` chosen *per stack with the ground
truth* among :data:`STRENGTHS` x sigma, 0 meaning no denoising: an optimistic
(oracle-tuned) figure for this denoiser, never below ``pyramid`` itself. It is a yardstick for the deep model's denoising, not a fusion method.

Usage::

    python -m benchmarks.headroom        # the 9 noisy stacks of benchmarks.quality, about a minute

Writes ``benchmarks/results/headroom.json`` and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import numpy as np

from ._common import RESULTS_DIR, fmt_table, log, machine, scores, write_json
from .quality import STACKS, render

#: ``h / sigma`` tried per stack; 0 leaves the image as it is.
STRENGTHS = (0.0, 0.4, 0.6, 0.8, 1.0, 1.4, 2.0)


def nlm_gain(image: np.ndarray, sharp: np.ndarray) -> dict[str, Any]:
    """PSNR of ``image`` and of its best non-local-means denoising, against ``sharp``."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    axis = -1 if image.ndim == 3 else None
    sigma = float(np.mean(estimate_sigma(image, channel_axis=axis)))
    before = scores(image, sharp)[0]
    after = {
        k: scores(denoise_nl_means(image, h=k * sigma, sigma=sigma, patch_size=5, patch_distance=6,
                                   fast_mode=True, channel_axis=axis), sharp)[0] if k else before
        for k in STRENGTHS
    }
    best = max(after, key=after.get)
    return {"sigma": sigma, "psnr": before, "psnr_nlm": after[best], "h_over_sigma": best, "gain_db": after[best] - before}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.headroom", description=__doc__.split("\n\n")[0])
    ap.parse_args(argv)
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.fusion.core import to_float

    rows = []
    for index, spec in enumerate(STACKS):
        if spec.noise == "none":
            continue
        sim = render(spec, index)
        res = fuse(sim.frames, method="pyramid", register=spec.register, reference=sim.reference)
        row = {"stack": spec.name, "noise": spec.noise, **nlm_gain(to_float(res.image).astype(np.float64), sim.sharp)}
        log(f"{spec.name}: {row['psnr']:.2f} -> {row['psnr_nlm']:.2f} dB")
        rows.append(row)
    means = {level: float(np.mean([r["gain_db"] for r in rows if r["noise"] == level]))
             for level in ("low", "medium", "high")}
    write_json(RESULTS_DIR / "headroom.json", {"machine": machine(), "stacks": rows, "mean_gain_db": means})
    table = [[r["stack"], r["noise"], f"{r['psnr']:.2f}", f"{r['psnr_nlm']:.2f}", f"{r['gain_db']:+.2f}",
              f"{r['h_over_sigma']:.1f}"] for r in rows]
    print(fmt_table(["stack", "noise", "pyramid dB", "+ NLM dB", "gain", "h / sigma"], table))
    print("\nmean gain: " + ", ".join(f"{k} {v:+.2f} dB" for k, v in means.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
