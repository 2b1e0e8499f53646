"""The trainer: L1 with border ignore, Adam, cosine or step schedule, AMP on CUDA.

Checkpoints hold no pickle: the model and optimizer tensors go to a
``.safetensors`` file and everything else (step, history, optimizer
hyper-parameters, config) to a JSON file beside it. Batch ``k`` of a run depends
only on ``(seed, k)``, so a run resumed from its checkpoint continues exactly as if
it had never stopped.

Raw mode (``TrainConfig.raw`` / ``--raw``) trains a ``stem="raw"`` network on
simulated bursts unprocessed to packed RGGB raw with noise in linear raw
(:func:`~.data.simulated_raw_pair`), against the linear camera RGB that
:func:`~napari_focusdeep.raw_fusion.fuse_raw` expects from it; it starts from
the shipped RGB weights (:func:`~napari_focusdeep.models.raw_init.init_raw_from_rgb`).

Fine-tuning on a lab's own stacks (``TrainConfig.data`` / ``--data DIR``) starts from
the architecture's shipped weights, holds stacks out for validation, scores the
starting weights first and never writes weights worse than them (docs/model-card.md).

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
from .data import (
    EXTRA_PHOTO_SOURCES,
    PHOTO_SOURCES,
    SCENE_KINDS,
    SimConfig,
    StackCrops,
    load_training_folder,
    psnr,
    simulated_pair,
    simulated_raw_pair,
    validation_set,
)

__all__ = ["TrainConfig", "TrainProgress", "TrainResult", "train", "l1_border_loss", "main"]


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved with every checkpoint).

    ``data`` names a lab's folder of stacks (see :mod:`.folder`); without it the
    run trains on simulated bursts. ``init_weights``: ``"auto"`` starts from the
    architecture's shipped weights when training on one's own data (fine-tuning)
    and from scratch on simulated data; ``None``/``"none"`` always from scratch; a
    path or installed name from those weights. ``clock`` is what ``minutes``
    counts: ``"wall"`` time, or ``"cpu"`` time of this process (all its threads;
    a shared machine's load does not shrink it). ``freeze`` names top-level
    modules (e.g. ``("extract", "align")``) whose weights stay fixed. ``noise``:
    inject sensor noise on the fly (``True``: a random Brooks et al. level per
    crop); for one's own data also a fixed level, ``"low"``, ``"medium"`` or ``"high"``.
    ``raw``: train a ``stem="raw"`` network on simulated raw bursts (packed RGGB in,
    linear camera RGB out); ``init_weights="auto"`` then starts it from the
    architecture's shipped RGB weights (see :mod:`napari_focusdeep.models.raw_init`).
    ``read_noise_scale``: simulated bursts' read noise reaches this many times Brooks
    et al.'s. ``photos``, ``scenes`` and ``dark_fraction``: the simulated data's mix of
    pictures, procedural scene kinds and dimmed scenes (see
    :class:`~napari_focusdeep.training.data.SimConfig`; the weights shipped before
    2026-11-28 were trained with ``photos=PHOTO_SOURCES``, the first five
    ``SCENE_KINDS`` and ``dark_fraction=0``: :data:`MIX_2026_11_27`).
    """

    architecture: str = "focusdeep-any"
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1000
    minutes: float | None = None
    clock: str = "wall"
    batch_size: int = 8
    lr: float = 2e-4
    min_lr: float = 1e-6
    schedule: str = "cosine"
    clip: float = 1.0
    border: int = 4
    val_every: int = 100
    val_count: int = 16
    val_fraction: float = 0.2
    patience: int | None = None
    seed: int = 0
    crop: int = 128
    frames: tuple[int, int] = (4, 16)
    fixed_frames: int | None = None
    noise: bool | str = True
    workers: int = 0
    init_weights: str | None = "auto"
    freeze: tuple[str, ...] = ()
    device: str = "auto"
    data: str | None = None
    pseudo_gt: str | None = None
    reference: str = "middle"
    register: bool = True
    raw: bool = False
    read_noise_scale: float = 1.0
    photos: tuple[str, ...] = PHOTO_SOURCES + EXTRA_PHOTO_SOURCES
    scenes: tuple[str, ...] = SCENE_KINDS
    dark_fraction: float = 0.25


#: The simulated data mix of the weights trained before 2026-11-28 (TrainConfig fields).
MIX_2026_11_27 = {"photos": PHOTO_SOURCES, "scenes": SCENE_KINDS[:5], "dark_fraction": 0.0}
#: TrainConfig fields that define the simulated data (and so the validation set).
_SIM_FIELDS = ("crop", "frames", "noise", "read_noise_scale", "photos", "scenes", "dark_fraction")

#: Model arguments a raw run always uses: 4 packed planes in, RGB out.
RAW_MODEL = {"stem": "raw", "in_channels": 4, "out_channels": 3}


@dataclass(frozen=True)
class TrainProgress:
    """After each step: ``loss`` is a running average (0.98 decay), ``step_loss`` this step's."""

    step: int
    total: int
    loss: float
    val_psnr: float | None = None
    message: str = ""
    step_loss: float | None = None


@dataclass
class TrainResult:
    """What :func:`train` returns; ``stopped`` is "steps", "time", "stopped", "early-stop" or "data"."""

    step: int
    best_psnr: float | None
    history: list[dict[str, Any]]
    out_dir: Path
    weights: Path | None
    stopped: str


def srgb_curve(x: torch.Tensor) -> torch.Tensor:
    """The sRGB encoding curve, extended linearly below its toe (negative values
    included) so its gradient stays bounded; values above 1 are not clipped.

    Raw runs compare output and target through it, as Brooks et al. compute their
    loss after processing: in linear light an L1 loss all but ignores the shadows,
    where the sRGB image shows noise and error most.
    """
    toe = x <= 0.0031308
    return torch.where(toe, 12.92 * x, 1.055 * torch.clamp(x, min=0.0031308) ** (1 / 2.4) - 0.055)


def _is_raw_pair(burst: np.ndarray, target: np.ndarray) -> bool:
    """Packed planes in, colour out: a raw validation pair (scored through :func:`srgb_curve`)."""
    return burst.shape[-3] == 4 and target.shape[-3] == 3


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
        pair = simulated_raw_pair if self.cfg.raw else simulated_pair
        pairs = [pair(rng, self.sim, n) for _ in range(self.cfg.batch_size)]
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


#: Validation scores each pair at most this PSNR (dB): a crop with no detail and no noise
#: (a flat patch of sky) is fused exactly by a classical method, and its unbounded score
#: would outweigh all the other crops in the mean. 60 dB is an error of a quarter of an
#: 8-bit step.
VAL_PSNR_CAP = 60.0


def _validate(model: torch.nn.Module, val: list, device: torch.device, amp: bool, border: int) -> float:
    model.eval()
    scores = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        for burst, target in val:
            out = model(torch.from_numpy(burst)[None].to(device)).float().clamp(0, 1)[0].cpu()
            if _is_raw_pair(burst, target):
                out, target = srgb_curve(out), srgb_curve(torch.from_numpy(target)).numpy()
            scores.append(min(psnr(out.numpy(), target, border=border), VAL_PSNR_CAP))
    model.train()
    return float(np.mean(scores))


def classical_baseline(val: list, method: str = "pyramid", border: int = 4) -> float:
    """Mean PSNR of a classical method on the validation pairs (for the log).

    Raw pairs (4 packed planes in, 3 colours out) are demosaiced bilinearly
    first, so the method fuses what a raw network's residual path starts from,
    and are scored through :func:`srgb_curve`, as :func:`_validate` scores them.
    """
    from ..fusion import fuse

    scores = []
    for burst, target in val:
        frames = burst.transpose(0, 2, 3, 1)
        if _is_raw_pair(burst, target):
            frames = demosaic_numpy(burst)
        image = fuse(frames, method=method, register=False).image.transpose(2, 0, 1)
        if _is_raw_pair(burst, target):
            image, target = (srgb_curve(torch.from_numpy(np.ascontiguousarray(a))).numpy() for a in (image, target))
        scores.append(min(psnr(image, target, border=border), VAL_PSNR_CAP))
    return float(np.mean(scores))


def demosaic_numpy(burst: np.ndarray) -> np.ndarray:
    """Packed ``(N, 4, h, w)`` -> bilinearly demosaiced ``(N, 2h, 2w, 3)`` float32."""
    from ..models.blocks import bilinear_demosaic

    with torch.no_grad():
        rgb = bilinear_demosaic(torch.from_numpy(np.ascontiguousarray(burst, np.float32)))
    return np.ascontiguousarray(rgb.permute(0, 2, 3, 1).numpy())


class _CropBatches(torch.utils.data.Dataset):
    """Batch ``k`` of a lab's crops (:meth:`StackCrops.batch`): as resumable as simulated ones."""

    def __init__(self, crops: StackCrops, cfg: TrainConfig, total: int) -> None:
        self.crops, self.cfg, self.total = crops, cfg, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        burst, target = self.crops.batch(int(k), self.cfg.batch_size, seed=self.cfg.seed)
        return torch.from_numpy(burst), torch.from_numpy(target)


def _constructor_defaults(architecture: str) -> dict[str, Any]:
    """The keyword defaults of an architecture's class (what a saved config leaves out)."""
    import inspect

    from ..models.factory import _classes

    cls = _classes()[architecture.lower().replace("_", "-")]
    return {
        k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def _resolve_init(cfg: TrainConfig, own_data: bool, say: Callable[[str], None]) -> Path | None:
    """The weights a run starts from (see :class:`TrainConfig`), or None for scratch."""
    from ..models.weights import WeightsNotFoundError, default_weights, resolve_weights

    init = cfg.init_weights
    if init is None or str(init).lower() in ("", "none", "scratch"):
        return None
    if init == "auto":
        if not own_data and not cfg.raw:
            return None
        try:
            if cfg.raw:
                from ..models.raw_init import rgb_start_weights

                path = rgb_start_weights(cfg.architecture)
            else:
                path = default_weights(cfg.architecture)
        except WeightsNotFoundError:
            say(f"no shipped {cfg.architecture} weights: training from scratch")
            return None
        from ..models.weights import read_config

        shipped = {**_constructor_defaults(cfg.architecture), **read_config(path)["kwargs"]}
        ignore = set(RAW_MODEL) if cfg.raw else set()  # a raw run derives its stem from the RGB one
        clash = {k: v for k, v in cfg.model.items() if k in shipped and shipped[k] != v and k not in ignore}
        if clash:
            say(f"the shipped {path.name} has another size than asked ({clash}): training from scratch")
            return None
        if cfg.raw:
            say(f"starting the raw network from the shipped RGB weights {path.name} (init none trains from scratch)")
        else:
            say(f"fine-tuning from the shipped weights {path.name} (init none trains from scratch)")
        return path
    path = resolve_weights(init)  # refuses pickles (.pt, .pth, .ckpt) before touching them
    say(f"starting from {path}")
    return path


def _apply_freeze(model: torch.nn.Module, prefixes: tuple[str, ...]) -> None:
    if not prefixes:
        return
    names = [n for n, _ in model.named_parameters()]
    for prefix in prefixes:
        if not any(n == prefix or n.startswith(prefix + ".") for n in names):
            top = sorted({n.split(".", 1)[0] for n in names})
            raise ValueError(f"nothing to freeze named {prefix!r}; this network's parts are {', '.join(top)}")
    for n, p in model.named_parameters():
        if any(n == pre or n.startswith(pre + ".") for pre in prefixes):
            p.requires_grad_(False)


def _make_bar(total: int, initial: int) -> Any:
    """A tqdm bar on a terminal; None elsewhere (logs, widgets, tests)."""
    if not sys.stderr.isatty():
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)


# -- the loop --------------------------------------------------------------------------
def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    batches: Iterator[tuple[np.ndarray, np.ndarray]] | StackCrops | None = None,
    val: list | None = None,
    progress: Callable[[TrainProgress], None] | None = None,
    stop: threading.Event | None = None,
    log: Callable[[str], None] | None = None,
) -> TrainResult:
    """Train (or fine-tune) a model.

    Parameters
    ----------
    cfg : TrainConfig
        With ``cfg.data`` set, trains on that folder of stacks (registered, with
        their ground truths or pseudo ground truths made by ``cfg.pseudo_gt``).
    out_dir : path
        Receives ``checkpoint.safetensors/.json`` (every validation), ``log.jsonl``,
        ``pseudo_gt/`` (pseudo ground truths made for the run, to inspect), and the
        best weights as ``<architecture>.safetensors`` + ``.json`` in the
        shipped-weights format. When starting from weights, those are scored
        first and count as the best so far: the written weights are never worse
        on validation than the ones the run started from.
    resume : bool
        Continue from ``out_dir/checkpoint.safetensors`` when it exists; otherwise
        a fresh run (its checkpoint, log and weights replace the old ones).
    batches : StackCrops or iterator, optional
        A lab's crops (:class:`~.data.StackCrops`; batch ``k`` then depends only on
        ``(cfg.seed, k)``, so resuming is exact), or any iterator of
        ``(burst (B,N,C,H,W), target (B,C,H,W))`` numpy batches (consumed from its
        start on every call). Default: ``cfg.data``, else simulated bursts.
    val : list, optional
        Validation pairs. Default: held out of the lab's crops (whole stacks, or a
        strip of a single stack), else ``cfg.val_count`` simulated pairs from
        held-out seeds.
    progress : callable, optional
        Called with :class:`TrainProgress` after every step.
    stop : threading.Event, optional
        When set, the run saves a checkpoint at the next step and returns.
    log : callable, optional
        Receives the run's messages (default: standard error).
    """
    from ..models import build_model
    from ..models.weights import load_model_weights, read_config, save_weights

    _check_raw(cfg, batches)
    if cfg.clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', not {cfg.clock!r}")
    if not cfg.read_noise_scale >= 1:
        raise ValueError(f"read_noise_scale must be at least 1, got {cfg.read_noise_scale!r}")
    # the simulated data's options are checked before anything is written
    sim = SimConfig(
        crop=cfg.crop, frames=tuple(cfg.frames), noise=bool(cfg.noise), read_noise_scale=cfg.read_noise_scale,
        photos=tuple(cfg.photos), scenes=tuple(cfg.scenes), dark_fraction=float(cfg.dark_fraction),
    )
    out = Path(out_dir)
    ckpt = out / "checkpoint.safetensors"
    if resume and not ckpt.exists() and (out / f"{cfg.architecture}.safetensors").exists():
        # weights without a checkpoint are not a run to continue: never replace them unasked
        raise ValueError(
            f"{out / (cfg.architecture + '.safetensors')} exists and has no checkpoint to resume; "
            "choose a new output folder, or start afresh with --no-resume (resume=False) to replace it"
        )
    out.mkdir(parents=True, exist_ok=True)
    bar = _make_bar(cfg.steps, 0) if (progress is None and log is None) else None
    say = log or (lambda s: (bar.write(s, file=sys.stderr) if bar is not None else print(s, file=sys.stderr)))
    clock = time.monotonic if cfg.clock == "wall" else time.process_time
    torch.manual_seed(cfg.seed)
    device = _pick_device(cfg.device)
    amp = device.type == "cuda"

    # the data: a lab's folder, crops or batches given by the caller, or the simulator
    crops: StackCrops | None = batches if isinstance(batches, StackCrops) else None
    if crops is not None:
        batches = None
    folder = None
    if cfg.data and crops is None and batches is None:
        say(f"reading and registering the stacks in {cfg.data} ...")
        try:
            folder = load_training_folder(
                cfg.data, pseudo_gt=cfg.pseudo_gt, reference=cfg.reference, register=cfg.register, log=say, cancel=stop
            )
        except InterruptedError:
            say("stopped while reading the data; nothing trained")
            if bar is not None:
                bar.close()
            return TrainResult(0, None, [], out, None, "stopped")
        say(f"training data: {folder.describe()}")
    own_data = folder is not None or crops is not None or batches is not None
    init = _resolve_init(cfg, own_data, say)
    model_kwargs = dict(cfg.model)
    init_is_rgb = False
    if init is not None:
        wcfg = read_config(init)
        if wcfg["architecture"] != cfg.architecture:
            raise ValueError(f"{init.name} holds a {wcfg['architecture']} network, not {cfg.architecture}")
        model_kwargs = {**dict(wcfg["kwargs"]), **model_kwargs}  # the weights fix the size
        init_is_rgb = wcfg.get("input", "rgb") != "raw"
        if not cfg.raw and not init_is_rgb:
            raise ValueError(f"{init.name} takes raw input; train it with raw=True (--raw)")
    if cfg.raw:
        model_kwargs.update(RAW_MODEL)
    model = build_model(cfg.architecture, **model_kwargs).to(device)
    n_fixed = getattr(model, "config", {}).get("n_frames")
    if init is not None and cfg.raw and init_is_rgb:
        from ..models.raw_init import init_raw_from_rgb

        done = init_raw_from_rgb(model, init)
        say(f"{done['copied']} tensors copied from {init.name}; {', '.join(done['derived'])} derived from its RGB layers")
    elif init is not None and model_kwargs.get("noise_input") and not wcfg["kwargs"].get("noise_input"):
        from ..models.focusdeep_any import add_noise_input
        from ..models.weights import load_state

        model.load_state_dict(add_noise_input(load_state(init, wcfg), model), strict=True)
        say(f"{init.name} has no noise input: it starts unused")
    elif init is not None:
        load_model_weights(model, init)
    if init is not None and model_kwargs.get("base") == "pyramid" and wcfg["kwargs"].get("base") != "pyramid":
        from ..models.blocks import start_at_base

        start_at_base(model.head)
        say(f"{init.name} has no pyramid base: its output layers restart near zero, at the pyramid method's result")
    _apply_freeze(model, tuple(cfg.freeze))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=cfg.lr, betas=(0.9, 0.999))

    if folder is not None:
        crops = folder.crops(crop=cfg.crop, noise=cfg.noise, channels=model.config.get("in_channels", 3))
        if any(folder.pseudo):
            gt_dir = out / "pseudo_gt"
            from ..io import write_image

            for name, target, made in zip(folder.names, folder.targets, folder.pseudo):
                if made:
                    write_image(gt_dir / f"{name}.tif", target, overwrite=True)  # the run's own files
            say(f"pseudo ground truths written to {gt_dir} for inspection")
    if crops is not None:
        if n_fixed and crops.frames is None:
            crops.frames = int(n_fixed)
            say(f"{cfg.architecture} takes {n_fixed} frames: bursts are resampled to {n_fixed}")
        if val is None:
            crops, val, how = crops.split(cfg.val_fraction, count=cfg.val_count)
            say(how)

    step, best, history, elapsed_before, clock_before, bad_vals = 0, None, [], 0.0, 0.0, 0
    if resume and ckpt.exists():
        meta = load_checkpoint(ckpt, model, opt)
        saved_arch = meta.get("config", {}).get("architecture", cfg.architecture)
        if saved_arch != cfg.architecture:
            raise ValueError(f"{ckpt} is a {saved_arch} run, not {cfg.architecture}; use another folder or --no-resume")
        if crops is None and batches is None:
            _check_same_mix(meta.get("config", {}), cfg, ckpt)
        step, best, history = meta["step"], meta.get("best_psnr"), meta.get("history", [])
        elapsed_before = meta.get("elapsed", 0.0)
        clock_before = meta.get("clock_elapsed", elapsed_before)
        bad_vals = int(meta.get("bad_vals", 0))
        say(f"resumed from step {step}")
    if val is None:
        val = validation_set(cfg.val_count, sim, fixed_frames=cfg.fixed_frames, raw=cfg.raw)
    wcfg_extra = {"init": str(init.name) if init is not None else None}
    if folder is not None:
        wcfg_extra["data"] = f"{cfg.data}: {folder.describe()}"
        wcfg_extra["sources"] = folder.sources
    elif own_data:
        wcfg_extra["data"] = "the caller's own stacks"
    if not history:
        base = classical_baseline(val, border=cfg.border)
        rec: dict[str, Any] = {"step": 0, "pyramid_val_psnr": base}
        say(f"validation: {len(val)} held-out bursts; the pyramid method scores {base:.2f} dB on them")
        if init is not None:
            # the starting point is the bar: a fine-tune that never beats it writes these weights back
            best = rec["val_psnr"] = _validate(model, val, device, amp, cfg.border)
            say(f"the starting weights score {best:.2f} dB")
            save_weights(model, out / f"{cfg.architecture}.safetensors", _weights_config(cfg, model, 0, best, [rec], wcfg_extra))
        history.append(rec)
    loader_total = max(cfg.steps, step)
    if batches is None:
        dataset = _CropBatches(crops, cfg, loader_total) if crops is not None else _SimBatches(cfg, sim, loader_total)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=range(step, cfg.steps),
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if cfg.workers else None,
        )
        source: Iterator = iter(loader)
    else:
        source = ((torch.from_numpy(np.ascontiguousarray(b)), torch.from_numpy(np.ascontiguousarray(t))) for b, t in batches)
    n_params = sum(p.numel() for p in model.parameters())
    frozen = f", {sum(p.numel() for p in trainable) / 1e6:.2f} M trainable" if cfg.freeze else ""
    say(f"training {cfg.architecture} ({n_params / 1e6:.2f} M parameters{frozen}) on {device}, batch {cfg.batch_size}, crop {cfg.crop}")
    start, start_clock = time.monotonic(), clock()
    budget = cfg.minutes * 60 if cfg.minutes else None
    loss_ema = None
    stopped = "steps"
    model.train()
    if bar is not None:
        bar.reset(total=cfg.steps)
        bar.update(step)

    def used() -> float:
        """Seconds of the budget's clock spent, this session and before."""
        return clock_before + clock() - start_clock

    def checkpoint() -> None:
        save_checkpoint(ckpt, model, opt, {
            "step": step, "best_psnr": best, "history": history, "config": asdict(cfg), "bad_vals": bad_vals,
            "elapsed": elapsed_before + time.monotonic() - start, "clock_elapsed": used(),
        })

    with open(out / "log.jsonl", "a" if step else "w") as logf:
        while step < cfg.steps:
            if stop is not None and stop.is_set():
                stopped = "stopped"
                break
            if budget is not None and used() >= budget:
                stopped = "time"
                break
            try:
                burst, target = next(source)
            except StopIteration:
                stopped = "data"
                break
            except Exception:
                # Ctrl-C in a terminal reaches the loader's worker processes too, and
                # they exit; the run is stopping anyway, so end it with its checkpoint
                if stop is not None and stop.is_set():
                    stopped = "stopped"
                    break
                raise
            burst = burst.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            fraction = used() / budget if budget else step / max(cfg.steps, 1)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, fraction)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                pred = model(burst)
            pred = pred.float()
            if cfg.raw:  # compared as the sRGB image will show them, not in linear light
                pred, target = srgb_curve(pred), srgb_curve(target)
            loss = l1_border_loss(pred, target, cfg.border)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip:
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip)
            opt.step()
            step += 1
            lv = float(loss.detach())
            loss_ema = lv if loss_ema is None else 0.98 * loss_ema + 0.02 * lv
            vp = None
            if step % cfg.val_every == 0 or step == cfg.steps:
                vp = _validate(model, val, device, amp, cfg.border)
                rec = {"step": step, "loss": loss_ema, "val_psnr": vp, "lr": opt.param_groups[0]["lr"],
                       "elapsed": round(elapsed_before + time.monotonic() - start, 1)}
                if cfg.clock == "cpu":
                    rec["cpu_s"] = round(used(), 1)
                history.append(rec)
                logf.write(json.dumps(rec) + "\n")
                logf.flush()
                say(f"step {step}: loss {loss_ema:.4f}  val PSNR {vp:.2f} dB")
                if best is None or vp > best:
                    best, bad_vals = vp, 0
                    save_weights(model, out / f"{cfg.architecture}.safetensors", _weights_config(cfg, model, step, best, history, wcfg_extra))
                else:
                    bad_vals += 1
                checkpoint()
                if cfg.patience and bad_vals >= cfg.patience:
                    stopped = "early-stop"
                    say(f"early stop: no gain in {bad_vals} validations")
                    break
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_ema:.4f}")
            if progress is not None:
                progress(TrainProgress(step, cfg.steps, loss_ema, vp, step_loss=lv))
    if bar is not None:
        bar.close()
    # final validation + checkpoint so a stop or time-out never loses work
    if history[-1]["step"] != step:
        vp = _validate(model, val, device, amp, cfg.border) if step else None
        if vp is not None:
            rec = {"step": step, "loss": loss_ema, "val_psnr": vp, "lr": opt.param_groups[0]["lr"],
                   "elapsed": round(elapsed_before + time.monotonic() - start, 1)}
            if cfg.clock == "cpu":
                rec["cpu_s"] = round(used(), 1)
            history.append(rec)
            with open(out / "log.jsonl", "a") as logf:
                logf.write(json.dumps(rec) + "\n")
            say(f"step {step} ({stopped}): val PSNR {vp:.2f} dB")
            if best is None or vp > best:
                best = vp
                save_weights(model, out / f"{cfg.architecture}.safetensors", _weights_config(cfg, model, step, best, history, wcfg_extra))
    checkpoint()
    if init is not None and best is not None and history and history[0].get("val_psnr") == best and step:
        say("no validation beat the starting weights: the written weights are the starting ones")
    if device.type == "cuda":
        torch.cuda.empty_cache()
    weights = out / f"{cfg.architecture}.safetensors"
    return TrainResult(step, best, history, out, weights if weights.exists() else None, stopped)


def _check_raw(cfg: TrainConfig, batches: Any) -> None:
    """Raw runs draw simulated raw bursts: refuse what they cannot train on."""
    if not cfg.raw:
        return
    if cfg.data or isinstance(batches, StackCrops):
        raise ValueError("raw training runs on simulated raw bursts; a folder of stacks (--data) is RGB only")
    if cfg.crop % 2:
        raise ValueError(f"raw training needs an even crop (2x2 Bayer cells), got {cfg.crop}")
    if cfg.architecture not in ("focusdeep", "focusdeep-any"):
        raise ValueError(f"{cfg.architecture} has no raw input stem; use focusdeep-any or focusdeep")


def _check_same_mix(saved: dict[str, Any], cfg: TrainConfig, ckpt: Path) -> None:
    """Refuse to resume a simulated run with other data: its validation set, and so its
    best score, would not be comparable. Checkpoints older than the data-mix fields
    were made with :data:`MIX_2026_11_27`."""
    now = asdict(cfg)
    differ = []
    for key in _SIM_FIELDS:
        if key not in saved and key not in MIX_2026_11_27:
            continue
        was = saved.get(key, MIX_2026_11_27.get(key))
        if (list(was) if isinstance(was, (list, tuple)) else was) != (list(now[key]) if isinstance(now[key], (list, tuple)) else now[key]):
            differ.append(f"{key} was {was!r}")
    if differ:
        raise ValueError(f"{ckpt} was made with other simulated data ({'; '.join(differ)}); "
                         "give the same options, or use another folder or --no-resume")


def _weights_config(
    cfg: TrainConfig, model: torch.nn.Module, step: int, best: float | None, history: list, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    extra = dict(extra or {})
    if cfg.raw:
        data = extra.pop("data", None) or (
            "simulated focus brackets unprocessed to packed RGGB raw (napari_focusdeep.training.unprocess, "
            "Brooks et al.), shot + read noise in linear raw; target linear camera RGB"
            if cfg.noise else "simulated raw, noise-free"
        )
    else:
        data = extra.pop("data", None) or (
            "simulated focus brackets (napari_focusdeep.training.simulate), procedural + scikit-image photos, Brooks noise"
            if cfg.noise else "simulated, noise-free"
        )
    return {
        "architecture": cfg.architecture,
        "kwargs": dict(cfg.model),
        "input": "raw" if cfg.raw else "rgb",
        "training": {
            "data": data,
            "noise_injected": cfg.noise,
            "steps": step,
            "batch_size": cfg.batch_size,
            "crop": cfg.crop,
            "frames": list(cfg.frames) if not cfg.fixed_frames else [cfg.fixed_frames, cfg.fixed_frames],
            "lr": cfg.lr,
            "seed": cfg.seed,
            **({} if cfg.data or extra.get("data") else {
                "photos": list(cfg.photos), "scenes": list(cfg.scenes), "dark_fraction": cfg.dark_fraction,
                "read_noise_scale": cfg.read_noise_scale,
            }),
            "freeze": list(cfg.freeze),
            "val_psnr": best,
            "device": str(next(model.parameters()).device),
            "elapsed_s": history[-1].get("elapsed") if history else None,
            **extra,
        },
    }


# -- command line ----------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="focusdeep train", description="Train or fine-tune a FocusDeep model.")
    add_train_arguments(p)
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``focusdeep train`` arguments."""
    try:
        model = json.loads(a.model)
    except ValueError as exc:
        raise ValueError(f"--model takes JSON, e.g. '{{\"features\": 32}}' ({exc})") from None
    if a.fixed_frames and a.architecture in ("focusdeep", "unet"):
        model.setdefault("n_frames", a.fixed_frames)
    data = getattr(a, "data", None)
    pseudo = getattr(a, "pseudo_gt", "none")
    if pseudo not in (None, "none") and not data:
        raise ValueError("--pseudo-gt applies to --data (a folder of your own stacks)")
    freeze = tuple(x.strip() for x in (getattr(a, "freeze", None) or "").split(",") if x.strip())
    return TrainConfig(
        architecture=a.architecture, model=model, steps=a.steps, minutes=a.minutes, batch_size=a.batch_size,
        lr=a.lr if a.lr is not None else _default_lr(a), schedule=a.schedule, crop=a.crop, frames=tuple(a.frames), fixed_frames=a.fixed_frames,
        noise=_noise_arg(a), read_noise_scale=getattr(a, "read_noise_scale", 1.0), val_every=a.val_every, val_count=a.val_count, patience=a.patience,
        workers=a.workers, init_weights=a.init if a.init is not None else "auto", device=a.device, seed=a.seed,
        data=str(data) if data else None, pseudo_gt=None if pseudo in (None, "none") else pseudo,
        reference=_reference_arg(getattr(a, "reference", "middle")), register=not getattr(a, "no_register", False),
        clock=getattr(a, "clock", "wall"), freeze=freeze, raw=bool(getattr(a, "raw", False)),
        **_mix_args(a),
    )


def _mix_args(a: argparse.Namespace) -> dict[str, Any]:
    """``--photos``, ``--scenes`` and ``--dark-fraction`` as TrainConfig fields (only those given)."""
    out: dict[str, Any] = {}
    for key in ("photos", "scenes"):
        value = getattr(a, key, None)
        if value is not None:
            out[key] = tuple(x.strip() for x in value.split(",") if x.strip())
    if getattr(a, "dark_fraction", None) is not None:
        out["dark_fraction"] = float(a.dark_fraction)
    return out


#: Peak learning rates: pre-training, and fine-tuning from weights (a higher rate first
#: undoes what the weights know: at 1e-4 and 5e-4 the validation PSNR of the fine-tuning
#: benchmark fell 0.4 and 1.7 dB in the first 50 steps, see docs/model-card.md).
PRETRAIN_LR, FINETUNE_LR = 2e-4, 5e-5
#: A raw run starting from RGB weights: between the two, since its input domain
#: (linear, unbalanced, mosaicked) is far from the RGB weights' (not tuned).
RAW_FROM_RGB_LR = 1e-4


def _default_lr(a: argparse.Namespace) -> float:
    scratch = a.init is not None and str(a.init).lower() in ("none", "scratch", "")
    if getattr(a, "raw", False):
        return PRETRAIN_LR if scratch else RAW_FROM_RGB_LR
    finetune = (getattr(a, "data", None) and not scratch) or (a.init is not None and not scratch)
    return FINETUNE_LR if finetune else PRETRAIN_LR


def _noise_arg(a: argparse.Namespace) -> bool | str:
    level = getattr(a, "noise_level", "random")
    if a.no_noise:
        return False
    if level != "random" and not getattr(a, "data", None):
        raise ValueError("--noise-level applies to --data; simulated pre-training draws random levels")
    return True if level == "random" else level


def _reference_arg(value: str) -> str | int:
    return int(value) if str(value).lstrip("-").isdigit() else str(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = train(config_from_args(args), args.output, resume=not args.no_resume)
    print(json.dumps({"step": result.step, "best_val_psnr": result.best_psnr, "stopped": result.stopped,
                      "weights": str(result.weights)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
