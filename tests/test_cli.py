"""The ``focusdeep`` command line: its flags, outputs and exit codes are a contract."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_focusdeep.cli import main
from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene


@pytest.fixture(scope="module")
def sim():
    sharp, depth = synthetic_scene((96, 128), channels=3, seed=4)
    return simulate_stack(sharp, depth, 6, breathing=0.01, dtype=np.uint8, seed=4, layers=6)


@pytest.fixture()
def frames_dir(tmp_path, sim):
    import cv2

    d = tmp_path / "frames"
    d.mkdir()
    for i, f in enumerate(sim.frames):
        cv2.imwrite(str(d / f"frame_{i}.png"), f[..., ::-1])
    return d


def test_fuse_folder_writes_same_size_and_dtype(frames_dir, tmp_path, capsys):
    out = tmp_path / "fused.tif"
    depth = tmp_path / "depth.tif"
    assert main(["fuse", str(frames_dir), "-o", str(out), "--depth-map", str(depth)]) == 0
    img = tifffile.imread(out)
    assert img.shape == (96, 128, 3) and img.dtype == np.uint8
    d = tifffile.imread(depth)
    assert d.shape == (96, 128) and 0 <= d.min() and d.max() <= 5


def test_fuse_frame_files_and_png_output(frames_dir, tmp_path):
    files = sorted(str(p) for p in frames_dir.iterdir())
    out = tmp_path / "fused.png"
    assert main(["fuse", *files, "-o", str(out), "--method", "laplacian", "--no-register"]) == 0
    assert out.exists()


def test_fuse_says_when_it_fused_in_blocks(frames_dir, tmp_path, capsys):
    out = tmp_path / "fused.tif"
    assert main(["fuse", str(frames_dir), "-o", str(out), "--no-register"]) == 0
    assert "blocks" not in capsys.readouterr().err
    assert main(["fuse", str(frames_dir), "-o", str(out), "--no-register", "--overwrite", "--block-size", "48"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    found = re.search(r"in (\d+) blocks of 48 px\)$", last)
    assert last.startswith(f"wrote {out}") and found and int(found.group(1)) > 1, last


def test_existing_output_is_not_overwritten(frames_dir, tmp_path, capsys):
    out = tmp_path / "fused.tif"
    out.write_bytes(b"precious")
    assert main(["fuse", str(frames_dir), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert out.read_bytes() == b"precious"
    assert main(["fuse", str(frames_dir), "-o", str(out), "--overwrite"]) == 0
    assert tifffile.imread(out).shape == (96, 128, 3)


def test_method_options_and_interpolation_reach_fuse(frames_dir, sim, tmp_path, capsys):
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.io import read_stack

    out = tmp_path / "hard.tif"
    argv = ["fuse", str(frames_dir), "-o", str(out), "--option", "noise=0", "--option", "window=3", "--interpolation", "linear"]
    assert main(argv) == 0
    want = fuse(read_stack(frames_dir), noise=0, window=3, interpolation="linear").image
    np.testing.assert_array_equal(tifffile.imread(out), want)
    assert main(["fuse", str(frames_dir), "-o", str(tmp_path / "soft.tif")]) == 0
    assert not np.array_equal(tifffile.imread(tmp_path / "soft.tif"), want)  # the default is not max selection
    # argparse rejects a malformed flag itself (SystemExit 2); the method rejects bad values
    for bad, by_argparse in ((["--option", "nois=0"], False), (["--option", "noise=-1"], False),
                             (["--option", "noise"], True), (["--interpolation", "bicubic"], True)):
        argv = ["fuse", str(frames_dir), "-o", str(tmp_path / "bad.tif"), *bad]
        if by_argparse:
            with pytest.raises(SystemExit) as exc:
                main(argv)
            assert exc.value.code == 2
        else:
            assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error" in err and "Traceback" not in err
        assert not (tmp_path / "bad.tif").exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["fuse", "in", "-o", "x.tif", "--reference", "sideways"],
        ["fuse", "in"],  # no -o
        ["fuse", "in", "-o", "x.tif", "--device", "tpu"],
        ["explode"],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_unknown_method_is_a_one_line_error(frames_dir, tmp_path, capsys):
    assert main(["fuse", str(frames_dir), "-o", str(tmp_path / "x.tif"), "--method", "nonsense"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown method" in err[0]
    assert not (tmp_path / "x.tif").exists()


def test_missing_input_and_empty_folder_exit_2(tmp_path, capsys):
    assert main(["fuse", str(tmp_path / "nope"), "-o", str(tmp_path / "x.tif")]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fuse", str(empty), "-o", str(tmp_path / "x.tif")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_pickled_weights_are_refused(frames_dir, tmp_path, capsys):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not really a pickle")
    code = main(["fuse", str(frames_dir), "-o", str(tmp_path / "x.tif"), "--method", "focusdeep-any", "--weights", str(bad)])
    assert code == 2
    assert "safetensors" in capsys.readouterr().err
    assert not (tmp_path / "x.tif").exists()


def test_transforms_round_trip_through_cli(frames_dir, tmp_path):
    tf = tmp_path / "tf.json"
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    assert main(["fuse", str(frames_dir), "-o", str(a), "--save-transforms", str(tf)]) == 0
    data = json.loads(tf.read_text())
    assert len(data["matrices"]) == 6
    assert main(["fuse", str(frames_dir), "-o", str(b), "--transforms", str(tf)]) == 0
    np.testing.assert_array_equal(tifffile.imread(a), tifffile.imread(b))


def test_info_and_methods(frames_dir, capsys):
    assert main(["info", str(frames_dir)]) == 0
    out = capsys.readouterr().out
    assert "frames" in out and "6" in out and "128x96" in out
    assert main(["methods"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert {"pyramid", "laplacian", "wavelet", "focusdeep", "focusdeep-any", "unet"} <= set(names)


def test_models_lists_shipped_weights(capsys):
    assert main(["models"]) == 0
    assert "focusdeep-any" in capsys.readouterr().out


def test_demo_scores_above_single_frames(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    score = float(text.split("PSNR against ground truth: ")[1].split(" dB")[0])
    best = float(text.split("best single frame: ")[1].split(" dB")[0])
    assert score > best + 3
    assert (out / "fused.png").exists() and (out / "depth.tif").exists()
    # a second run refuses to replace the first one's files
    assert main(["demo", "-o", str(out)]) == 2


def test_simulate_writes_frames_and_truth(tmp_path):
    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--frames", "4", "--size", "48", "64", "--noise", "low"]) == 0
    assert len(list(out.glob("frame_*.png"))) == 4
    from napari_focusdeep.io import read_stack

    truth = read_stack(out / "ground_truth.tif")
    assert truth.frame_shape == (48, 64) and truth.n_channels == 3


def test_console_script_exit_code_without_traceback(tmp_path):
    """The installed entry point behaves like main(): exit 2, one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, "-m", "napari_focusdeep.cli", "fuse", str(tmp_path / "missing"), "-o", str(tmp_path / "o.tif")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0


def test_simulate_psf_choices_are_the_simulators(tmp_path):
    """Every PSF the simulator renders can be asked for (``donut`` was missing)."""
    from napari_focusdeep.cli import build_parser
    from napari_focusdeep.training.simulate import PSF_KINDS

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["simulate"]
    psf = next(a for a in sub._actions if a.dest == "psf")
    assert tuple(psf.choices) == PSF_KINDS and "donut" in psf.choices
    out = tmp_path / "sim"
    assert main(["simulate", "-o", str(out), "--frames", "2", "--size", "32", "32", "--psf", "donut"]) == 0
    assert len(list(out.glob("frame_*.png"))) == 2
    # the choices are read when needed, not on every start (the simulator imports OpenCV and dask)
    code = ("import sys; from napari_focusdeep.cli import build_parser; build_parser(); "
            "sys.exit('napari_focusdeep.training.simulate' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_fixed_frame_network_says_it_resamples(sim, tmp_path, capsys):
    """``focusdeep`` (trained on 8 frames) fusing 3 frames says so in one stderr line."""
    import cv2

    from napari_focusdeep.models.methods import resampling_note

    d = tmp_path / "three"
    d.mkdir()
    for i, f in enumerate(sim.frames[:3]):
        cv2.imwrite(str(d / f"frame_{i}.png"), np.ascontiguousarray(f[:48, :64, ::-1]))
    out = tmp_path / "fused.tif"
    argv = ["fuse", str(d), "-o", str(out), "--method", "focusdeep", "--no-register", "--device", "cpu", "--tile", "64"]
    assert main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    assert "focusdeep: warning: network trained on 8 frames; resampling the 3-frame stack to 8" in err
    assert tifffile.imread(out).shape == (48, 64, 3)
    # nothing to say when the lengths match, or for the any-length network
    assert resampling_note("focusdeep", 8) is None
    assert resampling_note("focusdeep-any", 3) is None
    # the shipped network fuses every frame of a longer stack in its pyramid base
    assert resampling_note("focusdeep", 20).endswith("to 8 (its pyramid base still fuses all 20)")
    assert resampling_note("focusdeep", 20, weights="focusdeep-paper").endswith("resampling the 20-frame stack to 8")


def test_ctrl_c_during_train_saves_a_checkpoint_and_resumes(tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it, data-loading worker
    included) ends the run at a step with a checkpoint, exit 130; the same command resumes."""
    import os
    import signal
    import time

    out = tmp_path / "run"
    steps = 12
    cmd = [sys.executable, "-m", "napari_focusdeep.cli", "train", "-o", str(out), "--steps", str(steps),
           "--crop", "32", "--batch-size", "1", "--frames", "2", "3", "--val-every", "2", "--val-count", "1",
           "--workers", "1", "--device", "cpu", "--model",
           json.dumps({"features": 8, "front_blocks": 1, "groups": 1, "blocks_per_group": 1, "offset_groups": 2})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    log = out / "log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and log.read_text().strip()):  # training has begun: a validation was logged
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert err.count("stopping after this step") == 1, err  # the worker process stays quiet
    line = next(s for s in err.splitlines() if s.startswith("focusdeep: interrupted at step"))
    assert "run the same command again" in line
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert 0 < step < steps
    assert json.loads((out / "checkpoint.json").read_text())["step"] == step
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr
    assert f"resumed from step {step}" in done.stderr
    assert done.stdout.startswith(f"step {steps}:")
