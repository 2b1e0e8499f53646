"""Deep fusion in the Fuse widget and the Train widget, in a real viewer (no mocks).

Run headless with ``xvfb-run -a pytest tests/test_napari_train.py``. Training runs
use a tiny network (``TrainWidget.model_kwargs``) on a 48x64 stack so that every
run takes seconds on a CPU; fusion uses the shipped weights. The user data folder
is redirected to a temporary one, so nothing is written to the real one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("torch")

PLUGIN = "napari-focusdeep"
# A 44 k-parameter focusdeep-any: trains a step in well under a second on a CPU.
TINY = {"features": 8, "front_blocks": 1, "groups": 1, "blocks_per_group": 1, "offset_groups": 2}


# every test gets a private user data folder (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("user_data")


@pytest.fixture
def notes():
    """Notifications napari dispatches during the test (message, severity)."""
    from napari.utils.notifications import notification_manager

    start = len(notification_manager.records)
    return lambda: [(str(n.message), str(n.severity)) for n in notification_manager.records[start:]]


def _stack(viewer, shape=(48, 64), n_frames=3, name="small"):
    from napari_focusdeep._napari._layers import stack_to_layer_data
    from napari_focusdeep.stack import Stack
    from napari_focusdeep.training.simulate import sample_stack

    sim = sample_stack(shape=shape, n_frames=n_frames, seed=3)
    data, kw, _ = stack_to_layer_data(Stack.from_array(sim.frames, axes="ZYXC", name=name))
    return sim, viewer.add_image(data, **kw)


def _widget(viewer, name):
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)


def _deep_fuse_widget(viewer, qtbot, method="focusdeep-any"):
    from napari_focusdeep._napari import _weights

    dock, fw = _widget(viewer, "Fuse")
    fw.method_combo.setCurrentText(method)
    fw.register_check.setChecked(False)
    fw.device_box.combo.setCurrentText("cpu")
    fw.tile_spin.setValue(64)
    qtbot.waitUntil(lambda: _weights.device_info() is not None, timeout=60_000)
    return dock, fw


def _tiny_train_widget(viewer, steps=2, val_every=1, register=False):
    from napari_focusdeep._napari._train import PYRAMID_GT

    _, tw = _widget(viewer, "Train")
    tw.register_check.setChecked(register)  # the simulated frames are aligned; saves time
    tw.model_kwargs = dict(TINY)
    tw.init_combo.setCurrentIndex(tw.init_combo.count() - 1)  # random initialisation
    tw.steps_spin.setValue(steps)
    tw.val_spin.setValue(val_every)
    tw.crop_spin.setValue(32)
    tw.batch_spin.setValue(2)
    tw.val_count = 2
    tw.device_box.combo.setCurrentText("cpu")
    tw.set_source("small", PYRAMID_GT)
    return tw


# -- Fuse with a network -------------------------------------------------------------------
def test_fuse_widget_deep_method_with_shipped_weights(make_napari_viewer, qtbot, notes):
    from napari_focusdeep._napari import _weights
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.models.weights import default_weights

    viewer = make_napari_viewer()
    sim, _ = _stack(viewer, shape=(32, 64))
    _, fw = _deep_fuse_widget(viewer, qtbot)

    # the network's controls appear only for deep methods, with the shipped weights chosen
    assert fw.model_box.isVisibleTo(fw)
    shipped = str(default_weights("focusdeep-any").resolve())
    assert fw.selected_weights() == shipped
    assert fw.weights_combo.currentText() == "focusdeep-any (shipped)"
    labels = [fw.weights_combo.itemText(i) for i in range(fw.weights_combo.count())]
    assert all("focusdeep-any" in t for t in labels) and not any(t.startswith("focusdeep (") for t in labels)
    fw.device_box.combo.setCurrentText("auto")
    assert fw.device_box.label.text().startswith("\u2192 " + _weights.device_info()["auto"])
    fw.device_box.combo.setCurrentText("cpu")
    opts = fw.options()
    assert (opts["method"], opts["weights"], opts["device"], opts["tile"]) == ("focusdeep-any", shipped, "cpu", 64)

    _, tw = _widget(viewer, "Train")
    totals = []
    worker = fw.fuse_layer()
    worker.yielded.connect(lambda p: totals.append((p.stage, p.total)))
    # one long job at a time: training is refused while the fusion runs
    assert tw.start() is None and not tw.is_running
    assert any("a fusion is using the CPU/GPU; wait for it or cancel it" in m for m, _ in notes())
    qtbot.waitUntil(lambda: not fw.is_running, timeout=60_000)
    assert not [n for n in notes() if "error" in n[1].lower()]
    assert ("fuse", 3) in totals  # frames x tiles: 3 frames, one 64-pixel tile
    assert fw.status.text().startswith("done: focusdeep-any")
    fused = viewer.layers["small all-in-focus"]
    assert fused.rgb and fused.data.shape == sim.frames.shape[1:]
    assert viewer.layers["small depth"].data.shape == sim.frames.shape[1:3]
    # the widget is a thin face: exactly the library's result
    expected = fuse(sim.frames, method="focusdeep-any", register=False, device="cpu", tile=64, weights=shipped)
    np.testing.assert_array_equal(np.asarray(fused.data), expected.image)
    # and classical methods hide the network's controls again
    fw.method_combo.setCurrentText("pyramid")
    assert not fw.model_box.isVisibleTo(fw)
    assert "weights" not in fw.options()


def test_fuse_widget_says_a_fixed_frame_network_resamples(make_napari_viewer, qtbot, notes):
    """``focusdeep`` was trained on 8 frames: fusing 3 says they are resampled to 8."""
    viewer = make_napari_viewer()
    _stack(viewer, shape=(32, 64), n_frames=3)
    _, fw = _deep_fuse_widget(viewer, qtbot, method="focusdeep")
    said = "network trained on 8 frames; resampling the 3-frame stack to 8"
    fw.fuse_layer()
    assert ("focusdeep: " + said, "info") in notes()
    qtbot.waitUntil(lambda: not fw.is_running, timeout=60_000)
    assert fw.status.text().startswith("done: focusdeep,") and said in fw.status.text()
    assert not [n for n in notes() if "error" in n[1].lower()]


def test_progress_text_names_tile_and_frame():
    from napari_focusdeep._napari._widget import progress_text
    from napari_focusdeep.fusion import Progress

    # fuse_iter counts frames x tiles: 3 frames in 2 tiles -> step 4 is tile 2, frame 1
    assert progress_text(Progress(4, 6, "fuse", "fusing (focusdeep-any)"), 3) == "fusing (focusdeep-any): tile 2/2, frame 1/3"
    assert progress_text(Progress(2, 3, "fuse", "fusing (pyramid)"), 3) == "fusing (pyramid): 2/3"
    assert progress_text(Progress(5, 12, "register", ""), 12) == "registering: 5/12"


def test_fuse_widget_refuses_pickles_and_bad_weights(make_napari_viewer, qtbot, notes, tmp_path):
    from napari_focusdeep.models.weights import default_weights

    viewer = make_napari_viewer()
    _stack(viewer)
    _, fw = _deep_fuse_widget(viewer, qtbot)
    before = [fw.weights_combo.itemData(i) for i in range(fw.weights_combo.count())]

    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x04not really a pickle")
    assert fw.load_weights_file(pickle) is False
    errors = [m for m, sev in notes() if "error" in sev.lower()]
    assert any("model.pt" in m and "only .safetensors" in m for m in errors)

    # a safetensors file whose checksum does not match its config is refused too
    src = default_weights("focusdeep-any")
    bad = tmp_path / "bad" / "mine.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(src.read_bytes()[:-8] + b"\0" * 8)
    bad.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    assert fw.load_weights_file(bad) is False
    assert any("checksum" in m for m, _ in notes())
    assert [fw.weights_combo.itemData(i) for i in range(fw.weights_combo.count())] == before

    # a good file is offered, chosen, and listed by a second Fuse widget too
    good = tmp_path / "lab" / "mine.safetensors"
    good.parent.mkdir()
    good.write_bytes(src.read_bytes())
    good.with_suffix(".json").write_text(src.with_suffix(".json").read_text())
    assert fw.load_weights_file(good) is True
    assert fw.selected_weights() == str(good.resolve())
    assert fw.weights_combo.currentText() == "mine (lab)"


def test_fuse_widget_network_without_weights_is_refused(make_napari_viewer, qtbot, notes):
    from napari_focusdeep._napari import _weights

    if any(c.architecture == "unet" for c in _weights.weights_choices("unet")):
        pytest.skip("unet weights are installed")
    viewer = make_napari_viewer()
    _stack(viewer)
    _, fw = _deep_fuse_widget(viewer, qtbot, method="unet")
    assert fw.weights_combo.count() == 0
    assert "No unet weights" in fw.weights_note.text()
    assert not fw.fuse_button.isEnabled()
    assert fw.fuse_layer() is None
    assert any("no unet weights" in m for m, _ in notes())


# -- Train ---------------------------------------------------------------------------------------
def test_train_widget_trains_and_fuse_lists_the_weights(make_napari_viewer, qtbot, notes, user_data):
    from napari_focusdeep.models.weights import default_weights, read_config
    from napari_focusdeep.training.train import TrainResult

    viewer = make_napari_viewer()
    _stack(viewer)
    _, fw = _deep_fuse_widget(viewer, qtbot)
    n_before = fw.weights_combo.count()

    _, tw = _widget(viewer, "Train")
    # by default training fine-tunes the shipped weights, at their size
    shipped = default_weights("focusdeep-any")
    cfg = tw.train_config()
    assert cfg["architecture"] == "focusdeep-any"
    assert Path(cfg["init_weights"]).resolve() == shipped.resolve()
    assert cfg["model"] == read_config(shipped)["kwargs"]
    assert tw.out_dir.parent == user_data / "weights"

    tw = _tiny_train_widget(viewer, register=True)
    assert tw.train_config()["init_weights"] is None and tw.train_config()["model"] == TINY
    run_name = tw.run_edit.text()
    tw.train_button.click()
    assert tw.is_running
    # one long job at a time: Fuse is refused while the training run works
    assert fw.fuse_layer() is None
    assert any("a training run is using the CPU/GPU; wait for it or stop it" in m for m, _ in notes())
    qtbot.waitUntil(lambda: not tw.is_running, timeout=90_000)

    result = tw.last_result
    assert isinstance(result, TrainResult), tw.status.text()
    assert result.step == 2 and result.stopped == "steps"
    assert result.weights == user_data / "weights" / run_name / "focusdeep-any.safetensors"
    assert result.weights.is_file() and (result.weights.parent / "checkpoint.safetensors").is_file()
    assert read_config(result.weights)["kwargs"]["features"] == TINY["features"]
    assert [s for s, _ in tw.plot.loss] == [1, 2] and len(tw.plot.psnr) == 2
    assert tw.plot.baseline is not None  # the pyramid method on the same validation crops
    assert not tw.plot.grab().isNull()
    assert tw.run_edit.text() != run_name  # a finished run is never continued by accident

    # the new weights are in the Fuse widget's list at once, and fuse
    assert fw.weights_combo.count() == n_before + 1
    idx = fw.weights_combo.findData(str(result.weights.resolve()))
    assert idx >= 0 and fw.weights_combo.itemText(idx) == f"{run_name} (yours)"
    fw.weights_combo.setCurrentIndex(idx)
    fw.fuse_layer()
    qtbot.waitUntil(lambda: not fw.is_running, timeout=60_000)
    assert "small all-in-focus" in viewer.layers
    assert not [n for n in notes() if "error" in n[1].lower()]


def test_train_widget_stop_saves_a_checkpoint(make_napari_viewer, qtbot, user_data):
    viewer = make_napari_viewer()
    _stack(viewer)
    tw = _tiny_train_widget(viewer, steps=10_000, val_every=5_000)
    tw.train_button.click()
    qtbot.waitUntil(lambda: len(tw.plot.loss) >= 1, timeout=90_000)
    tw.stop_button.click()
    assert not tw.stop_button.isEnabled()
    qtbot.waitUntil(lambda: not tw.is_running, timeout=60_000)

    result = tw.last_result
    assert result.stopped == "stopped" and 1 <= result.step < 10_000
    out = result.out_dir
    assert (out / "checkpoint.safetensors").is_file() and (out / "checkpoint.json").is_file()
    assert result.weights is not None and result.weights.is_file()  # validated on the way out
    # Train again with the same run name continues from the checkpoint
    assert tw.plan().resume_from == result.step


def test_train_widget_refuses_bad_input(make_napari_viewer, notes, user_data):
    viewer = make_napari_viewer()
    _stack(viewer)
    viewer.add_image(np.zeros((48, 60), np.float32), name="wrong size")
    tw = _tiny_train_widget(viewer)
    combo = tw.table.cellWidget(0, 1)
    assert combo.findText("wrong size") == -1  # a pseudo-GT must match the frames
    tw.crop_spin.setValue(64)
    assert tw.start() is None
    assert any("smaller than the 64-pixel crop" in m for m, _ in notes())
    tw.crop_spin.setValue(32)
    tw.lr_edit.setText("fast")
    assert tw.start() is None
    assert any("learning rate" in m for m, _ in notes())
    tw.lr_edit.setText("1e-4")
    (user_data / "weights" / tw.run_edit.text()).mkdir(parents=True)
    (user_data / "weights" / tw.run_edit.text() / "notes.txt").write_text("mine")
    assert tw.start() is None  # an unrelated folder is never written into
    assert any("is not a training run" in m for m, _ in notes())
    assert not tw.is_running


def test_closing_the_viewer_stops_training_cleanly(make_napari_viewer, qtbot, user_data):
    from napari_focusdeep._napari import _busy

    viewer = make_napari_viewer()
    _stack(viewer)
    tw = _tiny_train_widget(viewer, steps=10_000, val_every=5_000)
    out = tw.out_dir
    worker = tw.start()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: len(tw.plot.loss) >= 1, timeout=90_000)
    viewer.close()
    qtbot.waitUntil(lambda: bool(finished), timeout=60_000)
    assert (out / "checkpoint.safetensors").is_file()
    assert not _busy.running()


def test_quitting_napari_waits_for_the_checkpoint(make_napari_viewer, qtbot, user_data):
    """napari quitting (``aboutToQuit``) stops every run and returns once it has saved."""
    from napari_focusdeep._napari import _train

    viewer = make_napari_viewer()
    _stack(viewer)
    tw = _tiny_train_widget(viewer, steps=10_000, val_every=5_000)
    out = tw.out_dir
    worker = tw.start()
    finished = []
    worker.finished.connect(lambda: finished.append(True))
    qtbot.waitUntil(lambda: len(tw.plot.loss) >= 1, timeout=90_000)
    _train._stop_all_runs()  # blocks without processing Qt events, as at interpreter exit
    assert (out / "checkpoint.safetensors").is_file() and (out / "checkpoint.json").is_file()
    qtbot.waitUntil(lambda: bool(finished), timeout=30_000)
    assert tw.last_result.stopped == "stopped"
