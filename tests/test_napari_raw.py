"""Camera raw in napari: the manifest claims raw extensions, the reader opens a DNG and a
folder of DNGs (pidng fixtures), and the Fuse widget runs the raw (Bayer) network on a
layer read from raw files. A real viewer (``make_napari_viewer``), a real worker."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("rawpy")
pytest.importorskip("pidng")

from test_raw import _cam_image, _raw_burst, write_dng  # noqa: E402  (tests/ is on sys.path)

PLUGIN = "napari-focusdeep"
MANIFEST = Path(__file__).resolve().parents[1] / "src" / "napari_focusdeep" / "napari.yaml"
TINY = {"features": 8, "front_blocks": 1, "groups": 1, "blocks_per_group": 1, "offset_groups": 2}


# every test gets a private user data folder (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("user_data")


def test_manifest_claims_every_raw_extension():
    import npe2

    from napari_focusdeep.io import RAW_EXTENSIONS

    patterns = set(npe2.PluginManifest.from_file(MANIFEST).contributions.readers[0].filename_patterns)
    assert {f"*{e}" for e in RAW_EXTENSIONS} <= patterns


def test_reader_opens_one_dng_and_a_folder_of_them(tmp_path, make_napari_viewer):
    import dask.array as da

    from napari_focusdeep._napari._reader import get_reader
    from napari_focusdeep.io import read_raw

    (tmp_path / "one").mkdir()
    single = write_dng(tmp_path / "one" / "IMG_0001.dng", _cam_image(32, 48), "RGGB")
    reader = get_reader(str(single))
    assert callable(reader)
    [(data, kw, kind)] = reader(str(single))
    assert kind == "image" and isinstance(data, da.Array) and kw["rgb"] is True
    assert data.shape == (1, 32, 48, 3) and data.dtype == np.uint16
    raw_meta = kw["metadata"]["focusdeep"]["raw"]
    assert raw_meta["camera"] == "Synthetic Bayer RGGB"

    _, folder = _raw_burst(tmp_path / "burst", n=3, shape=(32, 48))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(folder), plugin=PLUGIN)
    assert layer.rgb and isinstance(layer.data, da.Array) and layer.data.shape == (3, 30, 48, 3)  # GBRG: rows 1..30
    meta = layer.metadata["focusdeep"]
    assert [Path(p).name for p in meta["paths"]] == ["IMG_0001.dng", "IMG_0002.dng", "IMG_0003.dng"]
    assert "raw" in meta
    np.testing.assert_array_equal(np.asarray(layer.data[1]), read_raw(folder).data[1].compute())
    [one] = viewer.open(str(single), plugin=PLUGIN)
    assert one.data.shape[0] == 1


def _tiny_raw_weights(root: Path) -> Path:
    """Random tiny raw-input weights saved as one of "your" runs."""
    import torch

    from napari_focusdeep.models import build_model
    from napari_focusdeep.models.weights import save_weights

    torch.manual_seed(0)
    model = build_model("focusdeep-any", stem="raw", in_channels=4, **TINY)
    path = root / "weights" / "raw-tiny" / "focusdeep-any.safetensors"
    save_weights(model, path, description="random raw, for tests")
    return path


def test_fuse_widget_runs_the_raw_network_on_a_raw_layer(tmp_path, make_napari_viewer, qtbot, user_data):
    from napari_focusdeep._napari._weights import weights_choices
    from napari_focusdeep.raw_fusion import fuse_raw

    weights = _tiny_raw_weights(user_data)
    _, folder = _raw_burst(tmp_path / "burst", n=3, shape=(32, 48))
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(folder), plugin=PLUGIN)
    rgb_layer = viewer.add_image(np.zeros((3, 16, 16, 3), np.uint8), rgb=True, name="plain")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Fuse")

    widget.method_combo.setCurrentIndex(widget.method_combo.findText("focusdeep-any"))
    widget.layer_combo.setCurrentIndex(widget.layer_combo.findText(rgb_layer.name))
    assert widget.raw_check.isHidden()  # not read from raw files: nothing to offer
    assert str(weights.resolve()) not in [c.path for c in weights_choices("focusdeep-any")]  # raw weights never fuse RGB
    widget.layer_combo.setCurrentIndex(widget.layer_combo.findText(layer.name))
    assert not widget.raw_check.isHidden()

    widget.raw_check.setChecked(True)
    offered = [widget.weights_combo.itemData(i) for i in range(widget.weights_combo.count())]
    assert offered and all(c.path in offered for c in weights_choices("focusdeep-any", input="raw"))
    assert str(weights.resolve()) in offered
    widget.weights_combo.setCurrentIndex(widget.weights_combo.findData(str(weights.resolve())))
    widget.device_box.combo.setCurrentIndex(max(widget.device_box.combo.findText("cpu"), 0))
    opts = widget.options()
    assert opts["raw"] is True and opts["weights"] == str(weights.resolve())

    widget.fuse_button.click()
    qtbot.waitUntil(lambda: not widget.is_running, timeout=120_000)
    fused = viewer.layers[f"{layer.name} all-in-focus"]
    depth = viewer.layers[f"{layer.name} depth"]
    assert fused.rgb and fused.data.shape == (30, 48, 3) and fused.data.dtype == np.uint16
    assert depth.data.shape == (30, 48)
    expected = fuse_raw(folder, method="focusdeep-any", path="bayer", weights=str(weights), device="cpu")
    assert np.abs(np.asarray(fused.data).astype(int) - expected.image.astype(int)).max() <= 2

    # unchecked, the same layer fuses its demosaiced frames like any RGB stack
    widget.raw_check.setChecked(False)
    assert "raw" not in widget.options()
