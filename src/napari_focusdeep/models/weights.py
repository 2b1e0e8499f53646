"""Model weights on disk: safetensors + a JSON config beside each file.

A weights file ``NAME.safetensors`` always travels with ``NAME.json``::

    {
      "format": "napari-focusdeep-weights", "version": 1,
      "name": "focusdeep-any",
      "architecture": "focusdeep-any",          # build_model() name
      "kwargs": {...},                          # constructor arguments
      "n_frames": 30 | null,                    # null: any burst length
      "input": "rgb",                           # or "raw" (packed RGGB)
      "params": 4297828,
      "description": "...",
      "training": {...},                        # free-form run info from the trainer
      "sha256": "..."                           # of the .safetensors file
      "default": true                           # optional: the method's default weights
    }

Only safetensors are read: a pickled checkpoint (``.pt``, ``.pth``, ``.ckpt``)
can run arbitrary code when loaded, so it is refused outright. The checksum is
verified before the tensors are parsed, so a truncated or modified file fails
with a clear :class:`ValueError`.

Installed weights live in ``napari_focusdeep/models/weights/`` (package data);
a user's own weights load from any path.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = [
    "WEIGHTS_DIR",
    "WeightsNotFoundError",
    "load_model_weights",
    "save_weights",
    "read_config",
    "resolve_weights",
    "default_weights",
    "load_state",
    "verify_weights",
    "load_model",
    "list_models",
    "fold_weight_norm",
    "sha256_file",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
FORMAT = "napari-focusdeep-weights"
VERSION = 1
_PICKLE_MSG = "only .safetensors weights are accepted; pickled checkpoints can run code"


class WeightsNotFoundError(FileNotFoundError):
    """No weights where they were looked for (or none installed for a method)."""


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_suffix(path: Path) -> None:
    if path.suffix.lower() != ".safetensors":
        raise ValueError(f"{path.name}: {_PICKLE_MSG}")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(
    model: Any,
    path: str | os.PathLike,
    config: dict[str, Any] | None = None,
    *,
    description: str = "",
    training: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights to ``path`` (``.safetensors``) and its JSON config beside.

    Parameters
    ----------
    model : BurstModel
        A network from :func:`~napari_focusdeep.models.build_model` (not one whose
        weight norm was folded for inference).
    path : path-like
        Target ``NAME.safetensors``; ``NAME.json`` is written next to it.
    config : dict, optional
        Extra or overriding config entries (e.g. ``{"default": True}``).
    description : str
        One line shown by ``list_models`` / ``focusdeep models``.
    training : dict, optional
        Run info (data, epochs, loss, PSNR, git commit, ...), stored as given.

    Returns
    -------
    Path
        The config file written.
    """
    from safetensors.torch import save as st_save

    from .factory import count_parameters

    path = Path(path)
    _check_suffix(path)
    if getattr(model, "_folded_weight_norm", False):
        raise ValueError("this model's weight norm was folded for inference; save the training model instead")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    kwargs = dict(getattr(model, "config", {}))
    cfg: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "name": path.stem,
        "architecture": model.architecture,
        "kwargs": kwargs,
        "n_frames": kwargs.get("n_frames"),
        "input": "raw" if kwargs.get("stem") == "raw" else "rgb",
        "params": count_parameters(model),
        "description": description,
        "training": dict(training or {}),
    }
    cfg.update(config or {})
    if kwargs:  # what the model was built with is authoritative (defaults filled in)
        cfg["kwargs"] = {**dict(cfg.get("kwargs") or {}), **kwargs}
        cfg["n_frames"] = kwargs.get("n_frames")
    data = st_save(state, metadata={"format": FORMAT, "architecture": str(cfg["architecture"])})
    _atomic_write_bytes(path, data)
    cfg["sha256"] = hashlib.sha256(data).hexdigest()
    cfg_path = path.with_suffix(".json")
    _atomic_write_bytes(cfg_path, (json.dumps(cfg, indent=2, sort_keys=False) + "\n").encode())
    return cfg_path


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON config of weights file ``path`` (not verified against the file)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        path = path.with_suffix(".safetensors")
    _check_suffix(path)
    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise WeightsNotFoundError(
            f"{path.name} has no config: expected {cfg_path.name} next to it "
            "(save weights with napari_focusdeep.models.save_weights)"
        )
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{cfg_path}: unreadable weights config ({exc})") from None
    for key in ("architecture", "kwargs", "sha256"):
        if key not in cfg:
            raise ValueError(f"{cfg_path}: weights config lacks {key!r}")
    return cfg


def _installed(directory: Path | None = None) -> list[Path]:
    d = WEIGHTS_DIR if directory is None else Path(directory)
    if not d.is_dir():
        return []
    return sorted(p for p in d.glob("*.safetensors") if p.with_suffix(".json").is_file())


def default_weights(architecture: str, directory: Path | None = None) -> Path:
    """The installed weights a method uses when none are given.

    ``ARCH.safetensors`` if present, else the installed file of that architecture
    marked ``"default": true``, else the first by name.
    """
    files = _installed(directory)
    exact = [p for p in files if p.stem == architecture]
    if exact:
        return exact[0]
    matching = []
    for p in files:
        try:
            cfg = read_config(p)
        except (ValueError, OSError):
            continue
        if cfg.get("architecture") == architecture:
            matching.append((not cfg.get("default", False), p.name, p))
    if not matching:
        raise WeightsNotFoundError(
            f"no weights installed for {architecture}; pass weights=PATH or train with `focusdeep train`"
        )
    return sorted(matching)[0][2]


def resolve_weights(name_or_path: str | os.PathLike, directory: Path | None = None) -> Path:
    """A weights path from a path, an installed name, or an architecture name."""
    p = Path(name_or_path).expanduser()
    if p.suffix.lower() == ".json":
        p = p.with_suffix(".safetensors")
    if p.suffix:
        _check_suffix(p)  # refuse pickles before even looking for them
        if p.is_file():
            return p
        raise WeightsNotFoundError(f"weights file not found: {p}")
    name = str(name_or_path)
    d = WEIGHTS_DIR if directory is None else Path(directory)
    candidate = d / f"{name}.safetensors"
    if candidate.is_file():
        return candidate
    from .factory import ARCHITECTURES

    if name in ARCHITECTURES:
        return default_weights(name, directory)
    known = ", ".join(p.stem for p in _installed(directory)) or "none installed"
    raise WeightsNotFoundError(f"no weights named {name!r} (installed: {known}); pass a .safetensors path")


def _check_digest(path: Path, cfg: dict[str, Any], digest: str) -> None:
    if digest != cfg["sha256"]:
        raise ValueError(
            f"{path.name}: checksum mismatch (expected {cfg['sha256'][:12]}..., got {digest[:12]}...); "
            "the file is truncated, corrupt or was modified"
        )


def verify_weights(path: str | os.PathLike, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check a weights file without building its network; return its config.

    The file must match the sha256 its JSON config records, and its safetensors
    header must parse and cover the file exactly. Callers run this before any
    long work (reading and registering a stack) so that a damaged file is
    refused in seconds, not after minutes of registration.

    Parameters
    ----------
    path : path-like
        A ``.safetensors`` file with its ``.json`` config beside it.
    cfg : dict, optional
        The config, when already read.

    Returns
    -------
    dict
        The config.

    Raises
    ------
    ValueError
        Checksum mismatch, an unreadable safetensors header, or a pickle.
    WeightsNotFoundError
        No config beside the file.
    """
    from safetensors import safe_open

    path = Path(path)
    _check_suffix(path)
    cfg = read_config(path) if cfg is None else cfg
    _check_digest(path, cfg, sha256_file(path))
    try:
        # the header alone (tensor names, dtypes, offsets): no tensor is read
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"{path.name}: not a valid safetensors file ({exc})") from None
    return cfg


def load_state(path: str | os.PathLike, cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """Verify ``path`` against its config's checksum, then read its tensors (CPU)."""
    from safetensors.torch import load as st_load

    path = Path(path)
    _check_suffix(path)
    cfg = read_config(path) if cfg is None else cfg
    # hash the very bytes that are parsed, so the file cannot change in between
    data = path.read_bytes()
    _check_digest(path, cfg, hashlib.sha256(data).hexdigest())
    try:
        return st_load(data)
    except Exception as exc:  # safetensors raises its own error type
        raise ValueError(f"{path.name}: not a valid safetensors file ({exc})") from None


def load_model_weights(model: Any, name_or_path: str | os.PathLike) -> dict[str, Any]:
    """Load verified weights into an existing (training) ``model``; returns the config.

    The architecture recorded with the weights must match the model's.
    """
    path = resolve_weights(name_or_path)
    cfg = read_config(path)
    arch = getattr(model, "architecture", None)
    if arch and cfg["architecture"] != arch:
        raise ValueError(f"{path.name} holds a {cfg['architecture']} network, not {arch}")
    state = load_state(path, cfg)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path.name} does not fit this {arch or 'model'}: {exc}") from None
    return cfg


def fold_weight_norm(model: Any) -> Any:
    """Replace weight-norm parametrisations by plain weights (faster inference)."""
    from torch.nn.utils import parametrize

    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    model._folded_weight_norm = True
    return model


def load_model(
    name_or_path: str | os.PathLike,
    device: Any = "cpu",
    *,
    inference: bool = True,
) -> Any:
    """Build the network described by a weights file's config and load the weights.

    Parameters
    ----------
    name_or_path : str or path
        A ``.safetensors`` path (its ``.json`` beside it), the name of installed
        weights, or an architecture name (its default installed weights).
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"``, ``"mps"`` (see
        :func:`~napari_focusdeep.models.device.pick_device`).
    inference : bool
        Return the model in eval mode with weight norm folded into plain weights
        (set False to fine-tune it).

    Returns
    -------
    BurstModel
        With ``weights_config`` (the JSON) and ``weights_path`` attributes.
    """
    from .device import pick_device
    from .factory import build_model

    path = resolve_weights(name_or_path)
    cfg = read_config(path)
    state = load_state(path, cfg)
    model = build_model(cfg["architecture"], **cfg["kwargs"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path.name} does not fit a {cfg['architecture']} with its config: {exc}") from None
    if inference:
        model.eval()
        fold_weight_norm(model)
        for p in model.parameters():
            p.requires_grad_(False)
    model.to(pick_device(device))
    model.weights_config = cfg
    model.weights_path = path
    return model


def list_models(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Installed weights (``models/weights/`` unless ``directory`` is given).

    Returns
    -------
    list of dict
        One per weights file, sorted by name: ``name``, ``architecture``,
        ``n_frames`` (None: any), ``params``, ``description``, ``input``,
        ``default`` and ``path``.
    """
    out = []
    for p in _installed(None if directory is None else Path(directory)):
        try:
            cfg = read_config(p)
        except (ValueError, OSError):
            continue
        out.append(
            {
                "name": p.stem,
                "architecture": cfg["architecture"],
                "n_frames": cfg.get("n_frames"),
                "params": int(cfg.get("params", 0)),
                "description": str(cfg.get("description", "")),
                "input": str(cfg.get("input", "rgb")),
                "default": bool(cfg.get("default", False)),
                "path": str(p),
            }
        )
    return out
