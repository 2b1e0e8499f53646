"""The Train widget: fine-tune a FocusDeep network on your own stacks in the viewer.

Pick stack layers and, for each, a pseudo ground truth: an image layer made by any
tool (Helicon, Zerene, ...) or "make with pyramid", our classical fusion of the
stack (the paper's pipeline: pseudo ground truth from a good classical fuse of a
low-noise stack, noise injected on the fly so the network learns to denoise too).
**Train** registers the stacks, cuts them into crops and runs the library's trainer
(:func:`napari_focusdeep.training.train.train`) in a worker thread; the loss and
validation PSNR are plotted live. **Stop** ends the run at the next step and saves
a checkpoint; training again with the same run name continues it. Finished weights
are offered at once by every Fuse widget.

Like the Fuse widget this is a thin face: torch and the trainer are imported in
the worker thread, never at napari start-up.
"""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt, Signal
from qtpy.QtGui import QDoubleValidator
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import _busy, _weights
from ._controls import DeviceBox, LossPlot, WeightsCombo

if TYPE_CHECKING:  # pragma: no cover
    import napari

    from ..stack import Stack

__all__ = ["TrainWidget", "TrainPlan", "PYRAMID_GT"]

_log = logging.getLogger(__name__)

#: The pseudo-GT choice that fuses the stack with the classical pyramid method.
PYRAMID_GT = "make with pyramid"
_SCRATCH = "random initialisation (from scratch)"
# Numbers the trainer only reports in its log lines (plotted while the run goes; the
# final plot is redrawn from the run's history, so a changed wording costs nothing).
_BASELINE = re.compile(r"pyramid method scores ([0-9.]+) dB")
_START_SCORE = re.compile(r"starting weights score ([0-9.]+) dB")
_STEP_LINE = re.compile(r"step \d+:")
_STAGE_WORDS = {"register": "registering", "prepare": "caching frames", "fuse": "making pseudo-GT (pyramid)"}


@dataclass
class _Failure:
    """What the worker returns instead of raising: the message the user will read."""

    message: str


@dataclass
class _Stopped:
    """Stop pressed before the first training step: nothing was trained or saved."""


@dataclass
class TrainSource:
    """One stack to train on and its pseudo ground truth (None: make it with pyramid)."""

    name: str
    stack: Stack
    target: Any = None
    target_name: str | None = None


@dataclass
class TrainPlan:
    """Everything the worker needs, built on the GUI thread from the widget's boxes.

    ``config`` holds :class:`~napari_focusdeep.training.train.TrainConfig` keyword
    arguments (plain values, so building a plan imports no torch).
    """

    sources: list[TrainSource]
    config: dict[str, Any]
    out_dir: Path
    register: bool = True
    resume_from: int = 0


class _Relay(QObject):
    """Carries the trainer's callbacks from the worker thread to the GUI thread."""

    prepared = Signal(object)  # (label, stage, done, total, message)
    stepped = Signal(object)  # TrainProgress
    logged = Signal(str)


@dataclass(eq=False)
class _TrainRun:
    plan: TrainPlan
    relay: _Relay
    stop_event: threading.Event = field(default_factory=threading.Event)
    done_event: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.perf_counter)
    worker: Any = None
    busy: Any = None

    def stop(self, *_: Any) -> None:
        """Ask the trainer to stop at its next step (it then saves a checkpoint)."""
        self.stop_event.set()

    def finished(self, *_: Any) -> None:
        """The worker is done: free the machine for the next job."""
        busy, self.busy = self.busy, None
        _busy.release(busy)
        _ACTIVE.discard(self)


#: Runs whose worker has not finished (any widget, any viewer).
_ACTIVE: set[_TrainRun] = set()
_QUIT_HOOKED = False
_QUIT_WAIT_S = 120.0


def _stop_all_runs() -> None:
    """On quitting napari: stop every run and wait for its checkpoint to be written.

    Connected to ``QApplication.aboutToQuit``; without it the interpreter could exit
    while a worker thread is still inside a training step or writing a file.
    """
    runs = list(_ACTIVE)
    for run in runs:
        run.stop()
    deadline = time.monotonic() + _QUIT_WAIT_S
    for run in runs:
        run.done_event.wait(max(0.0, deadline - time.monotonic()))


def _hook_quit() -> None:
    global _QUIT_HOOKED
    if _QUIT_HOOKED:
        return
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    if app is not None:
        app.aboutToQuit.connect(_stop_all_runs)
        _QUIT_HOOKED = True


class _RunHolder:
    """The widget's current run, reachable after the widget's C++ side is deleted."""

    def __init__(self) -> None:
        self.run: _TrainRun | None = None
        self.alive = True

    def stop(self, *_: Any) -> None:
        if self.run is not None:
            self.run.stop()

    def widget_destroyed(self, *_: Any) -> None:
        self.alive = False
        self.stop()


# -- the worker ------------------------------------------------------------------------------
class _StopRequested(Exception):
    pass


def _register(stack: Stack, report: Any, stop: threading.Event) -> tuple[Any, tuple[int, int, int, int] | None]:
    """The stack's frames warped onto the middle frame (lazy) and the area all frames cover."""
    from ..registration import apply_transforms, iter_estimate_transforms

    data = stack.data if stack.has_channels else stack.data[..., None]
    gen = iter_estimate_transforms(data, motion="affine", reference="middle")
    try:
        while True:
            done, total = next(gen)
            if stop.is_set():
                gen.close()
                raise _StopRequested
            report("register", done, total, "registering")
    except StopIteration as end:
        tf = end.value
    return apply_transforms(data, tf), tf.valid_region


def _prepare(plan: TrainPlan, relay: _Relay, stop: threading.Event) -> Any:
    """Register the stacks and make the missing pseudo-GTs; returns the crops to train on.

    Frames and targets are cut to the area every registered frame covers: the
    borders registration filled in are not data. Channels (gray is replicated for
    the RGB networks), resampling to a fixed frame count and the held-out
    validation strip are :class:`~napari_focusdeep.training.data.StackCrops`' and
    the trainer's business.
    """
    import numpy as np

    from ..fusion import FusionCancelled, fuse
    from ..training.data import StackCrops

    stacks, targets, names = [], [], []
    n = len(plan.sources)
    for k, src in enumerate(plan.sources):
        label = f"'{src.name}' ({k + 1}/{n})" if n > 1 else f"'{src.name}'"

        def report(stage: str, done: int, total: int, message: str = "", _label: str = label) -> None:
            relay.prepared.emit((_label, stage, int(done), int(total), message))

        region = None
        if src.target is None:
            # the paper's pipeline: the classical pyramid fuse of the registered stack
            try:
                res = fuse(
                    src.stack,
                    method="pyramid",
                    register=plan.register,
                    reference="middle",
                    return_registered=plan.register,
                    progress=lambda p: report(p.stage, p.done, p.total, p.message),
                    cancel=stop,
                )
            except FusionCancelled:
                raise _StopRequested from None
            target = np.asarray(res.image)
            frames = np.asarray(res.registered if res.registered is not None else src.stack.data)
            region = res.valid_region
        else:
            if plan.register and src.stack.n_frames > 1:
                data, region = _register(src.stack, report, stop)
            else:
                data = src.stack.data
            report("prepare", 0, 1, "reading the registered frames")
            frames = np.asarray(data)
            if not src.stack.has_channels and frames.ndim == 4:
                frames = frames[..., 0]
            target = np.asarray(src.target)
        if target.shape[:2] != frames.shape[1:3]:
            raise ValueError(
                f"'{src.target_name}' is {target.shape[1]}x{target.shape[0]} pixels but the frames of '{src.name}' are "
                f"{frames.shape[2]}x{frames.shape[1]}"
            )
        if region is not None:
            y0, y1, x0, x1 = (int(v) for v in region)
            frames, target = frames[:, y0:y1, x0:x1], target[y0:y1, x0:x1]
        stacks.append(np.ascontiguousarray(frames))
        targets.append(np.ascontiguousarray(target))
        names.append(src.name)
        if stop.is_set():
            raise _StopRequested
    in_channels = int((plan.config.get("model") or {}).get("in_channels", 3))
    return StackCrops(
        stacks, targets, crop=int(plan.config["crop"]), noise=bool(plan.config.get("noise", True)),
        channels=in_channels, names=names,
    )


def train_job(plan: TrainPlan, relay: _Relay, stop: threading.Event, done: threading.Event | None = None) -> Any:
    """The worker: prepare the data, run the trainer, free the GPU; never raises.

    Returns the trainer's :class:`~napari_focusdeep.training.train.TrainResult`,
    :class:`_Stopped` (stopped before training began) or :class:`_Failure`.
    ``done`` is set on the way out, whatever happened.
    """
    try:
        crops = _prepare(plan, relay, stop)
        if stop.is_set():
            return _Stopped()
        from ..training.train import TrainConfig, train

        # Given the crops themselves, the trainer holds a strip (or whole stacks) out
        # for validation and makes batch k depend on (seed, k) only, so Stop + Train
        # continues exactly where the run stopped.
        return train(
            TrainConfig(**plan.config),
            plan.out_dir,
            resume=True,
            batches=crops,
            progress=relay.stepped.emit,
            stop=stop,
            log=relay.logged.emit,
        )
    except _StopRequested:
        return _Stopped()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a notification
        _log.debug("training failed", exc_info=True)
        return _Failure(str(exc) or type(exc).__name__)
    finally:
        _free_gpu()
        if done is not None:
            done.set()


def _free_gpu() -> None:
    """Empty the CUDA cache so napari (and the next fusion) get the memory back."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just to free nothing
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        import gc

        gc.collect()
        torch.cuda.empty_cache()


# -- the widget ------------------------------------------------------------------------------
def _stack_layer(layer: Any) -> bool:
    """Image layers that are one focus stack: (Z, Y, X) or (Z, Y, X, RGB), two frames or more."""
    from napari.layers import Image

    from ._layers import layer_axes

    if not isinstance(layer, Image) or getattr(layer, "multiscale", False):
        return False
    axes = layer_axes(layer.data.ndim, bool(layer.rgb), layer.metadata)
    return axes in ("ZYX", "ZYXC") and layer.data.shape[0] >= 2


def _image_layer(layer: Any, frame_shape: tuple[int, int]) -> bool:
    """Single images (gray or RGB) the size of a stack's frames: pseudo-GT candidates."""
    from napari.layers import Image

    if not isinstance(layer, Image) or getattr(layer, "multiscale", False):
        return False
    ndim = layer.data.ndim - (1 if layer.rgb else 0)
    return ndim == 2 and tuple(layer.data.shape[:2]) == tuple(frame_shape)


class TrainWidget(QWidget):
    """Fine-tune a FocusDeep network on stack layers and their pseudo ground truths.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose layers are offered.

    Attributes
    ----------
    model_kwargs : dict or None
        Network size used when training from scratch (default: the shipped
        weights' size, else the architecture's defaults). Starting from weights
        always uses their size.
    val_count : int
        Validation crops scored every "Validate every" steps.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.model_kwargs: dict[str, Any] | None = None
        self.val_count = 8
        self.last_result: Any = None
        self._log_lines: list[str] = []
        self._holder = _RunHolder()
        self.destroyed.connect(self._holder.widget_destroyed)
        self._rows: dict[str, tuple[bool, str]] = {}  # stack name -> (checked, pseudo-GT choice)

        # data
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Stack", "Pseudo ground truth"])
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(1, QHeaderView.ResizeMode.Stretch)
        self.table.setToolTip(
            "Tick the stacks to train on. Their pseudo ground truth: an image layer of the same size "
            "(e.g. from Helicon Focus or Zerene Stacker, in the middle frame's geometry), or made here with "
            "the pyramid method (best from a low-noise stack)"
        )
        self.register_check = QCheckBox("Register frames (to the middle frame)")
        self.register_check.setChecked(True)
        data_box = QGroupBox("Data")
        data_layout = QVBoxLayout(data_box)
        data_layout.addWidget(self.table)
        data_layout.addWidget(self.register_check)

        # network
        self.arch_combo = QComboBox()
        self.arch_combo.setToolTip("The network to train (the fusion methods of the same name run it)")
        self.init_combo = WeightsCombo(self._refresh_init)
        self.init_combo.setToolTip("Fine-tune these weights (default: the shipped ones), or start from random")
        self.arch_note = QLabel()
        self.arch_note.setWordWrap(True)
        self.arch_note.setStyleSheet("color: gray;")
        self.device_box = DeviceBox()
        net_box = QGroupBox("Network")
        net_form = QFormLayout(net_box)
        net_form.addRow("Architecture", self.arch_combo)
        net_form.addRow("Start from", self.init_combo)
        net_form.addRow("", self.arch_note)
        net_form.addRow("Device", self.device_box)

        # training
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 1_000_000)
        self.steps_spin.setValue(300)
        self.steps_spin.setToolTip("Optimiser steps (each on one batch of crops)")
        self.lr_edit = QLineEdit("1e-4")
        self.lr_edit.setValidator(QDoubleValidator(1e-9, 1.0, 9))
        self.lr_edit.setToolTip("Peak learning rate of Adam (cosine schedule); 1e-4 suits fine-tuning")
        self.crop_spin = QSpinBox()
        self.crop_spin.setRange(16, 1024)
        self.crop_spin.setSingleStep(16)
        self.crop_spin.setValue(128)
        self.crop_spin.setSuffix(" px")
        self.crop_spin.setToolTip("Square crops the network trains on (the paper: 128); the loss ignores a 4-pixel border")
        self.batch_spin = QSpinBox()
        self.batch_spin.setRange(1, 256)
        self.batch_spin.setValue(4)
        self.batch_spin.setToolTip("Crops per step")
        self.val_spin = QSpinBox()
        self.val_spin.setRange(1, 100_000)
        self.val_spin.setValue(25)
        self.val_spin.setToolTip("Score held-out crops (PSNR) and save a checkpoint every this many steps")
        self.noise_check = QCheckBox("Noise augmentation")
        self.noise_check.setChecked(True)
        self.noise_check.setToolTip("Add random shot and read noise to the frames so the network learns to denoise as it fuses")
        train_box = QGroupBox("Training")
        train_form = QFormLayout(train_box)
        train_form.addRow("Steps", self.steps_spin)
        train_form.addRow("Learning rate", self.lr_edit)
        train_form.addRow("Crop", self.crop_spin)
        train_form.addRow("Batch", self.batch_spin)
        train_form.addRow("Validate every", self.val_spin)
        train_form.addRow("", self.noise_check)

        # output
        self.folder_edit = QLineEdit(str(_weights.user_weights_dir()))
        self.folder_edit.setToolTip("Runs saved here appear in the Fuse widget's weights list")
        self.browse_button = QPushButton("...")
        self.browse_button.setToolTip("Choose the folder")
        self.browse_button.setMaximumWidth(32)
        self.run_edit = QLineEdit()
        self.run_edit.setToolTip("The run's sub-folder (weights, checkpoint, log). An existing run of that name is continued")
        folder_row = QHBoxLayout()
        folder_row.addWidget(self.folder_edit, 1)
        folder_row.addWidget(self.browse_button)
        out_box = QGroupBox("Output")
        out_form = QFormLayout(out_box)
        out_form.addRow("Folder", folder_row)
        out_form.addRow("Run name", self.run_edit)

        self.train_button = QPushButton("Train")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        self.stop_button.setToolTip("End at the next step and save a checkpoint (Train again continues the run)")
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.status = QLabel("Ready")
        self.status.setWordWrap(True)
        self.detail = QLabel("")
        self.detail.setWordWrap(True)
        self.detail.setStyleSheet("color: gray;")
        self.plot = LossPlot()

        buttons = QHBoxLayout()
        buttons.addWidget(self.train_button)
        buttons.addWidget(self.stop_button)
        layout = QVBoxLayout(self)
        for w in (data_box, net_box, train_box, out_box):
            layout.addWidget(w)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addWidget(self.detail)
        layout.addWidget(self.plot, 1)
        self._inputs = (data_box, net_box, train_box, out_box)

        self.train_button.clicked.connect(lambda: self.start())
        self.stop_button.clicked.connect(self.stop)
        self.browse_button.clicked.connect(self._choose_folder)
        self.arch_combo.currentIndexChanged.connect(self._arch_changed)
        self.init_combo.currentIndexChanged.connect(self._show_init_info)
        _weights.on_weights_changed(self._refresh_init)

        self._fill_architectures()
        events = self.viewer.layers.events
        for ev in (events.inserted, events.removed, events.reordered):
            ev.connect(self._refresh_table)
        events.inserted.connect(self._watch_layer)
        for layer in self.viewer.layers:
            layer.events.name.connect(self._refresh_table)
        self._refresh_table()
        self._sync_enabled()

    # -- state ------------------------------------------------------------------------
    @property
    def worker(self) -> Any:
        """The running thread worker, or None."""
        run = self._holder.run
        return None if run is None else run.worker

    @property
    def is_running(self) -> bool:
        return self._holder.run is not None

    @property
    def out_dir(self) -> Path:
        """Where this run's weights, checkpoint and log go."""
        return Path(self.folder_edit.text().strip() or str(_weights.user_weights_dir())).expanduser() / self.run_edit.text().strip()

    # -- architectures and starting weights ---------------------------------------------
    def _fill_architectures(self) -> None:
        try:
            from ..fusion.registry import list_methods

            archs = [(m.name, m.description) for m in list_methods() if m.kind == "deep"]
        except Exception as exc:  # noqa: BLE001
            self._notify_error(f"could not list the networks: {exc}")
            archs = []
        self.arch_combo.blockSignals(True)
        self.arch_combo.clear()
        for i, (name, description) in enumerate(archs):
            self.arch_combo.addItem(name)
            self.arch_combo.setItemData(i, description, Qt.ItemDataRole.ToolTipRole)
        idx = self.arch_combo.findText("focusdeep-any")
        self.arch_combo.setCurrentIndex(max(idx, 0))
        self.arch_combo.blockSignals(False)
        self._arch_changed()

    def _arch_changed(self, *_: Any) -> None:
        self._refresh_init()
        self.run_edit.setText(self._fresh_run_name())
        self.device_box.ensure_probed()

    def _refresh_init(self) -> None:
        """Offer the weights of the chosen architecture (the shipped default first) and scratch."""
        arch = self.arch_combo.currentText()
        current = self.init_combo.currentData()
        try:
            choices = _weights.weights_choices(arch) if arch else []
        except Exception:  # noqa: BLE001 - a broken weights folder must not kill the widget
            _log.debug("listing weights failed", exc_info=True)
            choices = []
        self.init_combo.blockSignals(True)
        self.init_combo.clear()
        for i, c in enumerate(choices):
            self.init_combo.addItem(c.label, c.path)
            self.init_combo.setItemData(i, c.tooltip, Qt.ItemDataRole.ToolTipRole)
        self.init_combo.addItem(_SCRATCH, "")
        idx = self.init_combo.findData(current) if current is not None else -1
        self.init_combo.setCurrentIndex(idx if idx >= 0 else 0)
        self.init_combo.blockSignals(False)
        self._show_init_info()

    def _show_init_info(self, *_: Any) -> None:
        kwargs = self.model_config()
        n = kwargs.get("n_frames")
        note = f"{self.arch_combo.currentText()} takes {n} frames: stacks are resampled to {n}." if n else ""
        if not self.init_combo.currentData():
            note = (note + " Training from scratch needs far more steps than fine-tuning.").strip()
        self.arch_note.setText(note)
        self.arch_note.setVisible(bool(note))
        self.init_combo.setToolTip(self.init_combo.currentData(Qt.ItemDataRole.ToolTipRole) or "")

    def init_weights(self) -> str | None:
        """The weights training starts from, or None (random initialisation)."""
        return self.init_combo.currentData() or None

    def model_config(self) -> dict[str, Any]:
        """The network's constructor arguments: those of the starting weights, else the shipped size."""
        from ..models.weights import WeightsNotFoundError, default_weights, read_config

        init = self.init_weights()
        try:
            if init:
                return dict(read_config(init)["kwargs"])
            if self.model_kwargs is not None:
                return dict(self.model_kwargs)
            arch = self.arch_combo.currentText()
            return dict(read_config(default_weights(arch))["kwargs"]) if arch else {}
        except (WeightsNotFoundError, ValueError, OSError):
            return {}

    def _fresh_run_name(self) -> str:
        """``ARCH-YYYYmmdd-HHMM`` not yet used in the output folder."""
        folder = Path(self.folder_edit.text().strip() or str(_weights.user_weights_dir())).expanduser()
        base = f"{self.arch_combo.currentText() or 'run'}-{time.strftime('%Y%m%d-%H%M')}"
        name, k = base, 2
        while (folder / name).exists():
            name, k = f"{base}-{k}", k + 1
        return name

    def _choose_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Save training runs in", self.folder_edit.text())
        if folder:
            self.folder_edit.setText(folder)

    # -- the data table ------------------------------------------------------------------
    def _watch_layer(self, event: Any) -> None:
        event.value.events.name.connect(self._refresh_table)

    def _remember_rows(self) -> None:
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            combo = self.table.cellWidget(r, 1)
            if item is not None and combo is not None:
                self._rows[item.text()] = (item.checkState() == Qt.CheckState.Checked, combo.currentText())

    def _refresh_table(self, *_: Any) -> None:
        """One row per stack layer: a tick box and its pseudo-GT choice (kept across refreshes)."""
        self._remember_rows()
        stacks = [layer for layer in self.viewer.layers if _stack_layer(layer)]
        self.table.setRowCount(len(stacks))
        any_checked = any(self._rows.get(s.name, (False, ""))[0] for s in stacks)
        for r, layer in enumerate(stacks):
            checked, gt = self._rows.get(layer.name, (not any_checked and r == 0, PYRAMID_GT))
            item = QTableWidgetItem(layer.name)
            item.setFlags(Qt.ItemFlag.ItemIsUserCheckable | Qt.ItemFlag.ItemIsEnabled)
            item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
            item.setToolTip(f"{layer.data.shape[0]} frames of {layer.data.shape[2]}x{layer.data.shape[1]}")
            self.table.setItem(r, 0, item)
            combo = QComboBox()
            combo.addItem(PYRAMID_GT)
            frame_shape = tuple(layer.data.shape[1:3])
            for other in self.viewer.layers:
                if other is not layer and _image_layer(other, frame_shape):
                    combo.addItem(other.name)
            combo.setCurrentIndex(max(combo.findText(gt), 0))
            combo.currentIndexChanged.connect(lambda *_: self._remember_rows())
            self.table.setCellWidget(r, 1, combo)
            any_checked = any_checked or checked
        # as tall as its rows (up to six), so the plot gets the room
        rows = max(1, min(len(stacks), 6))
        height = self.table.horizontalHeader().sizeHint().height() + rows * self.table.verticalHeader().defaultSectionSize()
        self.table.setFixedHeight(height + 2 * self.table.frameWidth())
        self._sync_enabled()

    def set_source(self, stack: str, ground_truth: str = PYRAMID_GT, checked: bool = True) -> None:
        """Tick (or untick) stack layer ``stack`` and choose its pseudo-GT (a layer name or :data:`PYRAMID_GT`)."""
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None and item.text() == stack:
                item.setCheckState(Qt.CheckState.Checked if checked else Qt.CheckState.Unchecked)
                combo = self.table.cellWidget(r, 1)
                idx = combo.findText(ground_truth)
                if idx < 0:
                    raise ValueError(f"'{ground_truth}' is not a pseudo-GT choice for '{stack}'")
                combo.setCurrentIndex(idx)
                self._remember_rows()
                return
        raise ValueError(f"no stack layer named '{stack}'")

    def sources(self) -> list[tuple[str, str]]:
        """The ticked ``(stack layer, pseudo-GT choice)`` pairs."""
        self._remember_rows()
        out = []
        for r in range(self.table.rowCount()):
            item = self.table.item(r, 0)
            if item is not None and item.checkState() == Qt.CheckState.Checked:
                out.append((item.text(), self.table.cellWidget(r, 1).currentText()))
        return out

    def _sync_enabled(self, *_: Any) -> None:
        running = self.is_running
        self.train_button.setEnabled(not running and self.table.rowCount() > 0 and self.arch_combo.count() > 0)
        self.stop_button.setEnabled(running and not (self._holder.run and self._holder.run.stop_event.is_set()))
        for w in self._inputs:
            w.setEnabled(not running)

    # -- running -------------------------------------------------------------------------
    def train_config(self) -> dict[str, Any]:
        """The :class:`~napari_focusdeep.training.train.TrainConfig` arguments the boxes say."""
        try:
            lr = float(self.lr_edit.text())
        except ValueError:
            raise ValueError(f"learning rate {self.lr_edit.text()!r} is not a number (e.g. 1e-4)") from None
        if not 0 < lr < 1:
            raise ValueError(f"learning rate {lr:g} is out of range; use something like 1e-4")
        return {
            "architecture": self.arch_combo.currentText(),
            "model": self.model_config(),
            "steps": int(self.steps_spin.value()),
            "batch_size": int(self.batch_spin.value()),
            "lr": lr,
            "min_lr": min(1e-6, lr / 10),
            "crop": int(self.crop_spin.value()),
            "noise": self.noise_check.isChecked(),
            "val_every": int(self.val_spin.value()),
            "val_count": int(self.val_count),
            "init_weights": self.init_weights(),
            "device": self.device_box.device(),
        }

    def plan(self) -> TrainPlan:
        """Check the boxes and build what the worker runs; ``ValueError`` says what is wrong."""
        from ._layers import stack_from_layer

        picked = self.sources()
        if not picked:
            raise ValueError("tick at least one stack to train on (open a focus stack first)")
        if not self.run_edit.text().strip():
            raise ValueError("give the run a name")
        config = self.train_config()
        if not config["architecture"]:
            raise ValueError("no network is available (is torch installed?)")
        crop = config["crop"]
        sources = []
        for name, gt in picked:
            if name not in self.viewer.layers:
                raise ValueError(f"the layer '{name}' is gone")
            stack = stack_from_layer(self.viewer.layers[name])
            h, w = stack.frame_shape
            if min(h, w) < crop:
                raise ValueError(f"the frames of '{name}' are {w}x{h} pixels, smaller than the {crop}-pixel crop; lower the crop size")
            if gt == PYRAMID_GT:
                sources.append(TrainSource(name, stack))
            else:
                if gt not in self.viewer.layers:
                    raise ValueError(f"the pseudo-GT layer '{gt}' is gone")
                sources.append(TrainSource(name, stack, self.viewer.layers[gt].data, gt))
        out_dir = self.out_dir
        resume_from = self._check_out_dir(out_dir, config["architecture"])
        return TrainPlan(sources, config, out_dir, self.register_check.isChecked(), resume_from)

    @staticmethod
    def _check_out_dir(out_dir: Path, arch: str) -> int:
        """The step a run in ``out_dir`` reached (0: new run); refuses to mix runs or overwrite."""
        ckpt = out_dir / "checkpoint.json"
        if ckpt.is_file():
            try:
                meta = json.loads(ckpt.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{ckpt} is unreadable ({exc}); choose another run name") from None
            prev = (meta.get("config") or {}).get("architecture")
            if prev and prev != arch:
                raise ValueError(f"the run '{out_dir.name}' trained {prev}, not {arch}; choose another run name")
            return int(meta.get("step", 0))
        if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise ValueError(f"{out_dir} exists and is not a training run; choose another run name")
        return 0

    def start(self) -> Any:
        """Start training in a worker thread; returns the worker, or None (the user is told why)."""
        from napari.qt.threading import create_worker

        if self.is_running:
            self._notify_info("a training run is already going; wait for it or stop it")
            return None
        jobs = _busy.running()
        if jobs:  # say so before checking the boxes: nothing can start anyway
            self._notify_info(_busy.refusal(jobs[0]))
            return None
        try:
            plan = self.plan()
        except Exception as exc:  # noqa: BLE001 - shown to the user, not raised
            self._notify_error(str(exc))
            return None
        try:
            busy = _busy.claim("training", f"{plan.config['architecture']} run '{plan.out_dir.name}'")
        except RuntimeError as exc:
            self._notify_info(str(exc))
            return None
        relay = _Relay()
        run = _TrainRun(plan, relay, busy=busy)
        try:
            worker = create_worker(train_job, plan, relay, run.stop_event, run.done_event, _start_thread=False)
        except Exception:
            _busy.release(busy)
            raise
        run.worker = worker
        relay.prepared.connect(self._on_prepared)
        relay.stepped.connect(self._on_step)
        relay.logged.connect(self._on_log)
        # Released whatever happens to the widget (partials of module-level objects).
        worker.finished.connect(run.finished)
        worker.returned.connect(lambda result, _run=run: self._on_returned(_run, result))
        worker.finished.connect(lambda _run=run: self._on_finished(_run))
        self._holder.run = run
        _ACTIVE.add(run)
        _hook_quit()
        self.last_result = None
        self._log_lines = []
        self.plot.reset(plan.config["steps"], plan.resume_from)
        self.progress.setRange(0, 0)
        what = f"continuing '{plan.out_dir.name}' from step {plan.resume_from}" if plan.resume_from else f"training '{plan.out_dir.name}'"
        self.status.setText(f"{what}: preparing the data ...")
        self.detail.setText("")
        self._sync_enabled()
        worker.start()
        return worker

    def stop(self) -> None:
        """End the run at the next step; the trainer saves a checkpoint first."""
        run = self._holder.run
        if run is None:
            return
        run.stop()
        self.stop_button.setEnabled(False)
        self.status.setText("stopping at the next step (saving a checkpoint) ...")

    # -- worker signals ----------------------------------------------------------------------
    def _on_prepared(self, info: tuple) -> None:
        label, stage, done, total, message = info
        if total:
            self.progress.setRange(0, int(total))
            self.progress.setValue(int(done))
        word = _STAGE_WORDS.get(stage, message or stage)
        self.status.setText(f"{label}: {word} {done}/{total}")

    def _on_step(self, p: Any) -> None:
        self.progress.setRange(0, int(p.total))
        self.progress.setValue(int(p.step))
        self.plot.add(p.step, p.loss, p.val_psnr)
        psnr = self.plot.psnr[-1][1] if self.plot.psnr else None
        text = f"step {p.step}/{p.total}  loss {p.loss:.4f}"
        if psnr is not None:
            text += f"  val PSNR {psnr:.2f} dB"
        if self._holder.run is not None and self._holder.run.stop_event.is_set():
            text = "stopping (saving a checkpoint) ... " + text
        self.status.setText(text)

    def _on_log(self, message: str) -> None:
        m = _BASELINE.search(message)
        if m:
            self.plot.set_baseline(float(m.group(1)))
        m = _START_SCORE.search(message)
        if m and self._holder.run is not None:
            self.plot.add(self._holder.run.plan.resume_from, None, float(m.group(1)))
        if not _STEP_LINE.match(message):  # the status line shows those already
            self.detail.setText(message)
        self._log_lines = (self._log_lines + [message])[-30:]
        self.detail.setToolTip("\n".join(self._log_lines))

    def _on_finished(self, run: _TrainRun) -> None:
        if self._holder.run is run:
            self._holder.run = None
        if self._holder.alive:
            self._sync_enabled()

    def _on_returned(self, run: _TrainRun, result: Any) -> None:
        if not self._holder.alive:
            # widget gone (dock or viewer closed): still offer what was saved
            if getattr(result, "weights", None) is not None:
                _weights.remember(result.weights)
            return
        self.last_result = result
        self.progress.setRange(0, 1)
        if isinstance(result, _Failure):
            self.progress.setValue(0)
            self.status.setText(f"failed: {result.message}")
            self._notify_error(f"Training failed: {result.message}")
            return
        if isinstance(result, _Stopped):
            self.progress.setValue(0)
            self.status.setText("stopped before training began; nothing was saved")
            return
        self.progress.setValue(1)
        base = next((h.get("pyramid_val_psnr") for h in result.history if "pyramid_val_psnr" in h), None)
        if base is not None:
            self.plot.set_baseline(base)
        # the run's own record (a resumed run's earlier validations included)
        scores = [(int(h["step"]), float(h["val_psnr"])) for h in result.history if h.get("val_psnr") is not None]
        if scores:
            self.plot.psnr[:] = [sc for sc in scores if sc[0] >= self.plot.first_step]
            self.plot.update()
        minutes = (time.perf_counter() - run.started) / 60
        best = f", best val PSNR {result.best_psnr:.2f} dB" if result.best_psnr is not None else ""
        base_txt = f" (pyramid: {base:.2f} dB)" if base is not None else ""
        how = {"stopped": "stopped", "steps": "done", "time": "time is up", "early-stop": "stopped early (no gain)",
               "data": "out of data"}.get(result.stopped, result.stopped)
        if result.weights is not None:
            _weights.remember(result.weights)  # every Fuse widget lists it now
            where = f"weights: {result.weights}"
        else:
            where = "no weights saved (no step was trained)"
        self.status.setText(f"{how}: step {result.step}{best}{base_txt} in {minutes:.1f} min; {where}")
        self._notify_info(
            f"Training {how} at step {result.step}{best}. "
            + ("The weights are in the Fuse widget's list." if result.weights is not None else "")
        )
        if result.stopped != "stopped":
            self.run_edit.setText(self._fresh_run_name())  # a stopped run is continued by Train

    # -- messages and lifetime ---------------------------------------------------------------
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
        # Closing the dock takes this widget out of it without closing it; the run would
        # otherwise go on with nobody able to stop it. Stopping saves a checkpoint.
        if event.type() == QEvent.Type.ParentChange and self.parent() is None:
            self._holder.stop()
        return super().event(event)
