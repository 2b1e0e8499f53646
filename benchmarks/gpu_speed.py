"""CUDA checks and throughput of the deep models (run by scripts/gpu_run.sh on a GPU machine).

Prints one JSON object per line:
- ``deform_check``: our grid_sample deformable convolution against torchvision's op;
- ``throughput``: megapixel-frames per second of each model's forward pass with autocast
  (fp16 and bf16) at the shipped size, frames streamed as in inference;
- ``fuse``: wall time of ``fuse(method=...)`` on a 15-frame 2000x1500 synthetic stack on the GPU,
  tiles, blending and transfers included.

Usage: python benchmarks/gpu_speed.py [--device cuda] [--weights-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch


def emit(**record: object) -> None:
    print(json.dumps(record), flush=True)


def deform_check(device: torch.device) -> None:
    from napari_focusdeep.models.deform import deform_conv2d

    try:
        from torchvision.ops import deform_conv2d as tv_deform
    except Exception as exc:  # noqa: BLE001 - report whatever stops the import
        emit(check="deform", skipped=f"torchvision unavailable: {exc}")
        return
    g = torch.Generator(device="cpu").manual_seed(0)
    for og in (1, 8):
        x = torch.randn(2, 16, 33, 29, generator=g).to(device)
        w = torch.randn(24, 16, 3, 3, generator=g).to(device)
        b = torch.randn(24, generator=g).to(device)
        off = (torch.randn(2, 2 * 9 * og, 33, 29, generator=g) * 2.5).to(device)
        mask = torch.rand(2, 9 * og, 33, 29, generator=g).to(device)
        ours = deform_conv2d(x, off, w, b, padding=1, mask=mask)
        ref = tv_deform(x, off, w, b, padding=(1, 1), mask=mask)
        emit(check="deform", offset_groups=og, max_abs_diff=float((ours - ref).abs().max()), device=str(device))


def throughput(device: torch.device, weights_dir: Path | None) -> None:
    from napari_focusdeep.models import build_model
    from napari_focusdeep.models.weights import read_config, resolve_weights

    # label -> (architecture, constructor arguments): the installed weights' sizes
    configs = {
        name: (cfg["architecture"], cfg["kwargs"])
        for name in ("focusdeep-any", "focusdeep-any-select", "focusdeep")
        for cfg in [read_config(resolve_weights(name))]
    }
    configs["unet"] = ("unet", dict(n_frames=8))
    if weights_dir is not None:
        for arch, sub in (("focusdeep-any", "any"), ("focusdeep", "fixed")):
            cfg = weights_dir / sub / f"{arch}.json"
            if cfg.exists():
                configs[arch] = (arch, json.loads(cfg.read_text())["kwargs"])
    size = 512
    for label, (arch, kw) in configs.items():
        model = build_model(arch, **kw).to(device).eval()
        n = model.n_frames or 16
        x = torch.rand(1, n, 3, size, size, device=device)
        for dtype in (torch.float16, torch.bfloat16):
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
                stream = model.start((1, 3, size, size))
                for i in range(n):
                    stream.push(x[:, i])
                stream.finish()
                torch.cuda.synchronize()
                times = []
                for _ in range(3):
                    t = time.perf_counter()
                    stream = model.start((1, 3, size, size))
                    for i in range(n):
                        stream.push(x[:, i])
                    stream.finish()
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
            med = float(np.median(times))
            emit(check="throughput", model=label, dtype=str(dtype).split(".")[-1], tile=size, frames=n,
                 seconds=med, mp_frames_per_s=n * size * size / 1e6 / med,
                 params=sum(p.numel() for p in model.parameters()))


def fuse_timing(device: torch.device, weights_dir: Path | None, shape: tuple[int, int], frames: int) -> None:
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    sharp, depth = synthetic_scene(shape, seed=3)
    sim = simulate_stack(sharp, depth, frames, breathing=0.02, noise="medium", dtype=np.uint8, seed=3, layers=10)
    h, w = shape
    runs = [("pyramid", {})]
    if weights_dir is not None:
        wfile = weights_dir / "any" / "focusdeep-any.safetensors"
        if wfile.exists():
            runs.append(("focusdeep-any", {"weights": str(wfile), "device": str(device)}))
    for method, opts in runs:
        t = time.perf_counter()
        res = fuse(sim.frames, method=method, reference=sim.reference, **opts)
        dt = time.perf_counter() - t
        err = np.abs(res.image.astype(np.float32) / 255 - sim.sharp)[h // 10 : -h // 10, w // 10 : -w // 10]
        psnr = float(10 * np.log10(1 / np.mean(err**2)))
        emit(check="fuse", method=method, frames=frames, size=f"{w}x{h}", seconds=dt, psnr=psnr, device=str(device))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--weights-dir", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    deform_check(device)
    if device.type == "cuda":
        throughput(device, args.weights_dir)
        fuse_timing(device, args.weights_dir, (1500, 2000), 15)
    else:  # a smoke test of this script on a CPU machine
        fuse_timing(device, args.weights_dir, (160, 200), 5)


if __name__ == "__main__":
    main()
