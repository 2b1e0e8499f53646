"""Make the documentation screenshots with a real napari viewer.

Opens the plugin's sample data, runs Fuse through the widget exactly as a user
would (button click, worker thread, progress bar) and saves

- ``docs/images/widget.png``: the napari window with the Fuse widget and the result;
- ``docs/images/before_after.png``: one frame of the stack next to the fused image.

Run headless with ``xvfb-run -a python scripts/screenshots.py`` (needs OpenGL,
which Xvfb's Mesa provides). Takes about half a minute.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "napari-focusdeep"


def _wait(predicate, timeout: float = 120.0) -> None:
    """Process Qt events until ``predicate()`` holds (the worker reports through them)."""
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance()
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("fusion did not finish in time")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    parser.add_argument("--method", default="pyramid")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

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
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fuse")
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
    print(f"wrote {args.out / 'widget.png'} and {args.out / 'before_after.png'}")
    viewer.close()


if __name__ == "__main__":
    main()
