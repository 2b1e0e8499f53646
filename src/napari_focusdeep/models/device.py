"""Choosing the torch device (and the inference precision that suits it)."""
from __future__ import annotations

import torch

__all__ = ["pick_device", "autocast_dtype", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device request.

    Parameters
    ----------
    device : {"auto", "cpu", "cuda", "mps"}, "cuda:N" or torch.device
        ``"auto"`` (or None) takes CUDA when present, then Apple's MPS, then the CPU.
        Asking for an accelerator that is not there is an error rather than a silent
        fallback, so a user who asked for the GPU knows it is not being used.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        Unknown name, or the requested accelerator is not available.
    """
    if isinstance(device, torch.device):
        device = str(device)
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":", 1)[0]
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                "device 'cuda' was requested but CUDA is not available "
                f"(torch {torch.__version__}, built for CUDA: {torch.version.cuda or 'no'}); "
                "use device='auto' or 'cpu'"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist; {torch.cuda.device_count()} CUDA device(s) found"
            )
        return dev
    if kind == "mps":
        if not _mps_available():
            raise ValueError("device 'mps' was requested but Apple MPS is not available; use 'auto' or 'cpu'")
        return torch.device("mps")
    raise ValueError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)} (or 'cuda:N')")


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference on ``device``, or None for plain float32.

    ``precision="auto"`` uses bfloat16 on CUDA GPUs that support it (Ampere and
    later), float16 on older ones, and float32 elsewhere (CPU autocast is slower
    than float32 for these convolutions, and MPS autocast is patchy).
    """
    precision = (precision or "auto").lower()
    if precision in ("float32", "fp32", "32"):
        return None
    if device.type != "cuda":
        if precision == "auto":
            return None
        raise ValueError(f"precision {precision!r} is only supported on CUDA; use 'auto' or 'float32'")
    if precision in ("bfloat16", "bf16"):
        return torch.bfloat16
    if precision in ("float16", "fp16", "half"):
        return torch.float16
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    raise ValueError(f"unknown precision {precision!r}; choose auto, float32, bfloat16 or float16")
