"""The trainer: L1 with border ignore, Adam, cosine or step schedule, AMP on CUDA.

Checkpoints hold no pickle: the model and optimizer tensors go to a
``.safetensors`` file and everything else (step, history, optimizer
hyper-parameters, config) to a JSON file beside it. Batch ``k`` of a run depends
only on ``(seed, k)``, so a run resumed from its checkpoint continues exactly as if
it had never stopped.

Run it as ``focusdeep train`` or ``python -m napari_focusdeep.training.train``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ._args import add_train_arguments
from .data import SimConfig, psnr, simulated_pair, validation_set

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train", "l1_border_loss", "main"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved with every checkpoint)."""

    architecture: str = "focusdeep-any"
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    minutes: float | None = None
    batch_size: int = 8
    lr: float = 2e-4
    min_lr: float = 1e-6
    schedule: str = "cosine"
    clip: float = 1.0
    border: int = 4
    val_every: int = 100
    val_count: int = 16
    patience: int | None = None
    seed: int = 0
    crop: int = 128
    frames: tuple[int, int] = (4, 16)
    fixed_frames: int | None = None
    noise: bool = True
    workers: int = 0
    init_weights: str | None = None
    device: str = "auto"


@dataclass(frozen=True)
class TrainProgress:
    step: int
    total: int
    loss: float
    val_psnr: float | None = None
    message: str = ""


@dataclass
class TrainResult:
    step: int
    best_psnr: float | None
    history: list[dict[str, Any]]
    out_dir: Path
    weights: Path | None
    stopped: str


def l1_border_loss(pred: torch.Tensor, target: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Mean absolute error ignoring ``border`` pixels on each side (the paper's loss)."""
    if border:
        pred = pred[..., border:-border, border:-border]
        target = target[..., border:-border, border:-border]
    return F.l1_loss(pred, target)


class _SimBatches(torch.utils.data.Dataset):
    """Batch ``k`` is drawn from a generator seeded by ``(seed, k)``: reproducible and resumable."""

    def __init__(self, cfg: TrainConfig, sim: SimConfig, total: int) -> None:
        self.cfg, self.sim, self.total = cfg, sim, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.cfg.seed, int(k)])
        n = self.cfg.fixed_frames or int(rng.integers(self.sim.frames[0], self.sim.frames[1] + 1))
        pairs = [simulated_pair(rng, self.sim, n) for _ in range(self.cfg.batch_size)]
        return torch.from_numpy(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs]))


def _lr_at(cfg: TrainConfig, fraction: float) -> float:
    fraction = min(max(fraction, 0.0), 1.0)
    warm = 0.02
    if fraction < warm:
        return cfg.lr * (0.1 + 0.9 * fraction / warm)
    if cfg.schedule == "step":
        return cfg.lr * (0.5 ** int(fraction / 0.3))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * fraction))


# -- checkpoints -----------------------------------------------------------------------
def save_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Write ``path`` (.safetensors: model + optimizer tensors) and ``path.json`` atomically."""
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    osd = opt.state_dict()
    for idx, st in osd["state"].items():
        for name, value in st.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{idx}.{name}"] = t.detach().contiguous().cpu()
    meta = dict(state, param_groups=osd["param_groups"])
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    tmp_json = path.with_suffix(".json.tmp")
    tmp_json.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, path)
    os.replace(tmp_json, path.with_suffix(".json"))


def load_checkpoint(path: Path, model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer from :func:`save_checkpoint` files; return the state."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError("checkpoints are .safetensors files; pickled checkpoints are refused")
    tensors = load_file(str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return meta


def _pick_device(name: str) -> torch.device:
    try:
        from ..models.device import pick_device

        return pick_device(name)
    except ImportError:
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(name)


def _validate(model: torch.nn.Module, val: list, device: torch.device, amp: bool, border: int) -> float:
    model.eval()
    scores = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for burst, target in val:
            out = model(torch.from_numpy(burst)[None].to(device)).float().clamp(0, 1)
            scores.append(psnr(out[0].cpu().numpy(), target, border=border))
    model.train()
    return float(np.mean(scores))


def classical_baseline(val: list, method: str = "pyramid", border: int = 4) -> float:
    """Mean PSNR of a classical method on the validation pairs (for the log)."""
    from ..fusion import fuse

    scores = []
    for burst, target in val:
        res = fuse(burst.transpose(0, 2, 3, 1), method=method, register=False)
        scores.append(psnr(res.image.transpose(2, 0, 1), target, border=border))
    return float(np.mean(scores))


# -- the loop --------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    batches: Iterator[tuple[np.ndarray, np.ndarray]] | None = None,
    val: list | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a model.

    Parameters
    ----------
    cfg : TrainConfig
    out_dir : path
        Receives ``checkpoint.safetensors/.json`` (every validation), ``log.jsonl``,
        and the best weights as ``<architecture>.safetensors`` + ``.json`` in the
        shipped-weights format.
    resume : bool
        Continue from ``out_dir/checkpoint.safetensors`` when it exists.
    batches : iterator, optional
        ``(burst (B,N,C,H,W), target (B,C,H,W))`` numpy batches (a lab's data);
        default: simulated bursts seeded per step.
    val : list, optional
        Validation pairs; default: ``cfg.val_count`` simulated pairs from held-out seeds.
    progress : callable, optional
        Called with :class:`TrainProgress` after every step.
    stop : threading.Event, optional
        When set, the run saves a checkpoint at the next step and returns.
    """
    from ..models import build_model
    from ..models.weights import load_model_weights, save_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = log or (lambda s: print(s, file=sys.stderr))
    torch.manual_seed(cfg.seed)
    device = _pick_device(cfg.device)
    amp = device.type == "cuda"
    model = build_model(cfg.architecture, **cfg.model).to(device)
    if cfg.init_weights:
        load_model_weights(model, cfg.init_weights)
        say(f"initialised from {cfg.init_weights}")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    ckpt = out / "checkpoint.safetensors"
    step, best, history, elapsed_before = 0, None, [], 0.0
    if resume and ckpt.exists():
        meta = load_checkpoint(ckpt, model, opt)
        step, best, history = meta["step"], meta.get("best_psnr"), meta.get("history", [])
        elapsed_before = meta.get("elapsed", 0.0)
        say(f"resumed from step {step}")
    sim = SimConfig(crop=cfg.crop, frames=tuple(cfg.frames), noise=cfg.noise)
    if val is None:
        val = validation_set(cfg.val_count, sim, fixed_frames=cfg.fixed_frames)
    if not history:
        base = classical_baseline(val, border=cfg.border)
        history.append({"step": 0, "pyramid_val_psnr": base})
        say(f"validation: {len(val)} held-out bursts; the pyramid method scores {base:.2f} dB on them")
    if batches is None:
        loader = torch.utils.data.DataLoader(
            _SimBatches(cfg, sim, cfg.steps),
            batch_size=None,
            sampler=range(step, cfg.steps),
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers else None,
        )
        source: Iterator = iter(loader)
    else:
        source = ((torch.from_numpy(b), torch.from_numpy(t)) for b, t in batches)
    n_params = sum(p.numel() for p in model.parameters())
    say(f"training {cfg.architecture} ({n_params / 1e6:.2f} M parameters) on {device}, batch {cfg.batch_size}, crop {cfg.crop}")
    start = time.monotonic()
    budget = cfg.minutes * 60 if cfg.minutes else None
    loss_ema = None
    stopped = "steps"
    bad_vals = 0
    model.train()

    def checkpoint() -> None:
        save_checkpoint(ckpt, model, opt, {
            "step": step, "best_psnr": best, "history": history, "config": asdict(cfg),
            "elapsed": elapsed_before + time.monotonic() - start,
        })

    with open(out / "log.jsonl", "a") as logf:
        while step < cfg.steps:
            if stop is not None and stop.is_set():
                stopped = "stopped"
                break
            elapsed = elapsed_before + time.monotonic() - start
            if budget is not None and elapsed >= budget:
                stopped = "time"
                break
            try:
                burst, target = next(source)
            except StopIteration:
                stopped = "data"
                break
            burst = burst.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            fraction = elapsed / budget if budget else step / max(cfg.steps, 1)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, fraction)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(burst)
            loss = l1_border_loss(pred.float(), target, cfg.border)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
            opt.step()
            step += 1
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            vp = None
            if step % cfg.val_every == 0 or step == cfg.steps:
                vp = _validate(model, val, device, amp, cfg.border)
                rec = {"step": step, "loss": loss_ema, "val_psnr": vp, "lr": opt.param_groups[0]["lr"],
                       "elapsed": round(elapsed_before + time.monotonic() - start, 1)}
                history.append(rec)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                say(f"step {step}: loss {loss_ema:.4f}  val PSNR {vp:.2f} dB")
                if best is None or vp > best:
                    best, bad_vals = vp, 0
                    save_weights(model, out / f"{cfg.architecture}.safetensors", _weights_config(cfg, model, step, best, history))
                else:
                    bad_vals += 1
                checkpoint()
                if cfg.patience and bad_vals >= cfg.patience:
                    stopped = "early-stop"
                    break
            if progress is not None:
                progress(TrainProgress(step, cfg.steps, loss_ema, vp))
    # final validation + checkpoint so a stop or time-out never loses work
    if history[-1]["step"] != step:
        vp = _validate(model, val, device, amp, cfg.border) if step else None
        if vp is not None:
            history.append({"step": step, "loss": loss_ema, "val_psnr": vp, "elapsed": round(elapsed_before + time.monotonic() - start, 1)})
            if best is None or vp > best:
                best = vp
                save_weights(model, out / f"{cfg.architecture}.safetensors", _weights_config(cfg, model, step, best, history))
    checkpoint()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    weights = out / f"{cfg.architecture}.safetensors"
    return TrainResult(step, best, history, out, weights if weights.exists() else None, stopped)


def _weights_config(cfg: TrainConfig, model: torch.nn.Module, step: int, best: float | None, history: list) -> dict[str, Any]:
    return {
        "architecture": cfg.architecture,
        "kwargs": dict(cfg.model),
        "input": "rgb",
        "training": {
            "data": "simulated focus brackets (napari_focusdeep.training.simulate), procedural + scikit-image photos, Brooks noise" if cfg.noise else "simulated, noise-free",
            "steps": step,
            "batch_size": cfg.batch_size,
            "crop": cfg.crop,
            "frames": list(cfg.frames) if not cfg.fixed_frames else [cfg.fixed_frames, cfg.fixed_frames],
            "lr": cfg.lr,
            "seed": cfg.seed,
            "val_psnr": best,
            "device": str(next(model.parameters()).device),
            "elapsed_s": history[-1].get("elapsed") if history else None,
        },
    }


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="focusdeep train", description="Train or fine-tune a FocusDeep model.")
    add_train_arguments(p)
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    model = json.loads(a.model)
    if a.fixed_frames and a.architecture in ("focusdeep", "unet"):
        model.setdefault("n_frames", a.fixed_frames)
    return TrainConfig(
        architecture=a.architecture, model=model, steps=a.steps, minutes=a.minutes, batch_size=a.batch_size,
        lr=a.lr, schedule=a.schedule, crop=a.crop, frames=tuple(a.frames), fixed_frames=a.fixed_frames,
        noise=not a.no_noise, val_every=a.val_every, val_count=a.val_count, patience=a.patience,
        workers=a.workers, init_weights=a.init, device=a.device, seed=a.seed,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = train(config_from_args(args), args.output, resume=not args.no_resume)
    print(json.dumps({"step": result.step, "best_val_psnr": result.best_psnr, "stopped": result.stopped,
                      "weights": str(result.weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
