"""Small Qt controls the Fuse and Train widgets share: device picker, weights box, live plot.

The plot is painted with QPainter rather than matplotlib or pyqtgraph: two curves
need no heavy dependency, and napari does not ship either.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from qtpy.QtCore import QPointF, QRectF, QSize, Qt
from qtpy.QtGui import QColor, QPainter, QPalette, QPen, QPolygonF
from qtpy.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSizePolicy, QWidget

from . import _weights

__all__ = ["DeviceBox", "WeightsCombo", "LossPlot", "DEVICES"]

DEVICES = ("auto", "cpu", "cuda", "mps")
_probe_worker: Any = None  # the one device probe of this process, while it runs


def _probe_returned(info: dict[str, Any]) -> None:
    global _probe_worker
    _probe_worker = None
    _weights.devices_probed(info)


def _probe_failed(exc: BaseException) -> None:
    # torch missing or broken: the deep methods cannot run; say so where the device shows
    global _probe_worker
    _probe_worker = None
    _weights.devices_probed({"auto": "cpu", "cuda": False, "mps": False, "error": str(exc) or type(exc).__name__})


def start_device_probe() -> None:
    """Probe the devices in a worker thread (importing torch takes seconds), once."""
    global _probe_worker
    if _weights.device_info() is not None or _probe_worker is not None:
        return
    from napari.qt.threading import create_worker

    worker = create_worker(_weights.probe_devices, _start_thread=False)
    worker.returned.connect(_probe_returned)
    worker.errored.connect(_probe_failed)
    _probe_worker = worker
    worker.start()


class DeviceBox(QWidget):
    """A device picker (auto, cpu, cuda, mps) that shows what ``auto`` resolves to.

    The accelerators are probed (torch imported) the first time :meth:`ensure_probed`
    is called, in a worker thread; until then the label says so.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.addItems(DEVICES)
        self.combo.setToolTip("Where the network runs: auto takes CUDA, then Apple MPS, then the CPU")
        self.label = QLabel("")
        self.label.setStyleSheet("color: gray;")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.combo)
        layout.addWidget(self.label, 1)
        self.combo.currentIndexChanged.connect(self._show)
        _weights.on_devices_probed(self._on_probed)
        self._show()

    def device(self) -> str:
        """The chosen device name."""
        return self.combo.currentText()

    def ensure_probed(self) -> None:
        """Find out which devices exist (once per process; imports torch in a thread)."""
        if _weights.device_info() is None:
            self.label.setText("checking devices ...")
            start_device_probe()
        else:
            self._show()

    def _on_probed(self, info: dict[str, Any]) -> None:
        model = self.combo.model()
        for i, name in enumerate(DEVICES):
            available = name in ("auto", "cpu") or bool(info.get(name))
            item = model.item(i)
            if item is not None:
                item.setEnabled(available)
                item.setToolTip("" if available else f"{name} is not available on this machine")
        if not bool(info.get(self.device(), True)):
            self.combo.setCurrentText("auto")
        self._show()

    def _show(self, *_: Any) -> None:
        info = _weights.device_info()
        if info is None:
            self.label.setText("")
            return
        if info.get("error"):
            self.label.setText(f"torch unavailable: {info['error']}")
            return
        name = self.device()
        if name == "auto":
            auto = info["auto"]
            detail = f" ({info['cuda_name']})" if auto == "cuda" and info.get("cuda_name") else ""
            note = "" if auto != "cpu" else " (no CUDA or MPS found)"
            self.label.setText(f"\u2192 {auto}{detail}{note}")
        elif name == "cuda":
            self.label.setText(info.get("cuda_name", "") if info.get("cuda") else "not available here")
        elif name == "mps":
            self.label.setText("" if info.get("mps") else "not available here")
        else:
            self.label.setText("")


class WeightsCombo(QComboBox):
    """A combo box that re-reads the weights on offer every time it opens.

    Weights saved by another process (a ``focusdeep train`` run in a terminal) then
    appear without restarting napari.
    """

    def __init__(self, refresh: Callable[[], Any], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._refresh = refresh
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.setMinimumContentsLength(12)

    def showPopup(self) -> None:  # noqa: N802 - Qt's name
        self._refresh()
        super().showPopup()


def _nice(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return f"{v:g}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"


class LossPlot(QWidget):
    """Live training curves: loss (left axis) and validation PSNR (right axis) over steps.

    Call :meth:`add` with every step's numbers; :meth:`reset` for a new run.
    """

    LOSS = QColor(86, 156, 255)
    PSNR = QColor(255, 152, 48)
    BASE = QColor(150, 150, 150)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.loss: list[tuple[int, float]] = []
        self.psnr: list[tuple[int, float]] = []
        self.baseline: float | None = None
        self.total = 1
        self.first_step = 0
        self.setMinimumHeight(200)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setToolTip("Training loss (L1, smoothed) and validation PSNR (dB); dashed: the pyramid method on the same crops")

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        return QSize(320, 240)

    def reset(self, total: int, first_step: int = 0) -> None:
        """Start an empty plot for a run of ``total`` steps (resumed runs start later)."""
        self.loss.clear()
        self.psnr.clear()
        self.baseline = None
        self.total = max(int(total), 1)
        self.first_step = int(first_step)
        self.update()

    def add(self, step: int, loss: float | None, psnr: float | None = None) -> None:
        """Add one step's smoothed loss and, when validated, its PSNR."""
        if loss is not None and math.isfinite(loss):
            self.loss.append((int(step), float(loss)))
        if psnr is not None and math.isfinite(psnr):
            self.psnr.append((int(step), float(psnr)))
        self.update()

    def set_baseline(self, psnr: float | None) -> None:
        """The PSNR of the classical pyramid method on the validation crops."""
        self.baseline = psnr if psnr is not None and math.isfinite(psnr) else None
        self.update()

    # -- painting ------------------------------------------------------------------------
    def paintEvent(self, event: Any) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        fm = p.fontMetrics()

        def scale(values: list[float]) -> tuple[float, float]:
            lo, hi = min(values), max(values)
            pad = (hi - lo) * 0.08 or max(abs(hi) * 0.05, 1e-6)
            return lo - pad, hi + pad

        loss_range = scale([v for _, v in self.loss]) if self.loss else None
        psnr_vals = [v for _, v in self.psnr] + ([self.baseline] if self.baseline is not None else [])
        psnr_range = scale(psnr_vals) if psnr_vals else None
        # margins wide enough for the axis labels actually drawn
        left_labels = [_nice(v) for v in loss_range] if loss_range else ["0.00"]
        right_labels = [f"{v:.1f}" for v in psnr_range] if psnr_range else ["00.0"]
        left = 8 + max(fm.horizontalAdvance(t) for t in left_labels)
        right = 8 + max(fm.horizontalAdvance(t) for t in right_labels)
        top, bottom = 8 + fm.height(), 6 + fm.height()
        area = QRectF(left, top, max(self.width() - left - right, 10), max(self.height() - top - bottom, 10))
        p.setPen(QPen(self.BASE, 1))
        p.drawRect(area)
        if not self.loss and not self.psnr:
            p.setPen(text)
            p.drawText(area, int(Qt.AlignmentFlag.AlignCenter), "loss and validation PSNR\nappear here while training")
            p.end()
            return
        x0, x1 = self.first_step, max(self.total, self.first_step + 1)

        def sx(step: float) -> float:
            return area.left() + (step - x0) / (x1 - x0) * area.width()

        def curve(points: list[tuple[int, float]], lo: float, hi: float, color: QColor, dots: bool) -> None:
            def sy(v: float) -> float:
                return area.bottom() - (v - lo) / (hi - lo) * area.height()

            poly = QPolygonF([QPointF(sx(s), sy(v)) for s, v in points])
            p.setPen(QPen(color, 1.6))
            p.drawPolyline(poly)
            if dots:
                p.setBrush(color)
                for pt in poly:
                    p.drawEllipse(pt, 2.5, 2.5)

        # legend on top
        x = area.left()
        for label, color, shown in (
            ("loss", self.LOSS, bool(self.loss)),
            ("val PSNR (dB)", self.PSNR, bool(self.psnr)),
            ("pyramid", self.BASE, self.baseline is not None),
        ):
            if not shown:
                continue
            p.setPen(color)
            p.drawText(QPointF(x, top - 5), label)
            x += fm.horizontalAdvance(label) + 14
        if self.loss and loss_range:
            lo, hi = loss_range
            curve(self.loss, lo, hi, self.LOSS, dots=len(self.loss) < 3)
            p.setPen(self.LOSS)
            p.drawText(QRectF(0, area.top() - 2, left - 4, fm.height()), int(Qt.AlignmentFlag.AlignRight), _nice(hi))
            p.drawText(QRectF(0, area.bottom() - fm.height() + 2, left - 4, fm.height()), int(Qt.AlignmentFlag.AlignRight), _nice(lo))
        if psnr_range:
            lo, hi = psnr_range
            if self.baseline is not None:
                y = area.bottom() - (self.baseline - lo) / (hi - lo) * area.height()
                pen = QPen(self.BASE, 1.2)
                pen.setStyle(Qt.PenStyle.DashLine)
                p.setPen(pen)
                p.drawLine(QPointF(area.left(), y), QPointF(area.right(), y))
            if self.psnr:
                curve(self.psnr, lo, hi, self.PSNR, dots=True)
            p.setPen(self.PSNR)
            p.drawText(QRectF(area.right() + 4, area.top() - 2, right, fm.height()), int(Qt.AlignmentFlag.AlignLeft), f"{hi:.1f}")
            p.drawText(QRectF(area.right() + 4, area.bottom() - fm.height() + 2, right, fm.height()), int(Qt.AlignmentFlag.AlignLeft), f"{lo:.1f}")
        p.setPen(text)
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()), int(Qt.AlignmentFlag.AlignLeft), str(x0))
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()), int(Qt.AlignmentFlag.AlignHCenter), "step")
        p.drawText(QRectF(area.left(), area.bottom() + 2, area.width(), fm.height()), int(Qt.AlignmentFlag.AlignRight), str(x1))
        p.end()
