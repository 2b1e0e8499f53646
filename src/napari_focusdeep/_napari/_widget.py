"""The Fuse widget: pick a stack layer and a method, fuse in a worker thread, add the results.

Deliberately thin: it reads a layer into a :class:`~napari_focusdeep.stack.Stack`,
runs :func:`~napari_focusdeep.fusion.fuse_iter` in a napari thread worker (so the
viewer stays responsive and the bar follows every frame, or every frame of every
tile for the deep methods), and adds the result as layers. All the work lives in
the core; nothing here knows how fusion works.

For a deep method (``Method.kind == "deep"``) the widget also offers the weights
of that network (shipped, trained with the Train widget, or loaded from a file),
the device and the tile size. Only one long job runs at a time (see
:mod:`._busy`): a Fuse while a training run works is refused with a message.

A layer opened from camera raw files (the reader marks it, see
:func:`._layers.stack_to_layer_data`) shows the demosaiced sRGB frames and fuses
them like any RGB stack; with a network chosen, **Camera raw: fuse the Bayer
planes** instead runs :func:`~napari_focusdeep.raw_fusion.fuse_raw_iter` on the
files' packed Bayer planes with raw-input weights.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generator

from qtpy.QtCore import QEvent, Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from . import _busy, _weights
from ._controls import DeviceBox, WeightsCombo

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..fusion import FusionResult, Progress
    from ..stack import Stack

__all__ = ["FuseWidget"]

_log = logging.getLogger(__name__)

_REFERENCES = ("middle", "first", "last")
_MOTIONS = ("affine", "translation", "euclidean", "homography")
_STAGE_WORDS = {"register": "registering", "prepare": "caching frames", "fuse": "fusing"}
_CHANNEL_WORDS = {3: ("red", "green", "blue"), 4: ("red", "green", "blue", "alpha")}
_KIND_ROLE = Qt.ItemDataRole.UserRole + 1  # method kind ("classical"/"deep") in the method box
_DEFAULT_TILE = 512  # until the registry says otherwise (models.methods.OPTIONS["tile"])


@dataclass
class _Failure:
    """What the worker returns instead of raising: the message the user will read."""

    message: str


@dataclass
class _Run:
    """One fusion run: what the results need from the input layer, and the generator.

    Kept outside the widget so that a run can be stopped from the widget's
    ``destroyed`` signal, when the widget itself can no longer be touched.
    """

    layer_name: str
    axes: str
    scale: tuple[float, ...]
    translate: tuple[float, ...]
    rgb: bool
    colormap: str | None
    contrast_limits: tuple[float, float] | None
    n_frames: int
    z_step: float | None
    started: float = field(default_factory=time.perf_counter)
    worker: Any = None
    gen: Any = None
    busy: Any = None  # the claim on the machine (see _busy), released when the worker ends
    note: str | None = None  # said with the result too, e.g. that a fixed-N network resampled the stack

    def stop(self) -> None:
        """Ask the worker to stop at its next frame (harmless if it has finished)."""
        if self.worker is not None:
            try:
                self.worker.quit()
            except RuntimeError:  # the Qt side is already gone
                pass

    def close_generator(self, *_: Any) -> None:
        """Close the fusion generator so its clean-up (temporary files) runs now.

        Called when the worker has finished, so the thread no longer runs it; this
        matters after a cancel, where the worker just stops calling the generator.
        """
        gen, self.gen = self.gen, None
        if gen is not None:
            try:
                gen.close()
            except Exception:  # clean-up must never take the viewer down
                _log.debug("closing the fusion generator failed", exc_info=True)
        busy, self.busy = self.busy, None
        _busy.release(busy)


class _RunHolder:
    """The widget's current run, reachable after the widget's C++ side is deleted."""

    def __init__(self) -> None:
        self.run: _Run | None = None
        self.alive = True  # False once the widget's Qt side is destroyed

    def stop(self, *_: Any) -> None:
        if self.run is not None:
            self.run.stop()

    def widget_destroyed(self, *_: Any) -> None:
        self.alive = False
        self.stop()


def _fusion_job(stack: Stack, options: dict[str, Any], run: _Run) -> Generator[Progress, None, Any]:
    """The worker's generator: relays fusion progress, returns the result or a failure.

    Errors are caught here and returned as :class:`_Failure` so the widget shows one
    plain notification instead of napari's traceback dialog. ``options["raw"]``
    fuses the stack's raw files on the Bayer path instead (:func:`_raw_options`).
    """
    from ..fusion import fuse_iter

    options = dict(options)
    if options.pop("raw", False):
        from ..raw_fusion import fuse_raw_iter

        gen = fuse_raw_iter(list(stack.paths), **_raw_options(options))
    else:
        gen = fuse_iter(stack, **options)
    run.gen = gen
    try:
        result = yield from gen
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        _log.debug("fusion failed", exc_info=True)
        return _Failure(str(exc) or type(exc).__name__)
    return result


def _raw_options(options: dict[str, Any]) -> dict[str, Any]:
    """The Fuse options as :func:`~napari_focusdeep.raw_fusion.fuse_raw_iter` takes them
    on the Bayer path (sharpness channel and the registered stack do not apply)."""
    keep = ("method", "register", "reference", "motion", "weights", "device", "tile")
    return {"path": "bayer", **{k: options[k] for k in keep if k in options}}


def is_raw_layer(layer: Any) -> bool:
    """Whether ``layer`` was opened from camera raw files by this plugin's reader."""
    from ._layers import META_KEY

    meta = (getattr(layer, "metadata", None) or {}).get(META_KEY) or {}
    return bool(meta.get("raw")) and bool(meta.get("paths"))


def progress_text(p: Progress, n_frames: int) -> str:
    """The status line for one progress step of a stack of ``n_frames`` frames.

    Fusion counts frames x tiles; when there are several tiles the line says which
    tile and frame, so a long deep fusion shows where it is.
    """
    word = p.message or _STAGE_WORDS.get(p.stage, p.stage)
    n = int(n_frames)
    if p.stage == "fuse" and n and p.total > n and p.total % n == 0 and p.done:
        tile, frame = divmod(int(p.done) - 1, n)
        return f"{word}: tile {tile + 1}/{p.total // n}, frame {frame + 1}/{n}"
    return f"{word}: {p.done}/{p.total}"


def _eligible(layer: Any) -> bool:
    """Image layers that can be read as a focus stack (frames along Z)."""
    from napari.layers import Image

    from ._layers import layer_axes

    if not isinstance(layer, Image) or getattr(layer, "multiscale", False):
        return False
    axes = layer_axes(layer.data.ndim, bool(layer.rgb), layer.metadata)
    return axes in ("ZYX", "ZYXC", "TZYX", "TZYXC")


class FuseWidget(QWidget):
    """Fuse a focus stack layer into an all-in-focus image and a depth map.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers are offered and to which the results are added.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self._holder = _RunHolder()
        # Stop a running fusion when the widget goes away (dock closed, viewer closed).
        self.destroyed.connect(self._holder.widget_destroyed)

        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip("Image layer with frames along Z: (Z, Y, X), (Z, Y, X, RGB) or (T, Z, Y, X)")
        self.method_combo = QComboBox()
        self.method_info = QLabel()
        self.method_info.setWordWrap(True)
        self.method_info.setStyleSheet("color: gray;")
        self.register_check = QCheckBox("Register frames")
        self.register_check.setChecked(True)
        self.register_check.setToolTip("Align every frame to the reference first (hand-held brackets, focus breathing)")
        self.motion_combo = QComboBox()
        self.motion_combo.addItems(_MOTIONS)
        self.motion_combo.setToolTip("How frames may move: affine covers shift, rotation and focus breathing")
        self.reference_combo = QComboBox()
        self.reference_combo.addItems(_REFERENCES)
        self.reference_combo.setToolTip("The frame whose geometry the result takes")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("What sharpness is measured on; all channels are fused the same way")
        self.keep_registered_check = QCheckBox("Keep registered stack")
        self.keep_registered_check.setToolTip("Also add the aligned frames as a layer (computed lazily)")
        self.crop_check = QCheckBox("Crop to the area all frames cover")
        self.crop_check.setToolTip("Drop the borders that registration had to fill in")

        # The deep methods' controls, shown only while a deep method is chosen.
        self.model_box = QGroupBox("Network")
        self.weights_combo = WeightsCombo(self.refresh_weights)
        self.weights_combo.setToolTip("Weights of the chosen network: shipped, trained with the Train widget, or loaded")
        self.load_weights_button = QPushButton("Load weights file...")
        self.load_weights_button.setToolTip("A .safetensors file with its .json config beside it (pickles are refused)")
        self.device_box = DeviceBox()
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(64, 8192)
        self.tile_spin.setSingleStep(64)
        self.tile_spin.setValue(_DEFAULT_TILE)
        self.tile_spin.setSuffix(" px")
        self.tile_spin.setToolTip(
            "The image is fused in overlapping tiles of this size (plus context), blended seamlessly; "
            "smaller tiles need less memory (on GPU out-of-memory the tile is halved automatically)"
        )
        self.weights_note = QLabel()
        self.weights_note.setWordWrap(True)
        self.weights_note.setStyleSheet("color: gray;")
        self.raw_check = QCheckBox("Camera raw: fuse the Bayer planes")
        self.raw_check.setToolTip(
            "The stack was read from camera raw files: fuse their packed Bayer planes with a raw-input "
            "network (demosaicking and fusion in one) instead of the demosaiced frames"
        )
        self.raw_check.setVisible(False)
        model_form = QFormLayout(self.model_box)
        model_form.addRow("", self.raw_check)
        model_form.addRow("Weights", self.weights_combo)
        model_form.addRow("", self.load_weights_button)
        model_form.addRow("", self.weights_note)
        model_form.addRow("Device", self.device_box)
        model_form.addRow("Tile", self.tile_spin)
        self.model_box.setVisible(False)
        self._tile_touched = False
        self.tile_spin.valueChanged.connect(lambda *_: setattr(self, "_tile_touched", True))

        self.fuse_button = QPushButton("Fuse")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Ready")
        self.status.setWordWrap(True)

        form = QFormLayout()
        form.addRow("Stack", self.layer_combo)
        form.addRow("Method", self.method_combo)
        form.addRow("", self.method_info)
        form.addRow("", self.register_check)
        form.addRow("Motion", self.motion_combo)
        form.addRow("Reference", self.reference_combo)
        form.addRow("Sharpness on", self.channel_combo)
        form.addRow("", self.keep_registered_check)
        form.addRow("", self.crop_check)
        form.addRow(self.model_box)
        buttons = QHBoxLayout()
        buttons.addWidget(self.fuse_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.fuse_button.clicked.connect(lambda: self.fuse_layer())
        self.cancel_button.clicked.connect(self.cancel)
        self.register_check.toggled.connect(self._sync_enabled)
        self.method_combo.currentIndexChanged.connect(self._show_method_info)
        self.layer_combo.currentIndexChanged.connect(self._refresh_channels)
        self.load_weights_button.clicked.connect(self._choose_weights_file)
        self.weights_combo.currentIndexChanged.connect(self._show_weights_info)
        self.raw_check.toggled.connect(lambda *_: self.refresh_weights())
        # weights trained (Train widget) or loaded (another Fuse widget) appear here at once
        _weights.on_weights_changed(self.refresh_weights)

        self.refresh_methods()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_layers)
        events.inserted.connect(self._watch_layer)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_layers)
        self._refresh_layers()
        self._sync_enabled()

    # -- state ----------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        """The running thread worker, or None."""
        run = self._holder.run
        return None if run is None else run.worker

    @property
    def is_running(self) -> bool:
        return self._holder.run is not None

    def selected_layer(self) -> Any:
        """The layer chosen in the Stack box, or None."""
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    # -- filling the boxes ----------------------------------------------------------
    def refresh_methods(self) -> None:
        """Fill the method box from the registry (descriptions become tooltips)."""
        current = self.method_combo.currentText()
        self.method_combo.blockSignals(True)
        self.method_combo.clear()
        try:
            from ..fusion.registry import list_methods

            listed = list_methods()
            methods = [(m.name, m.description, m.kind) for m in listed]
            tiles = [int(m.options["tile"]) for m in listed if m.kind == "deep" and "tile" in m.options]
            if tiles and not self._tile_touched:
                self.tile_spin.blockSignals(True)  # not the user's choice
                self.tile_spin.setValue(tiles[0])  # the deep methods' own default
                self.tile_spin.blockSignals(False)
        except Exception as exc:  # noqa: BLE001 - a broken optional method must not kill the widget
            self._notify_error(f"could not list the fusion methods: {exc}")
            methods = []
        for i, (name, description, kind) in enumerate(methods):
            self.method_combo.addItem(name)
            self.method_combo.setItemData(i, description, Qt.ItemDataRole.ToolTipRole)
            self.method_combo.setItemData(i, kind, _KIND_ROLE)
        names = [m[0] for m in methods]
        if current in names:
            self.method_combo.setCurrentIndex(names.index(current))
        elif "pyramid" in names:
            self.method_combo.setCurrentIndex(names.index("pyramid"))
        self.method_combo.blockSignals(False)
        self._show_method_info()

    def _show_method_info(self, *_: Any) -> None:
        tip = self.method_combo.currentData(Qt.ItemDataRole.ToolTipRole)
        self.method_info.setText(tip or "")
        self.method_combo.setToolTip(tip or "")
        deep = self.is_deep()
        self.model_box.setVisible(deep)
        if deep:
            self.refresh_weights()
            self.device_box.ensure_probed()  # imports torch, in a thread, the first time only

    def is_deep(self) -> bool:
        """Whether the chosen method is a network (it then needs weights, a device, a tile)."""
        return self.method_combo.currentData(_KIND_ROLE) == "deep"

    def is_raw_mode(self) -> bool:
        """Whether Fuse will run the raw (Bayer) network on the selected layer's raw files."""
        return self.is_deep() and self.raw_check.isChecked() and is_raw_layer(self.selected_layer())

    # -- weights ----------------------------------------------------------------------
    def refresh_weights(self) -> None:
        """List the weights of the chosen network: shipped, yours (trained), loaded files."""
        if not self.is_deep():
            return
        arch = self.method_combo.currentText()
        current = self.weights_combo.currentData()
        try:
            choices = _weights.weights_choices(arch, input="raw" if self.is_raw_mode() else "rgb")
        except Exception as exc:  # noqa: BLE001 - a broken weights folder must not kill the widget
            _log.debug("listing weights failed", exc_info=True)
            choices = []
            self.weights_note.setText(f"could not list weights: {exc}")
        self.weights_combo.blockSignals(True)
        self.weights_combo.clear()
        for i, c in enumerate(choices):
            self.weights_combo.addItem(c.label, c.path)
            self.weights_combo.setItemData(i, c.tooltip, Qt.ItemDataRole.ToolTipRole)
        idx = self.weights_combo.findData(current) if current else -1
        self.weights_combo.setCurrentIndex(idx if idx >= 0 else (0 if choices else -1))
        self.weights_combo.blockSignals(False)
        self._show_weights_info()
        self._sync_enabled()

    def _show_weights_info(self, *_: Any) -> None:
        if self.weights_combo.count() == 0:
            arch = self.method_combo.currentText()
            if self.is_raw_mode():
                self.weights_note.setText(f"No raw-input {arch} weights: train some with focusdeep train --raw.")
                self.weights_combo.setToolTip("")
                return
            self.weights_note.setText(
                f"No {arch} weights yet: train some with Plugins > FocusDeep > Train, or load a .safetensors file."
            )
            self.weights_combo.setToolTip("")
            return
        tip = self.weights_combo.currentData(Qt.ItemDataRole.ToolTipRole) or ""
        self.weights_combo.setToolTip(tip)
        self.weights_note.setText(tip.splitlines()[0] if tip else "")

    def selected_weights(self) -> str | None:
        """Path of the chosen weights file, or None (no weights for this network)."""
        return self.weights_combo.currentData() or None

    def _choose_weights_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Load network weights", str(_weights.user_weights_dir()), "Weights (*.safetensors);;All files (*)"
        )
        if path:
            self.load_weights_file(path)

    def load_weights_file(self, path: str | Any) -> bool:
        """Check a weights file and offer it (choosing its network); False if refused.

        Only ``.safetensors`` with their ``.json`` config are accepted: a pickled
        checkpoint can run code when it is loaded, so it is refused with a message.
        """
        from pathlib import Path

        try:
            cfg = _weights.check_weights_file(path)
        except ValueError as exc:
            self._notify_error(str(exc))
            return False
        arch = cfg["architecture"]
        idx = self.method_combo.findText(arch)
        if idx < 0 or self.method_combo.itemData(idx, _KIND_ROLE) != "deep":
            self._notify_error(f"{Path(path).name} holds a {arch} network, which no fusion method here runs")
            return False
        if self.method_combo.currentText() != arch:
            self._notify_info(f"{Path(path).name} holds {arch} weights: method set to {arch}")
            self.method_combo.setCurrentIndex(idx)
        _weights.remember(path)  # every Fuse widget now lists it (and refreshes this one)
        self.refresh_weights()
        i = self.weights_combo.findData(str(Path(path).resolve()))
        if i >= 0:
            self.weights_combo.setCurrentIndex(i)
        return True

    def _watch_layer(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_layers)

    def _refresh_layers(self, *_: Any) -> None:
        current = self.layer_combo.currentText()
        names = [layer.name for layer in self.viewer.layers if _eligible(layer)]
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentIndex(names.index(current))
        else:
            active = self.viewer.layers.selection.active
            if active is not None and active.name in names:
                self.layer_combo.setCurrentIndex(names.index(active.name))
        self.layer_combo.blockSignals(False)
        self._refresh_channels()
        self._sync_enabled()

    def _refresh_raw(self) -> None:
        """Offer the raw network only for layers read from camera raw files."""
        raw = is_raw_layer(self.selected_layer())
        changed = raw != (not self.raw_check.isHidden())
        self.raw_check.setVisible(raw)
        if changed and self.raw_check.isChecked() and self.is_deep():
            self.refresh_weights()  # raw-input weights only while the raw path is on

    def _refresh_channels(self, *_: Any) -> None:
        self._refresh_raw()
        layer = self.selected_layer()
        current = self.channel_combo.currentData()
        self.channel_combo.clear()
        self.channel_combo.addItem("luminance", "luminance")
        self.channel_combo.addItem("brightest channel (max)", "max")
        if layer is not None and layer.rgb:
            n = int(layer.data.shape[-1])
            words = _CHANNEL_WORDS.get(n, ())
            for i in range(n):
                label = f"channel {i}" + (f" ({words[i]})" if i < len(words) else "")
                self.channel_combo.addItem(label, i)
        idx = self.channel_combo.findData(current)
        self.channel_combo.setCurrentIndex(max(idx, 0))

    def _sync_enabled(self, *_: Any) -> None:
        running = self.is_running
        registering = self.register_check.isChecked()
        weights_ok = not self.is_deep() or self.weights_combo.count() > 0
        self.fuse_button.setEnabled(not running and self.layer_combo.count() > 0 and weights_ok)
        self.cancel_button.setEnabled(running)
        for w in (self.layer_combo, self.method_combo, self.register_check, self.channel_combo, self.model_box):
            w.setEnabled(not running)
        for w in (self.motion_combo, self.reference_combo, self.keep_registered_check, self.crop_check):
            w.setEnabled(not running and registering)

    # -- running --------------------------------------------------------------------
    def options(self) -> dict[str, Any]:
        """The keyword arguments for :func:`~napari_focusdeep.fusion.fuse_iter` the boxes say."""
        register = self.register_check.isChecked()
        opts = {
            "method": self.method_combo.currentText(),
            "register": register,
            "reference": self.reference_combo.currentText(),
            "motion": self.motion_combo.currentText(),
            "channel": self.channel_combo.currentData(),
            "return_registered": register and self.keep_registered_check.isChecked(),
        }
        if self.is_deep():
            opts.update(weights=self.selected_weights(), device=self.device_box.device(), tile=int(self.tile_spin.value()))
        if self.is_raw_mode():
            opts.update(raw=True, return_registered=False)
        return opts

    def fuse_layer(self, layer: Any = None) -> Any:
        """Start fusing ``layer`` (default: the selected one) in a worker thread.

        Returns the started worker, or None when nothing was started (a run is
        already going, or the layer is not a stack; the user is told why).
        """
        from napari.qt.threading import create_worker

        from ._layers import stack_from_layer

        if self.is_running:
            self._notify_info("a fusion is already running; wait for it or cancel it")
            return None
        layer = self.selected_layer() if layer is None else layer
        if layer is None:
            self._notify_error("no stack to fuse: open a focus stack (or File > Open Sample > FocusDeep) first")
            return None
        try:
            stack = stack_from_layer(layer)
            options = self.options()
            if not options["method"]:
                raise ValueError("no fusion method is available")
            if self.is_deep() and not options["weights"]:
                raise ValueError(
                    f"no {options['method']} weights to fuse with: train some (Plugins > FocusDeep > Train) "
                    "or load a .safetensors file"
                )
            note = None
            if self.is_deep() and not options.get("raw"):
                from ..models.methods import resampling_note

                # also verifies the weights, so a damaged file is refused before the run starts
                note = resampling_note(options["method"], stack.n_frames, options["weights"])
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
            self._notify_error(str(exc))
            return None
        try:  # one long job at a time: a training run (or another Fuse) owns the CPU/GPU
            busy = _busy.claim("fusion", f"{options['method']} on '{layer.name}'")
        except RuntimeError as exc:
            self._notify_info(str(exc))
            return None

        run = _Run(
            layer_name=layer.name,
            axes=stack.axes,
            scale=tuple(float(s) for s in layer.scale),
            translate=tuple(float(t) for t in layer.translate),
            rgb=bool(layer.rgb),
            colormap=None if layer.rgb else getattr(layer.colormap, "name", None),
            contrast_limits=None if layer.rgb else tuple(float(c) for c in layer.contrast_limits),
            n_frames=stack.n_frames,
            z_step=stack.z_step,
            busy=busy,
            note=note,
        )
        worker = create_worker(_fusion_job, stack, options, run, _start_thread=False)
        run.worker = worker
        # Bound methods of this widget are disconnected by Qt when it is destroyed; the
        # partials are not, so they check ``self._holder.alive`` first. The generator is
        # closed whatever happens to the widget.
        worker.yielded.connect(self._on_progress)
        worker.aborted.connect(self._on_aborted)
        worker.returned.connect(functools.partial(self._on_returned, run, options))
        worker.finished.connect(run.close_generator)
        worker.finished.connect(functools.partial(self._on_finished, run))
        self._holder.run = run
        self.progress.setRange(0, 0)  # busy until the first frame reports
        self.status.setText(f"starting {options['method']} on '{layer.name}' ..." + (f" ({note})" if note else ""))
        if note:  # the status line is soon overwritten by progress; a notification stays
            self._notify_info(f"{options['method']}: {note}")
        self._sync_enabled()
        worker.start()
        return worker

    def cancel(self) -> None:
        """Stop the running fusion at its next frame; no layer is added."""
        run = self._holder.run
        if run is None:
            return
        run.stop()
        self.cancel_button.setEnabled(False)
        self.status.setText("cancelling ...")

    def _on_progress(self, p: Progress) -> None:
        if p.total:
            self.progress.setRange(0, int(p.total))
            self.progress.setValue(int(p.done))
        run = self._holder.run
        self.status.setText(progress_text(p, run.n_frames if run is not None else 0))

    def _on_aborted(self) -> None:
        self.status.setText("cancelled")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _on_finished(self, run: _Run) -> None:
        if self._holder.run is run:
            self._holder.run = None
        if self._holder.alive:
            self._sync_enabled()

    def _on_returned(self, run: _Run, options: dict[str, Any], result: Any) -> None:
        if not self._holder.alive:  # the widget went away while the last frame ran
            return
        if isinstance(result, _Failure):
            self.status.setText(f"failed: {result.message}")
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self._notify_error(f"Fusion failed: {result.message}")
            return
        try:
            self._add_result_layers(run, options, result)
        except Exception as exc:  # noqa: BLE001
            _log.debug("adding the result layers failed", exc_info=True)
            self._notify_error(f"Fusion finished but its layers could not be added: {exc}")
            return
        seconds = time.perf_counter() - run.started
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.status.setText(f"done: {result.method}, {run.n_frames} frames in {seconds:.1f} s"
                            + (f" ({run.note})" if run.note else ""))

    # -- results --------------------------------------------------------------------
    def _add_result_layers(self, run: _Run, options: dict[str, Any], result: FusionResult) -> None:
        from ._layers import META_KEY

        spatial = [a for a in run.axes if a != "C"]
        by_axis_scale = dict(zip(spatial, run.scale))
        by_axis_translate = dict(zip(spatial, run.translate))
        image, depth = result.image, result.depth
        out_axes = [a for a in spatial if a != "Z"]  # (T,) Y, X
        translate = [by_axis_translate[a] for a in out_axes]
        if self.crop_check.isChecked() and result.valid_region is not None:
            y0, y1, x0, x1 = (int(v) for v in result.valid_region)
            if y1 > y0 and x1 > x0:
                if run.rgb or run.axes.endswith("C"):
                    image = image[..., y0:y1, x0:x1, :]
                else:
                    image = image[..., y0:y1, x0:x1]
                depth = depth[..., y0:y1, x0:x1]
                translate[-2] += y0 * by_axis_scale["Y"]
                translate[-1] += x0 * by_axis_scale["X"]
        scale = [by_axis_scale[a] for a in out_axes]
        out_meta = {
            "axes": "".join(out_axes) + ("C" if run.axes.endswith("C") else ""),
            "scale": {k: float(v) for k, v in result.scale.items()},
            "unit": result.unit,
            "method": result.method,
            "source": run.layer_name,
        }
        name = run.layer_name
        depth_max = float(max(run.n_frames - 1, 1)) * float(run.z_step or 1.0)
        depth_label = "frame index" if result.depth_unit == "frame" else result.depth_unit
        if getattr(result, "registered", None) is not None:  # a raw result has none
            reg_axes = [a for a in spatial if a != "T"]
            reg_kw: dict[str, Any] = {"rgb": run.rgb}
            if not run.rgb and run.colormap:
                reg_kw["colormap"] = run.colormap
                reg_kw["contrast_limits"] = run.contrast_limits
            self.viewer.add_image(
                result.registered,
                name=f"{name} registered",
                scale=[by_axis_scale[a] for a in reg_axes],
                translate=[by_axis_translate[a] for a in reg_axes],
                metadata={META_KEY: {**out_meta, "axes": "".join(reg_axes) + ("C" if run.axes.endswith("C") else "")}},
                **reg_kw,
            )
        self.viewer.add_image(
            depth,
            name=f"{name} depth",
            scale=scale,
            translate=translate,
            colormap="turbo",
            contrast_limits=(0.0, depth_max),
            metadata={"depth_unit": depth_label, META_KEY: {**out_meta, "axes": "".join(out_axes)}},
        )
        image_kw: dict[str, Any] = {"rgb": run.rgb}
        if not run.rgb and run.colormap:
            image_kw["colormap"] = run.colormap
            image_kw["contrast_limits"] = run.contrast_limits
        self.viewer.add_image(
            image,
            name=f"{name} all-in-focus",
            scale=scale,
            translate=translate,
            metadata={META_KEY: out_meta, "valid_region": result.valid_region},
            **image_kw,
        )

    # -- messages and lifetime ------------------------------------------------------
    @staticmethod
    def _notify_error(message: str) -> None:
        from napari.utils.notifications import show_error

        show_error(message)

    @staticmethod
    def _notify_info(message: str) -> None:
        from napari.utils.notifications import show_info

        show_info(message)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        self._holder.stop()
        super().closeEvent(event)

    def event(self, event: Any) -> bool:
        # napari removes a dock widget (its close button, viewer.window.remove_dock_widget)
        # by taking this widget out of it (setParent(None)) without closing it; a run
        # started here would otherwise go on and add layers nobody asked for any more.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._holder.stop()
        return super().event(event)
