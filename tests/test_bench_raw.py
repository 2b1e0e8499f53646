"""The raw benchmark measures what it says: a held-out raw set whose noise levels differ
in noise alone, a demosaic that is right for RGGB, and a tiny end-to-end run."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks import raw as bench  # noqa: E402


def test_noise_levels_of_a_scene_differ_in_noise_alone():
    spec = bench.SCENES[1]
    clean = bench.render_raw(spec, 1, "none", 32)
    noisy = bench.render_raw(spec, 1, "high", 32)
    np.testing.assert_array_equal(clean["truth"], noisy["truth"])
    assert clean["packed"].shape == (spec.frames, 16, 16, 4)
    diff = noisy["packed"] - clean["packed"]
    assert 0.01 < float(diff.std()) < 0.2
    assert float(np.abs(bench.render_raw(spec, 1, "none", 32)["packed"] - clean["packed"]).max()) == 0.0
    # the held-out set: seeds beyond training and validation, pictures training never saw
    from napari_focusdeep.training.data import HELD_OUT_SOURCES

    assert bench.SEED_BASE > 10_000
    assert all(s.source.startswith("procedural:") or s.source in HELD_OUT_SOURCES for s in bench.SCENES)


def test_demosaic_is_rggb_and_processes_to_srgb():
    from napari_focusdeep.io.bayer import mosaic
    from napari_focusdeep.training.unprocess import process, random_camera

    yy, xx = np.mgrid[0:24, 0:24].astype(np.float32)
    cam_rgb = np.stack([0.1 + 0.01 * xx, 0.2 + 0.01 * yy, 0.15 + 0.005 * (xx + yy)], -1)
    camera = random_camera(0)
    out = bench.demosaic_frames(mosaic(cam_rgb)[None], camera)[0]
    assert np.abs(out - process(cam_rgb, camera))[3:-3, 3:-3].max() < 2e-3


def test_tiny_run_writes_every_method_per_noise_level(tmp_path, monkeypatch):
    import torch

    from napari_focusdeep.models import build_model
    from napari_focusdeep.models.weights import save_weights

    torch.manual_seed(0)
    weights = tmp_path / "tiny-raw.safetensors"
    save_weights(build_model("focusdeep-any", stem="raw", in_channels=4, features=8, front_blocks=1, groups=1,
                             blocks_per_group=1, offset_groups=2), weights)
    monkeypatch.setattr(bench, "SCENES", bench.SCENES[:1])
    monkeypatch.setattr(bench, "RGB_METHODS", ("pyramid",))
    out = tmp_path / "result.json"
    res = bench.run(quick=True, size=32, weights=str(weights), out=out)
    saved = json.loads(out.read_text())
    assert saved["complete"] and [r["noise"] for r in saved["stacks"]] == list(bench.NOISE_LEVELS)
    summary = res["summary"]
    assert set(summary) == {"all", *bench.NOISE_LEVELS}
    assert set(summary["all"]["methods"]) == {bench.RAW, "reference frame (demosaiced)", "pyramid"}
    # fusion beats the reference frame once there is noise to average out
    assert summary["high"]["methods"]["pyramid"]["psnr"] > summary["high"]["methods"]["reference frame (demosaiced)"]["psnr"]
    with pytest.raises(SystemExit, match="not a raw-input"):
        rgb = tmp_path / "rgb.safetensors"
        save_weights(build_model("focusdeep-any", features=8, front_blocks=1, groups=1, blocks_per_group=1,
                                 offset_groups=2), rgb)
        bench.run(quick=True, size=32, weights=str(rgb), out=tmp_path / "x.json")
