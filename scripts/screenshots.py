"""Make the documentation screenshots with a real napari viewer.

Opens the plugin's sample data, runs Fuse through the widget exactly as a user
would (button click, worker thread, progress bar) and saves

- ``docs/images/widget.png``: the napari window with the Fuse widget and the result;
- ``docs/images/depth.png``: the depth map Fuse adds beside it;
- ``docs/images/before_after.png``: one frame of the stack next to the fused image;
- ``docs/images/fuse_deep.png``: Fuse with the shipped ``focusdeep-any`` network;
- ``docs/images/train.png``: the Train widget mid-run, fine-tuning the shipped
  weights on the sample stack, with its live loss and validation-PSNR plot
  (the run goes to a temporary folder and is stopped after the screenshot).

Run headless with ``xvfb-run -a python scripts/screenshots.py`` (needs OpenGL,
which Xvfb's Mesa provides). Takes a few minutes on a CPU (the network fuses
and trains there); ``--only pyramid`` makes the first three in half a minute.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-focusdeep"


def _wait(predicate, timeout: float = 600.0) -> None:
    """Process Qt events until ``predicate()`` holds (the worker reports through them)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the run did not finish in time")
        app.processEvents()
        time.sleep(0.02)
    for _ in range(20):  # let the canvas draw the new layers
        app.processEvents()
        time.sleep(0.02)


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """``image`` (H, W, 3 uint8) with a caption bar on top."""
    from PIL import Image, ImageDraw, ImageFont

    bar = 34
    canvas = Image.new("RGB", (image.shape[1], image.shape[0] + bar), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, bar))
    draw = ImageDraw.Draw(canvas)
    try:
        font = ImageFont.load_default(size=20)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    draw.text((10, 6), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _sharpness(image: np.ndarray) -> np.ndarray:
    gray = image[..., :3].astype(np.float32).mean(axis=-1)
    gy, gx = np.gradient(gray)
    return gx * gx + gy * gy


def telling_crop(frame: np.ndarray, fused: np.ndarray, size: tuple[int, int]) -> tuple[slice, slice]:
    """The ``size`` window where fusion gained the most sharpness over ``frame``.

    At full size the two look alike on a page; a 2x crop where the frame is blurred
    shows what fusion does.
    """
    gain = _sharpness(fused) - _sharpness(frame)
    h, w = size
    ii = np.pad(gain, ((1, 0), (1, 0))).cumsum(0).cumsum(1)  # integral image
    sums = ii[h:, w:] - ii[:-h, w:] - ii[h:, :-w] + ii[:-h, :-w]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return slice(y, y + h), slice(x, x + w)


def before_after(frame: np.ndarray, fused: np.ndarray, frame_text: str, fused_text: str) -> np.ndarray:
    """Two labelled images side by side with a white gap."""
    left, right = _label(frame, frame_text), _label(fused, fused_text)
    gap = np.full((left.shape[0], 12, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def _show_only(viewer, *names: str) -> None:
    for layer in viewer.layers:
        layer.visible = layer.name in names
    viewer.layers.selection.active = viewer.layers[names[-1]]


def fuse_deep(viewer, out: Path, stack_name: str) -> None:
    """Fuse the sample with the shipped focusdeep-any network; save ``fuse_deep.png``."""
    from napari_focusdeep._napari import _weights

    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fuse")
    widget.method_combo.setCurrentText("focusdeep-any")
    _wait(lambda: _weights.device_info() is not None)
    before = {layer.name for layer in viewer.layers}
    widget.fuse_layer(viewer.layers[stack_name])
    _wait(lambda: not widget.is_running)
    # napari suffixes a name already taken (by the pyramid result) with " [1]"
    added = [layer for layer in viewer.layers if layer.name not in before and "all-in-focus" in layer.name]
    if not added:
        raise RuntimeError(f"deep Fuse added no all-in-focus layer: {widget.status.text()}")
    layer = added[0]
    layer.name = f"{stack_name} all-in-focus (focusdeep-any)"
    _show_only(viewer, layer.name)
    viewer.reset_view()
    _wait(lambda: True)
    import imageio.v3 as iio

    iio.imwrite(out / "fuse_deep.png", viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote {out / 'fuse_deep.png'}: {widget.status.text()}")
    viewer.window.remove_dock_widget(dock)


def train_shot(viewer, out: Path, stack_name: str, steps: int, val_points: int) -> None:
    """Fine-tune the shipped weights on the sample stack; save ``train.png`` mid-run, then stop."""
    import imageio.v3 as iio

    from napari_focusdeep._napari import _weights

    for layer in list(viewer.layers):  # the sample's own three layers only, for a clear list
        if layer.name not in (stack_name, "true depth", "ground truth (sharp)"):
            viewer.layers.remove(layer)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train")
    with tempfile.TemporaryDirectory(prefix="focusdeep-shot-") as tmp:
        # keep the documentation run out of the user's weights folder
        widget.folder_edit.setText(tmp)
        widget.run_edit.setText("sample-finetune")
        widget.set_source(stack_name)
        widget.steps_spin.setValue(steps)
        widget.crop_spin.setValue(64)
        widget.batch_spin.setValue(2)
        widget.val_spin.setValue(2)
        widget.val_count = 2
        _wait(lambda: _weights.device_info() is not None)
        if widget.start() is None:
            raise RuntimeError(f"Train did not start: {widget.status.text()}")
        _wait(lambda: len(widget.plot.psnr) >= val_points or not widget.is_running, timeout=1800)
        _wait(lambda: True)
        iio.imwrite(out / "train.png", viewer.screenshot(canvas_only=False, flash=False))
        print(f"wrote {out / 'train.png'}: {widget.status.text()}")
        widget.stop()
        _wait(lambda: not widget.is_running)
    viewer.window.remove_dock_widget(dock)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--method", default="pyramid")
    parser.add_argument("--only", choices=["pyramid", "deep", "train"], nargs="+", default=["pyramid", "deep", "train"])
    parser.add_argument("--train-steps", type=int, default=16, help="steps of the (stopped) training run")
    parser.add_argument("--val-points", type=int, default=5, help="validation points on the plot before the shot")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    # a private data folder: the doc run must not list or leave weights in the user's
    os.environ.setdefault("NAPARI_FOCUSDEEP_DATA_DIR", tempfile.mkdtemp(prefix="focusdeep-shot-data-"))

    import imageio.v3 as iio
    import napari
    import napari._qt.qt_main_window as qt_main_window

    # napari 0.9 greets PyQt5 users with a deprecation toast that would sit on the
    # canvas in the screenshot; it is about the Qt binding, not this plugin.
    qt_main_window.SHOW_QT_WARNING = False

    viewer = napari.Viewer(show=True, title="napari-focusdeep")
    viewer.window._qt_window.resize(1400, 860)
    viewer.open_sample(PLUGIN, "synthetic")
    stack = viewer.layers["synthetic focus stack"]
    if "pyramid" not in args.only:
        if "deep" in args.only:
            fuse_deep(viewer, args.out, stack.name)
        if "train" in args.only:
            viewer.window._qt_window.resize(1400, 1050)
            _show_only(viewer, stack.name)
            train_shot(viewer, args.out, stack.name, args.train_steps, args.val_points)
        viewer.close()
        return
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fuse")
    widget.method_combo.setCurrentText(args.method)
    widget.fuse_button.click()
    _wait(lambda: not widget.is_running)
    name = f"{stack.name} all-in-focus"
    if name not in viewer.layers:
        raise RuntimeError(f"Fuse did not add '{name}': {widget.status.text()}")
    fused = viewer.layers[name]
    viewer.layers.selection.active = fused
    viewer.reset_view()
    _wait(lambda: True)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    iio.imwrite(args.out / "widget.png", shot)
    depth = viewer.layers[f"{stack.name} depth"]
    _show_only(viewer, depth.name)
    _wait(lambda: True)
    iio.imwrite(args.out / "depth.png", viewer.screenshot(canvas_only=False, flash=False))

    # A frame focused on the middle of the scene: near and far parts are blurred in it.
    frames = np.asarray(stack.data)
    z = frames.shape[0] // 2
    frame, result = frames[z][..., :3], np.asarray(fused.data)[..., :3]
    h, w = frame.shape[:2]
    sy, sx = telling_crop(frame, result, (h // 2, w // 2))
    zoom = lambda a: a[sy, sx].repeat(2, axis=0).repeat(2, axis=1)  # noqa: E731
    pair = before_after(
        zoom(frame),
        zoom(result),
        f"one frame (z = {z + 1} of {frames.shape[0]}), 2x crop",
        f"fused ({widget.method_combo.currentText()}, {frames.shape[0]} frames), same crop",
    )
    iio.imwrite(args.out / "before_after.png", pair)
    print(f"wrote {args.out / 'widget.png'}, {args.out / 'depth.png'} and {args.out / 'before_after.png'}")
    viewer.window.remove_dock_widget(dock)
    if "deep" in args.only:
        fuse_deep(viewer, args.out, stack.name)
    if "train" in args.only:
        viewer.window._qt_window.resize(1400, 1050)
        _show_only(viewer, stack.name)
        train_shot(viewer, args.out, stack.name, args.train_steps, args.val_points)
    viewer.close()


if __name__ == "__main__":
    main()
