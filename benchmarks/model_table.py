"""Parameter counts, receptive fields and compute of the networks (the table in docs/models.md).

For the paper's configuration (N = 30, 64 features, 5 front blocks, 5 LRCN groups of 4)
and the shipped weights' configurations: trainable parameters
(:func:`napari_focusdeep.models.count_parameters`), the tiling halo
(:func:`napari_focusdeep.models.receptive.model_halo`), and the multiply-add work of
streamed inference (``torch.utils.flop_counter``, convolutions and matrix products; the
bilinear sampling of the deformable convolutions is not counted) per megapixel for each
frame pushed and once per tile at the end.

Usage: ``python -m benchmarks.model_table [--out benchmarks/results/models.json]``
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from ._common import RESULTS_DIR, fmt_table, log, write_json

PAPER = [
    ("FocusDeep, paper (N=30)", "focusdeep", {"n_frames": 30}),
    ("FocusDeep-any, paper width", "focusdeep-any", {}),
    ("UNet, paper (N=30)", "unet", {"n_frames": 30}),
]
PROBE = 32  # side of the tile the work is counted on (scaled to one megapixel)


def _flops(model: Any, n_frames: int) -> tuple[float, float]:
    """GFLOP (2 per multiply-add) per megapixel of the image: per pushed frame, and at finish.

    A raw network's input is packed 2x2 (its ``PROBE`` x ``PROBE`` planes are a
    ``2 PROBE`` x ``2 PROBE`` image), so its work is counted per megapixel of the mosaic.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    c = model.in_channels
    x = torch.rand(1, c, PROBE, PROBE)
    with torch.inference_mode():
        stream = model.stream((1, c, PROBE, PROBE))
        stream.push(x)  # the first frame aligns to itself: count a later one
        counter = FlopCounterMode(display=False)
        with counter:
            stream.push(x)
        push = counter.get_total_flops()
        for _ in range(max(0, n_frames - 2)):
            stream.push(x)
        counter = FlopCounterMode(display=False)
        with counter:
            stream.finish()
        fin = counter.get_total_flops()
    side = PROBE * (2 if model.config.get("stem") == "raw" else 1)
    scale = 1e6 / side**2 / 1e9
    return push * scale, fin * scale


def rows() -> list[dict[str, Any]]:
    from napari_focusdeep.models import build_model, count_parameters
    from napari_focusdeep.models.receptive import model_halo
    from napari_focusdeep.models.weights import WEIGHTS_DIR, fold_weight_norm, read_config

    configs = list(PAPER)
    for cfg_path in sorted(WEIGHTS_DIR.glob("*.json")):
        cfg = read_config(cfg_path.with_suffix(".safetensors"))
        configs.append((f"{cfg['name']} (shipped)", cfg["architecture"], dict(cfg["kwargs"])))
    out = []
    for label, arch, kwargs in configs:
        log(f"model table: {label}")
        model = build_model(arch, **kwargs).eval()
        n = model.n_frames or 2
        params = count_parameters(model)
        # inference folds weight norm into plain weights (load_model does the same)
        push, fin = _flops(fold_weight_norm(model), n)
        cfg = model.config
        out.append({
            "model": label,
            "architecture": arch,
            "n_frames": model.n_frames,
            "features": cfg.get("features"),
            "config": cfg,
            "params": params,
            "halo": model_halo(arch, **kwargs),
            "gflop_per_mp_frame": push,
            "gflop_per_mp_finish": fin,
        })
    return out


def table(data: list[dict[str, Any]]) -> str:
    body = []
    for r in data:
        c = r["config"]
        if r["architecture"] == "unet":
            shape = f"features {c['features']}, depth {c['depth']}"
        else:
            shape = f"nf {c['features']}, {c['front_blocks']} front WARB{'s' if c['front_blocks'] != 1 else ''}, LRCN {c['groups']}x{c['blocks_per_group']}"
            if c.get("base") == "pyramid":
                shape += ", pyramid base"
            if c.get("scale", 1) > 1:
                shape += f", 1/{c['scale']} resolution"
            if not c.get("align", True):
                shape += ", no alignment"
            if c.get("noise_input"):
                shape += ", noise input"
            if c.get("stem") == "raw":
                shape += ", raw stem (per MP of mosaic)"
        body.append([r["model"], r["n_frames"] or "any", shape, f"{r['params'] / 1e6:.2f} M", r["halo"],
                     f"{r['gflop_per_mp_frame']:.0f}", f"{r['gflop_per_mp_finish']:.0f}"])
    return fmt_table(["model", "N", "size", "parameters", "halo (px)", "GFLOP / MP per frame", "GFLOP / MP at finish"], body)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.model_table", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="result JSON (default benchmarks/results/models[-quick].json)")
    ap.add_argument("--quick", action="store_true",
                    help="same table (it is quick already), written to models-quick.json like the other quick results")
    args = ap.parse_args(argv)
    args.out = args.out or RESULTS_DIR / ("models-quick.json" if args.quick else "models.json")
    data = rows()
    text = table(data)
    write_json(args.out, {"benchmark": "model_table", "command": "python -m benchmarks.model_table",
                          "probe_tile": PROBE, "models": data, "table": text})
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
