"""Which network weights the widgets offer, where trained weights go, which devices exist.

Three sources of weights, listed in this order:

- *shipped*: the package's ``models/weights/`` folder;
- *yours*: the user weights folder (:func:`user_weights_dir`), where the Train
  widget saves each run in its own sub-folder (``RUN/ARCH.safetensors``);
- *files*: weights loaded this session from anywhere with "Load weights file..."
  or trained into another folder.

Nothing here imports Qt or torch at import time: :func:`probe_devices` imports
torch when it runs (the widgets call it in a worker thread), so napari start-up
stays light.
"""
from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = [
    "ENV_DATA_DIR",
    "WeightsChoice",
    "user_weights_dir",
    "weights_choices",
    "check_weights_file",
    "remember",
    "on_weights_changed",
    "weights_changed",
    "probe_devices",
    "device_info",
    "on_devices_probed",
]

#: Environment variable overriding the user data folder (tests, shared lab installs).
ENV_DATA_DIR = "NAPARI_FOCUSDEEP_DATA_DIR"
_APP = "napari-focusdeep"
_REFUSED = "only .safetensors weights are accepted; pickled checkpoints (.pt, .pth, .ckpt) can run code when loaded"


def user_data_dir() -> Path:
    """The per-user data folder (``$NAPARI_FOCUSDEEP_DATA_DIR`` or platformdirs')."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser()
    from platformdirs import user_data_path

    return Path(user_data_path(_APP, appauthor=False))


def user_weights_dir() -> Path:
    """Where the Train widget saves runs by default (not created here)."""
    return user_data_dir() / "weights"


# -- listeners (weak, so a deleted widget is simply forgotten) -----------------------------
class _Listeners:
    def __init__(self) -> None:
        self._refs: list[weakref.ReferenceType] = []
        self._lock = threading.Lock()

    def add(self, callback: Callable[..., Any]) -> None:
        ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
        with self._lock:
            self._refs.append(ref)

    def emit(self, *args: Any) -> None:
        with self._lock:
            self._refs = [r for r in self._refs if r() is not None]
            callbacks = [r() for r in self._refs]
        for cb in callbacks:
            if cb is None:
                continue
            try:
                cb(*args)
            except RuntimeError:  # its Qt object was deleted; it goes at the next emit
                pass


_weights_listeners = _Listeners()
_device_listeners = _Listeners()
_session_files: list[Path] = []


def on_weights_changed(callback: Callable[[], Any]) -> None:
    """Call ``callback()`` (held weakly) whenever weights are trained or loaded."""
    _weights_listeners.add(callback)


def weights_changed() -> None:
    """Tell every listener that the weights on offer changed (call from the GUI thread)."""
    _weights_listeners.emit()


def remember(path: str | os.PathLike) -> None:
    """Offer ``path`` (a checked ``.safetensors``) for the rest of the session."""
    p = Path(path).resolve()
    if p not in _session_files:
        _session_files.append(p)
    weights_changed()


# -- listing ---------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsChoice:
    """One weights file as the widgets show it."""

    label: str
    path: str
    architecture: str
    source: str  # "shipped", "yours" or "file"
    description: str = ""
    params: int = 0
    default: bool = False

    @property
    def tooltip(self) -> str:
        size = f"{self.params / 1e6:.2f} M parameters" if self.params else ""
        parts = [self.description, size, self.path]
        return "\n".join(p for p in parts if p)


def _entries(directory: Path | None) -> list[dict[str, Any]]:
    from ..models.weights import list_models

    try:
        return [m for m in list_models(directory) if Path(m["path"]).stem != "checkpoint"]
    except OSError:  # an unreadable folder lists nothing rather than breaking the widget
        return []


def _runs(root: Path) -> list[Path]:
    """Run folders under ``root``, newest first."""
    try:
        subs = [p for p in root.iterdir() if p.is_dir()]
    except OSError:
        return []
    return sorted(subs, key=lambda p: p.stat().st_mtime, reverse=True)


def weights_choices(architecture: str | None = None, input: str | None = "rgb") -> list[WeightsChoice]:
    """Weights on offer, shipped (the default first), then yours (newest first), then files.

    Parameters
    ----------
    architecture : str, optional
        Only weights of this network (``"focusdeep-any"``, ...).
    input : {"rgb", "raw"} or None
        Only weights taking this input: ``"rgb"`` (stacks; the default) or
        ``"raw"`` (packed Bayer planes of camera raw files); None: all.
    """
    out: list[WeightsChoice] = []
    seen: set[Path] = set()

    def add(entry: dict[str, Any], label: str, source: str) -> None:
        p = Path(entry["path"]).resolve()
        if p in seen or (architecture and entry["architecture"] != architecture):
            return
        if input and entry.get("input", "rgb") != input:
            return
        seen.add(p)
        out.append(
            WeightsChoice(
                label=label,
                path=str(p),
                architecture=entry["architecture"],
                source=source,
                description=entry.get("description", ""),
                params=int(entry.get("params", 0)),
                default=bool(entry.get("default", False)) and source == "shipped",
            )
        )

    shipped = _entries(None)
    # the default of each architecture first (what a fusion uses when nothing is chosen)
    shipped.sort(key=lambda e: (not (e.get("default") or Path(e["path"]).stem == e["architecture"]), e["name"]))
    for e in shipped:
        add(e, f"{e['name']} (shipped)", "shipped")
    root = user_weights_dir()
    if root.is_dir():
        for e in _entries(root):
            add(e, f"{e['name']} (yours)", "yours")
        for run in _runs(root):
            for e in _entries(run):
                name = run.name if e["name"] == e["architecture"] else f"{run.name}/{e['name']}"
                add(e, f"{name} (yours)", "yours")
    for f in list(_session_files):
        if not f.is_file():
            continue
        for e in _entries(f.parent):
            if Path(e["path"]).resolve() == f:
                add(e, f"{f.stem} ({f.parent.name or f.parent})", "file")
    return out


def check_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """Check a user's weights file before offering it; return its config.

    Refuses anything but ``.safetensors`` (a pickle can run code when loaded), a
    file without its ``.json`` config, a checksum mismatch and non-RGB weights.

    Raises
    ------
    ValueError
        With a one-line message for the user.
    """
    from ..models.weights import read_config, sha256_file

    p = Path(path)
    if p.suffix.lower() != ".safetensors":
        raise ValueError(f"{p.name}: {_REFUSED}")
    if not p.is_file():
        raise ValueError(f"{p}: no such file")
    try:
        cfg = read_config(p)
    except (OSError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if sha256_file(p) != cfg["sha256"]:
        raise ValueError(f"{p.name}: checksum mismatch with {p.with_suffix('.json').name}; the file is corrupt or was modified")
    if cfg.get("input", "rgb") != "rgb":
        raise ValueError(f"{p.name} takes {cfg.get('input')} input; fusing stacks needs RGB-input weights")
    return cfg


# -- devices ---------------------------------------------------------------------------
_device_info: dict[str, Any] | None = None
_device_lock = threading.Lock()


def probe_devices() -> dict[str, Any]:
    """Which accelerators torch sees, and what ``"auto"`` resolves to (imports torch).

    Returns
    -------
    dict
        ``auto`` (device type ``"auto"`` picks), ``cuda`` and ``mps`` (bool), and
        ``cuda_name`` when CUDA is present. Cached after the first call.
    """
    global _device_info
    with _device_lock:
        if _device_info is not None:
            return dict(_device_info)
        import torch

        from ..models.device import pick_device

        mps = getattr(torch.backends, "mps", None)
        info: dict[str, Any] = {
            "auto": pick_device("auto").type,
            "cuda": bool(torch.cuda.is_available()),
            "mps": bool(mps is not None and mps.is_available()),
        }
        if info["cuda"]:
            info["cuda_name"] = torch.cuda.get_device_name(0)
        _device_info = info
        return dict(info)


def device_info() -> dict[str, Any] | None:
    """The probed devices, or None before :func:`probe_devices` has run."""
    return None if _device_info is None else dict(_device_info)


def on_devices_probed(callback: Callable[[dict[str, Any]], Any]) -> None:
    """Call ``callback(info)`` (held weakly) when a probe finishes."""
    _device_listeners.add(callback)


def devices_probed(info: dict[str, Any]) -> None:
    """Tell the listeners (GUI thread) that the device probe finished."""
    _device_listeners.emit(info)
