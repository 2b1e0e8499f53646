"""The foundation's acceptance test: file -> registration -> pyramid -> file, against ground truth."""
from __future__ import annotations

import numpy as np
import pytest

from napari_focusdeep.fusion import fuse
from napari_focusdeep.fusion.core import to_float
from napari_focusdeep.io import read_stack, write_image, write_stack
from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


@pytest.mark.slow
def test_registered_pyramid_reaches_27_db_on_breathing_stack(tmp_path):
    """15 frames of 1024x768 with 2 % focus breathing and low noise (measured: 28.9 dB)."""
    sharp, depth = synthetic_scene((768, 1024), seed=0)
    sim = simulate_stack(sharp, depth, 15, breathing=0.02, noise="low", dtype=np.uint8, seed=0)
    path = write_stack(tmp_path / "stack.tif", sim.frames, axes="ZYXC")
    stack = read_stack(path)
    result = fuse(stack, method="pyramid", register=True, reference="middle")
    out = write_image(tmp_path / "fused.tif", result.image)
    fused = to_float(read_stack(out).frame(0))
    crop = (slice(77, -77), slice(102, -102))  # central 80 %: warped borders are guesses
    score = _psnr(fused[crop], sharp[crop])
    best_frame = max(_psnr(to_float(f)[crop], sharp[crop]) for f in sim.frames)
    assert score >= 27.0, score
    assert score > best_frame + 5
    assert result.image.dtype == np.uint8 and result.image.shape == (768, 1024, 3)
    assert all(s in ("ecc", "reference") for s in result.transforms.status)
    y0, y1, x0, x1 = result.valid_region
    assert 0 < y0 < y1 < 768 and 0 < x0 < x1 < 1024
