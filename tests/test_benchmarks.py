"""The benchmark suites measure what they say (small, classical-only runs; no timing asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is a top-level folder of the repository, not installed
    sys.path.insert(0, str(REPO))

from benchmarks import cpu_speed, quality  # noqa: E402
from benchmarks._common import central, scores  # noqa: E402


def test_scores_use_the_central_80_percent():
    truth = np.full((50, 50), 0.5, np.float32)
    result = truth + 0.01
    result[:5] = 1.0  # a ruined border outside the central 80 % does not count
    psnr, ssim = scores(result, truth)
    assert central(truth).shape == (40, 40)
    assert psnr == pytest.approx(40.0, abs=1e-3)
    assert 0.9 < ssim <= 1.0
    with pytest.raises(ValueError, match="shape"):
        scores(result[:40], truth)


def test_held_out_set_is_deterministic_and_spans_the_conditions():
    specs = quality.STACKS
    assert len(specs) >= 12
    assert {s.noise for s in specs} == {"none", "low", "medium", "high"}
    assert {s.channels for s in specs} == {1, 3} and {s.dtype for s in specs} == {"uint8", "uint16"}
    assert {s.psf for s in specs} == {"disk", "gaussian", "ring"}
    assert min(s.frames for s in specs) == 5 and max(s.frames for s in specs) == 60
    assert any(s.breathing == 0 for s in specs) and any(s.breathing > 0 for s in specs)
    assert all(s.breathing == 0 or 0.02 <= s.breathing <= 0.03 for s in specs)
    from napari_focusdeep.training.data import HELD_OUT_SOURCES

    assert set(HELD_OUT_SOURCES) <= {s.source for s in specs}
    assert {s.noise for s in specs if s.name in quality.QUICK} == {"none", "low", "medium", "high"}
    spec = next(s for s in specs if s.name == "brick-gray16")
    a = quality.render(spec, specs.index(spec), 48)
    b = quality.render(spec, specs.index(spec), 48)
    assert a.frames.dtype == np.uint16 and a.frames.shape == (spec.frames, 48, 48)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.sharp, b.sharp)


def test_quality_run_scores_fusion_above_a_single_frame(tmp_path):
    out = tmp_path / "q.json"
    res = quality.run(methods=["pyramid", "laplacian", "no-such-method"], size=64,
                      stacks=["camera-gray8", "cells-rgb8"], out=out)
    saved = json.loads(out.read_text())
    assert saved["complete"] and saved["methods"] == ["pyramid", "laplacian"]
    assert "no-such-method" in saved["skipped"]
    for rec in res["stacks"]:
        # on clean or low-noise stacks fusing the focus stack beats its reference frame
        assert rec["results"]["pyramid"]["psnr"] > rec["results"]["reference-frame"]["psnr"] + 3
    assert res["summary"]["all"]["stacks"] == 2
    assert res["summary"]["all"]["best_classical"] in ("pyramid", "laplacian")
    assert res["targets"] == {}  # no focusdeep-any scored, no target claimed


def test_quality_scores_the_max_selection_pyramid_as_a_method_of_its_own(tmp_path):
    res = quality.run(methods=["pyramid", "pyramid-max"], size=64, stacks=["text-rgb8"], out=tmp_path / "q.json")
    scored = res["stacks"][0]["results"]
    # at high noise, averaging where no frame stands out beats hard max selection
    assert scored["pyramid"]["psnr"] > scored["pyramid-max"]["psnr"] + 1
    assert res["summary"]["all"]["best_classical"] == "pyramid"


def test_summary_and_targets_from_known_numbers():
    def rec(noise, pyr, lap, deep):
        return {"spec": {"noise": noise, "channels": 3, "breathing": 0.0, "source": "camera"},
                "results": {"pyramid": {"psnr": pyr, "ssim": 0.5, "seconds": 1.0},
                            "laplacian": {"psnr": lap, "ssim": 0.5, "seconds": 1.0},
                            "focusdeep-any": {"psnr": deep, "ssim": 0.5, "seconds": 9.0},
                            "reference-frame": {"psnr": 10.0, "ssim": 0.1}}}

    records = [rec("none", 40, 37, 41), rec("high", 20, 22, 27)]
    summary = quality.summarise(records, ["pyramid", "laplacian", "focusdeep-any"])
    assert summary["all"]["best_classical"] == "pyramid"  # mean 30 against 29.5
    diff = summary["all"]["deep_vs_best_classical"]["focusdeep-any"]
    assert diff["psnr_diff_db"] == pytest.approx(34 - 30)
    assert diff["stacks_won"] == 2
    high = summary["noise=high"]
    assert high["best_classical"] == "laplacian"
    assert high["deep_vs_best_classical"]["focusdeep-any"]["psnr_diff_db"] == pytest.approx(5)
    t = quality.targets(summary)
    assert t["average"]["met"] and t["high_noise"]["met"]
    records[1]["results"]["focusdeep-any"]["psnr"] = 24.0
    t = quality.targets(quality.summarise(records, ["pyramid", "laplacian", "focusdeep-any"]))
    assert not t["high_noise"]["met"] and t["high_noise"]["psnr_diff_db"] == pytest.approx(2)


def test_lazy_stack_moves_focus_through_depth():
    data = cpu_speed.lazy_stack(5, 64)
    assert data.shape == (5, 64, 64, 3) and data.dtype == np.uint8 and data.chunks[0] == (1,) * 5
    first, last = np.asarray(data[0]).astype(float), np.asarray(data[4]).astype(float)
    assert np.abs(first - last).mean() > 1  # different frames are focused differently


def test_tile_overhead_counts_the_overlap():
    whole = cpu_speed.tile_overhead("pyramid", (300, 400))
    assert whole["tiles"] == 1 and whole["read_ratio"] == 1.0
    ov = cpu_speed.tile_overhead("focusdeep-any", (1500, 2000))
    assert ov["tiles"] == 12 and 1.2 < ov["read_ratio"] < 2.0


def test_memory_child_reports_peak_and_baseline():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.cpu_speed", "--rss-child", "pyramid", "3", "64"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rec = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rec["frames"] == 3 and rec["register"] is True
    assert rec["peak_bytes"] >= rec["baseline_bytes"] > 10 * 2**20


def test_memory_benchmark_measures_a_real_fuse_and_fits_the_size_slope(tmp_path):
    from benchmarks import memory

    path = memory.write_tiff_stack(tmp_path / "s.tif", 4, (60, 80), base=(30, 40))
    import tifffile

    with tifffile.TiffFile(path) as tif:
        assert len(tif.pages) == 4 and tif.pages[0].shape == (60, 80, 3)
    res = memory.measure(path, tmp_path / "out.tif", timeout=300)
    assert res["ok"] and res["seconds"] > 0 and res["peak_rss_mib"] > 20
    assert not (tmp_path / "out.tif").exists()
    assert res["blocks"] == 1
    blocked = memory.measure(path, tmp_path / "out.tif", timeout=300, extra=("--block-size", "32"))
    assert blocked["ok"] and blocked["blocks"] > 1, blocked  # read from the CLI's last line
    rows = [{"ok": True, "frames": 10, "frame_float32_mib": x, "peak_rss_mib": 200 + 3 * x} for x in (10, 40, 160)]
    f = memory.fit(rows)
    assert abs(f["frames_of_float32"] - 3) < 1e-6 and abs(f["constant_mib"] - 200) < 1e-6
    assert memory.fit(rows[:1]) is None
    # a case with another number of frames (the big stack) is not a point on the size line
    assert memory.fit(rows + [{"ok": True, "frames": 200, "frame_float32_mib": 40, "peak_rss_mib": 9999}]) == f
    # nor is a whole-image case that fell into blocks for lack of memory
    assert memory.fit(rows + [{"ok": True, "frames": 10, "frame_float32_mib": 640, "peak_rss_mib": 500, "auto_blocks": True}]) == f


def test_headroom_denoises_a_noisy_image_and_reports_the_gain():
    from benchmarks.headroom import nlm_gain

    rng = np.random.default_rng(0)
    sharp = np.tile(np.linspace(0.2, 0.8, 64), (64, 1))
    row = nlm_gain(np.clip(sharp + rng.normal(0, 0.05, sharp.shape), 0, 1), sharp)
    assert 0.03 < row["sigma"] < 0.07
    assert row["gain_db"] > 3 and row["psnr_nlm"] == pytest.approx(row["psnr"] + row["gain_db"])
