"""The napari face: manifest, reader, writer, Fuse widget and sample data, in a real viewer.

Run headless with ``xvfb-run -a pytest tests/test_napari.py``. No napari mocks: the
widget runs real fusion in a real thread worker; only two tiny test methods (slow,
failing) are registered for the duration of a test to exercise cancel and errors.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

import dask.array as da  # noqa: E402

PLUGIN = "napari-focusdeep"
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_focusdeep" / "napari.yaml"
ENTRY_MODULES = [
    "napari_focusdeep._napari",
    "napari_focusdeep._napari._layers",
    "napari_focusdeep._napari._reader",
    "napari_focusdeep._napari._writer",
    "napari_focusdeep._napari._widget",
    "napari_focusdeep._napari._sample",
    "napari_focusdeep._napari._train",
    "napari_focusdeep._napari._controls",
    "napari_focusdeep._napari._weights",
    "napari_focusdeep._napari._busy",
]


# -- helpers -------------------------------------------------------------------------
def _small_stack(n_frames: int = 5, shape=(96, 128), seed: int = 0):
    """A small simulated RGB bracket (fast to fuse) and the matching layer data tuple."""
    from napari_focusdeep._napari._layers import stack_to_layer_data
    from napari_focusdeep.stack import Stack
    from napari_focusdeep.training.simulate import sample_stack

    sim = sample_stack(shape=shape, n_frames=n_frames, seed=seed)
    stack = Stack.from_array(sim.frames, axes="ZYXC", name="small")
    return sim, stack_to_layer_data(stack)


def _add(viewer, layer_data):
    data, kw, _ = layer_data
    return viewer.add_image(data, **kw)


def _fuse_widget(viewer):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fuse")
    return dock, widget


def _wait_done(qtbot, widget, timeout=60_000):
    qtbot.waitUntil(lambda: not widget.is_running, timeout=timeout)


@pytest.fixture
def notes():
    """Notifications napari dispatches during the test (message strings, severities)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)

    def new():
        return [(str(n.message), str(n.severity)) for n in notification_manager.records[start:]]

    return new


@pytest.fixture
def test_methods():
    """Register a slow method (to cancel) and a failing one; remove them afterwards."""
    from napari_focusdeep.fusion import registry

    class Slow:
        def __init__(self, n, shape, **_):
            self.sum = np.zeros(shape, np.float32)
            self.n = 0

        def add(self, frame, focus):
            time.sleep(0.2)
            self.sum += frame
            self.n += 1

        def finish(self):
            return self.sum / max(self.n, 1), np.zeros(self.sum.shape[:2], np.float32)

    def failing(n, shape, **_):
        raise RuntimeError("the test method refuses to fuse")

    registry.list_methods()  # load the built-in ones first
    added = [
        registry.register_method(registry.Method("_test_slow", "sleeps per frame", Slow)),
        registry.register_method(registry.Method("_test_fail", "always fails", failing)),
    ]
    yield {m.name: m for m in added}
    for m in added:
        registry._REGISTRY.pop(m.name, None)


def _write_png_frames(folder: Path, n: int = 4, shape=(40, 56)) -> list[Path]:
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"frame_{i:02d}.png"
        iio.imwrite(p, rng.integers(0, 255, (*shape, 3), dtype=np.uint8))
        paths.append(p)
    return paths


# -- manifest and import hygiene -------------------------------------------------------
def test_manifest_validates():
    import npe2

    pm = npe2.PluginManifest.from_file(MANIFEST)
    assert pm.name == PLUGIN
    assert pm.display_name == "FocusDeep"
    contrib = pm.contributions
    assert contrib.readers and contrib.readers[0].accepts_directories
    patterns = set(contrib.readers[0].filename_patterns)
    assert {"*.tif", "*.tiff", "*.czi", "*.nd2", "*.lif", "*.png", "*.jpg", "*.jpeg"} <= patterns
    exts = set(contrib.writers[0].filename_extensions)
    assert {".tif", ".tiff", ".ome.tif", ".png", ".jpg"} <= exts
    assert [w.display_name for w in contrib.widgets] == ["Fuse", "Train"]
    assert [s.display_name for s in contrib.sample_data] == ["Synthetic focus stack"]
    pm.validate_imports()  # every python_name resolves
    # the installed distribution's manifest is this file
    assert npe2.PluginManifest.from_distribution(PLUGIN).name == PLUGIN


def test_entry_modules_do_not_import_cv2_or_torch():
    code = (
        "import sys, json, importlib\n"
        f"for m in {ENTRY_MODULES!r}: importlib.import_module(m)\n"
        "import npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        f"assert pm.get_manifest({PLUGIN!r})\n"
        "print(json.dumps(sorted(m for m in ('cv2', 'torch') if m in sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- reader ------------------------------------------------------------------------------
def test_reader_declines_unsupported(tmp_path):
    from napari_focusdeep._napari._reader import get_reader

    p = tmp_path / "notes.txt"
    p.write_text("not an image")
    assert get_reader(str(p)) is None
    assert get_reader([]) is None


def test_reader_opens_tiff_lazily_with_scale(tmp_path, make_napari_viewer):
    import tifffile

    from napari_focusdeep._napari._reader import get_reader

    arr = np.random.default_rng(1).integers(0, 4000, (5, 32, 48), dtype=np.uint16)
    path = tmp_path / "zstack.tif"
    tifffile.imwrite(
        path,
        arr,
        imagej=True,
        resolution=(1 / 0.5, 1 / 0.5),
        metadata={"spacing": 2.0, "unit": "um", "axes": "ZYX"},
    )
    reader = get_reader(str(path))
    assert callable(reader)
    [(data, kw, kind)] = reader(str(path))
    assert kind == "image"
    assert isinstance(data, da.Array)  # lazy
    assert data.shape == (5, 32, 48)
    np.testing.assert_allclose(kw["scale"], (2.0, 0.5, 0.5))
    assert kw["rgb"] is False
    meta = kw["metadata"]["focusdeep"]
    assert meta["axes"] == "ZYX" and meta["scale"]["Z"] == pytest.approx(2.0)
    assert meta["paths"] and Path(meta["paths"][0]).name == "zstack.tif"

    viewer = make_napari_viewer()
    [layer] = viewer.open(str(path), plugin=PLUGIN)
    assert isinstance(layer.data, da.Array)
    np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.5))
    assert {str(u) for u in layer.units} == {"micrometer"}
    np.testing.assert_array_equal(np.asarray(layer.data[2]), arr[2])

    # saving it back through the writer keeps the pixel size and unit (OME-TIFF)
    from napari_focusdeep.io import read_stack

    out = tmp_path / "copy.ome.tif"
    assert viewer.layers.save(str(out), plugin=PLUGIN) == [str(out)]
    back = read_stack(str(out))
    assert back.scale["Z"] == pytest.approx(2.0) and back.scale["X"] == pytest.approx(0.5)
    assert back.unit in ("µm", "\u00b5m", "um")
    np.testing.assert_array_equal(np.asarray(back.data), arr)


def test_reader_opens_folder_and_file_list_as_one_stack(tmp_path, make_napari_viewer):
    from napari_focusdeep._napari._reader import get_reader

    paths = _write_png_frames(tmp_path / "bracket", n=4)
    reader = get_reader(str(tmp_path / "bracket"))
    assert callable(reader)
    [(data, kw, _)] = reader(str(tmp_path / "bracket"))
    assert isinstance(data, da.Array)
    assert data.shape == (4, 40, 56, 3) and kw["rgb"] is True
    np.testing.assert_allclose(kw["scale"], (1.0, 1.0, 1.0))

    # several frame files opened together (napari's "Open Files as Stack") -> one stack
    files = [str(p) for p in paths[:3]]
    assert callable(get_reader(files))
    viewer = make_napari_viewer()
    layers = viewer.open(files, stack=True, plugin=PLUGIN)
    assert len(layers) == 1 and layers[0].data.shape == (3, 40, 56, 3)
    [folder_layer] = viewer.open(str(tmp_path / "bracket"), plugin=PLUGIN)
    assert folder_layer.rgb and isinstance(folder_layer.data, da.Array) and folder_layer.data.shape[0] == 4


# -- writer ------------------------------------------------------------------------------
def test_writer_writes_layer_with_scale(tmp_path, make_napari_viewer):
    from napari_focusdeep.io import read_stack

    viewer = make_napari_viewer()
    img = np.random.default_rng(2).integers(0, 60000, (24, 30), dtype=np.uint16)
    viewer.add_image(img, name="fused", scale=(0.25, 0.25))
    out = tmp_path / "fused.tif"
    assert viewer.layers.save(str(out), plugin=PLUGIN) == [str(out)]
    assert out.exists()
    back = read_stack(str(out))
    np.testing.assert_array_equal(np.asarray(back.data).reshape(img.shape), img)
    assert back.scale.get("Y") == pytest.approx(0.25)
    assert back.scale.get("X") == pytest.approx(0.25)

    # overwriting is fine (napari's dialog asked already), and RGB goes to PNG
    viewer.layers.save(str(out), plugin=PLUGIN)
    rgb = np.random.default_rng(3).integers(0, 255, (20, 22, 3), dtype=np.uint8)
    viewer.layers.clear()
    viewer.add_image(rgb, name="rgb", rgb=True)
    png = tmp_path / "rgb.png"
    assert viewer.layers.save(str(png), plugin=PLUGIN) == [str(png)]
    import imageio.v3 as iio

    np.testing.assert_array_equal(iio.imread(png)[..., :3], rgb)


# -- sample data -----------------------------------------------------------------------
def test_sample_data_loads(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "synthetic")
    names = [layer.name for layer in viewer.layers]
    assert names == ["ground truth (sharp)", "true depth", "synthetic focus stack"]
    stack = viewer.layers["synthetic focus stack"]
    assert stack.rgb and stack.data.ndim == 4
    truth = viewer.layers["ground truth (sharp)"]
    assert truth.data.shape == stack.data.shape[1:]
    assert viewer.layers["true depth"].data.shape == stack.data.shape[1:3]


# -- Fuse widget ---------------------------------------------------------------------------
def test_fuse_widget_produces_image_and_depth(make_napari_viewer, qtbot, notes):
    from napari_focusdeep.fusion.registry import list_methods

    viewer = make_napari_viewer()
    sim, layer_data = _small_stack()
    _add(viewer, layer_data)
    _, widget = _fuse_widget(viewer)

    methods = [widget.method_combo.itemText(i) for i in range(widget.method_combo.count())]
    assert methods == [m.name for m in list_methods()]
    assert widget.method_combo.currentText() == "pyramid"
    assert widget.layer_combo.currentText() == "small"
    assert widget.method_info.text()  # the description is shown

    widget.keep_registered_check.setChecked(True)
    widget.fuse_button.click()
    assert widget.is_running and not widget.fuse_button.isEnabled()
    _wait_done(qtbot, widget)

    fused = viewer.layers["small all-in-focus"]
    depth = viewer.layers["small depth"]
    registered = viewer.layers["small registered"]
    assert fused.rgb and fused.data.shape == sim.frames.shape[1:] and fused.data.dtype == sim.frames.dtype
    assert depth.data.shape == sim.frames.shape[1:3]
    assert depth.colormap.name == "turbo"
    assert registered.data.shape == sim.frames.shape
    assert widget.fuse_button.isEnabled()
    assert not [n for n in notes() if "error" in n[1].lower()]
    # the widget is a thin face: its result is exactly the library's
    from napari_focusdeep.fusion import fuse

    expected = fuse(sim.frames, method="pyramid", register=True, reference="middle", motion="affine")
    np.testing.assert_array_equal(np.asarray(fused.data), expected.image)
    np.testing.assert_allclose(np.asarray(depth.data), expected.depth)


def test_fuse_widget_cancel_adds_nothing(make_napari_viewer, qtbot, test_methods):
    viewer = make_napari_viewer()
    _add(viewer, _small_stack(n_frames=8)[1])
    _, widget = _fuse_widget(viewer)
    widget.method_combo.setCurrentText("_test_slow")
    widget.register_check.setChecked(False)
    worker = widget.fuse_layer()
    assert worker is not None
    # a second Fuse while one runs is refused
    assert widget.fuse_layer() is None
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=10_000)
    widget.cancel_button.click()
    _wait_done(qtbot, widget, timeout=10_000)
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == ["small"]
    assert widget.status.text() == "cancelled"
    # the viewer and the widget still work: a normal run succeeds afterwards
    widget.method_combo.setCurrentText("pyramid")
    widget.fuse_button.click()
    _wait_done(qtbot, widget)
    assert "small all-in-focus" in viewer.layers


def test_fuse_widget_errors_become_notifications(make_napari_viewer, qtbot, notes, test_methods):
    viewer = make_napari_viewer()
    flat = viewer.add_image(np.zeros((32, 32), np.uint8), name="flat")
    _add(viewer, _small_stack(n_frames=4)[1])
    _, widget = _fuse_widget(viewer)
    # 2-D layers are not offered, and fusing one anyway is refused with a message
    assert widget.layer_combo.findText("flat") == -1
    assert widget.fuse_layer(flat) is None
    assert any("not a focus stack" in msg for msg, _ in notes())

    widget.method_combo.setCurrentText("_test_fail")
    widget.register_check.setChecked(False)
    widget.fuse_button.click()
    _wait_done(qtbot, widget)
    msgs = [msg for msg, sev in notes()]
    assert any("the test method refuses to fuse" in m for m in msgs)
    assert not any("Traceback" in m for m in msgs)
    assert [layer.name for layer in viewer.layers] == ["flat", "small"]
    assert widget.fuse_button.isEnabled()


@pytest.mark.parametrize("how", ["remove dock", "delete widget"])
def test_closing_widget_stops_worker(make_napari_viewer, qtbot, test_methods, how):
    viewer = make_napari_viewer()
    _add(viewer, _small_stack(n_frames=8)[1])
    dock, widget = _fuse_widget(viewer)
    widget.method_combo.setCurrentText("_test_slow")
    widget.register_check.setChecked(False)
    worker = widget.fuse_layer()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: widget.progress.value() >= 1, timeout=10_000)
    if how == "remove dock":  # the dock's close button does this
        viewer.window.remove_dock_widget(dock)
    else:  # the viewer closing deletes its docked widgets
        widget.deleteLater()
    qtbot.waitUntil(lambda: bool(finished), timeout=10_000)
    qtbot.wait(100)
    assert [layer.name for layer in viewer.layers] == ["small"]


def test_fuse_widget_plain_arrays_keep_scale(make_napari_viewer, qtbot):
    """Layers not opened by FocusDeep: napari's conventions give the axes, layer.scale the z-step."""
    from napari_focusdeep.training.simulate import sample_stack

    frames = sample_stack(shape=(64, 80), n_frames=4, channels=1).frames
    viewer = make_napari_viewer()
    gray = viewer.add_image(frames, name="gray", scale=(2.0, 0.5, 0.5), colormap="green")
    series = viewer.add_image(np.stack([frames, frames[:, :, ::-1]]), name="series", scale=(1.0, 2.0, 0.5, 0.5))
    _, widget = _fuse_widget(viewer)
    widget.register_check.setChecked(False)

    widget.fuse_layer(gray)
    _wait_done(qtbot, widget)
    fused, depth = viewer.layers["gray all-in-focus"], viewer.layers["gray depth"]
    assert fused.data.shape == frames.shape[1:] and not fused.rgb
    np.testing.assert_allclose(fused.scale, (0.5, 0.5))
    assert fused.colormap.name == "green"
    # the z-step (2.0 per frame) reaches fusion, so the depth is physical
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.stack import Stack

    expected = fuse(Stack.from_array(frames, axes="ZYX", scale={"Z": 2.0, "Y": 0.5, "X": 0.5}), register=False)
    assert expected.depth_unit != "frame"
    np.testing.assert_allclose(np.asarray(depth.data), expected.depth)
    np.testing.assert_array_equal(np.asarray(fused.data), expected.image)

    widget.fuse_layer(series)  # (T, Z, Y, X): one result per time point
    _wait_done(qtbot, widget)
    fused_t = viewer.layers["series all-in-focus"]
    assert fused_t.data.shape == (2, *frames.shape[1:])
    np.testing.assert_allclose(fused_t.scale, (1.0, 0.5, 0.5))
