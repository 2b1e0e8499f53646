"""The simulator is the ground truth behind every quality claim: test its physics."""
from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from napari_focusdeep.training.simulate import (
    NoiseLevel,
    add_noise,
    image_source,
    psf_kernel,
    sample_noise,
    sample_stack,
    simulate_stack,
    synthetic_scene,
)


def _sharpness(img: np.ndarray) -> np.ndarray:
    g = img if img.ndim == 2 else img.mean(axis=-1)
    lap = cv2.Laplacian(g.astype(np.float32), cv2.CV_32F)
    return cv2.GaussianBlur(lap * lap, (0, 0), 4)


def test_deterministic_for_a_seed():
    a = sample_stack(shape=(64, 80), n_frames=5, seed=3)
    b = sample_stack(shape=(64, 80), n_frames=5, seed=3)
    c = sample_stack(shape=(64, 80), n_frames=5, seed=4)
    np.testing.assert_array_equal(a.frames, b.frames)
    assert not np.array_equal(a.frames, c.frames)


def test_shapes_dtypes_and_reference():
    sharp, depth = synthetic_scene((40, 50), channels=3, seed=0)
    assert sharp.shape == (40, 50, 3) and sharp.dtype == np.float32 and 0 <= sharp.min() and sharp.max() <= 1
    assert depth.shape == (40, 50) and depth.min() == 0 and depth.max() == 1
    sim = simulate_stack(sharp, depth, 7, dtype=np.uint16, reference="last")
    assert sim.frames.shape == (7, 40, 50, 3) and sim.frames.dtype == np.uint16
    assert sim.reference == 6 and np.allclose(sim.matrices[6], np.eye(3))
    gray, _ = synthetic_scene((40, 50), channels=1, seed=0)
    assert simulate_stack(gray, depth, 3).frames.shape == (3, 40, 50)


def test_dead_leaves_scene_occludes_with_depth():
    """Leaves cover the picture, and the picture's edges are depth edges (nearer leaves on top)."""
    sharp, depth = synthetic_scene((96, 96), channels=3, kind="leaves", seed=5)
    again, _ = synthetic_scene((96, 96), channels=3, kind="leaves", seed=5)
    np.testing.assert_array_equal(sharp, again)
    assert sharp.shape == (96, 96, 3) and 0.05 <= sharp.min() and sharp.max() <= 0.95
    assert depth.shape == (96, 96) and depth.min() == 0 and depth.max() == 1
    # depth is piecewise near-flat: most strong depth steps sit on strong picture edges
    dz = np.hypot(*np.gradient(depth))
    di = np.hypot(*np.gradient(sharp.mean(axis=-1)))
    steps = dz > 0.05
    assert steps.mean() > 0.01
    assert np.median(di[steps]) > 3 * np.median(di[~steps])
    # and the leaves on top are the near ones: a small flat region (a leaf seen whole) is
    # nearer (smaller depth) than the ring just outside it
    from scipy import ndimage

    sharp, depth = synthetic_scene((128, 128), channels=3, kind="leaves", seed=7)
    flat, count = ndimage.label(np.hypot(*np.gradient(depth)) < 0.02)
    nearer = []
    for i in range(1, count + 1):
        region = flat == i
        ys, xs = np.nonzero(region)
        if not 4 <= region.sum() <= 150 or ys.min() == 0 or xs.min() == 0 or ys.max() == 127 or xs.max() == 127:
            continue
        ring = ndimage.binary_dilation(region, iterations=3) & ~ndimage.binary_dilation(region, iterations=1)
        nearer.append(depth[region].mean() < depth[ring].mean())
    assert len(nearer) >= 10 and np.mean(nearer) > 0.7, (len(nearer), np.mean(nearer))
    gray, _ = synthetic_scene((64, 64), channels=1, kind="leaves", seed=5)
    assert gray.shape == (64, 64)
    with pytest.raises(ValueError, match="leaves"):
        synthetic_scene((32, 32), kind="bubbles")


def test_in_focus_frame_is_sharpest_where_depth_matches():
    """Physical sanity: each pixel is sharpest in the frame focused at its depth."""
    sharp, _ = synthetic_scene((128, 128), channels=1, kind="fractal", seed=1)
    depth = np.zeros((128, 128), np.float32)
    depth[:, 64:] = 1.0  # left half near (frame 0), right half far (last frame)
    sim = simulate_stack(sharp, depth, 5, max_blur=8, psf="disk")
    s = np.stack([_sharpness(f) for f in sim.frames])
    left = s[:, 16:112, 8:48].mean(axis=(1, 2))
    right = s[:, 16:112, 80:120].mean(axis=(1, 2))
    assert left.argmax() == 0 and right.argmax() == 4
    assert np.all(np.diff(left) < 0) and np.all(np.diff(right) > 0)
    np.testing.assert_allclose(sim.depth[:, :64], 0)
    np.testing.assert_allclose(sim.depth[:, 64:], 4)


def test_occlusion_blur_spills_across_depth_edges():
    """A blurred near object spills over a sharp far background (layered compositing)."""
    sharp = np.full((64, 64), 0.2, np.float32)
    sharp[:, :32] = 0.9  # bright near half
    depth = np.ones((64, 64), np.float32)
    depth[:, :32] = 0.0
    sim = simulate_stack(sharp, depth, 2, max_blur=6, psf="disk", reference="first")
    far_in_focus = sim.frames[1]  # focused on the far half; the near half is blurred
    # light from the blurred near half reaches into the (in-focus) far side
    assert far_in_focus[32, 34] > 0.25
    assert abs(far_in_focus[32, 60] - 0.2) < 1e-3


@pytest.mark.parametrize("kind", ["gaussian", "disk", "ring"])
def test_psfs_are_normalised(kind):
    k = psf_kernel(3.5, kind)
    assert k.sum() == pytest.approx(1.0, abs=1e-5)
    assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    if kind == "ring":
        c = k.shape[0] // 2
        assert k[c, c + 3] > k[c, c]  # bright rim
    assert psf_kernel(0.2, kind).shape == (1, 1)


def test_breathing_matches_matrices():
    sharp, depth = synthetic_scene((64, 64), seed=2)
    sim = simulate_stack(sharp, depth, 5, breathing=0.03, reference="middle")
    scales = [math.hypot(m[0, 0], m[1, 0]) for m in sim.matrices]
    assert scales[2] == pytest.approx(1.0)
    assert scales[0] == pytest.approx(1 - 0.015) and scales[4] == pytest.approx(1 + 0.015)


def test_noise_statistics_follow_shot_and_read():
    rng = np.random.default_rng(0)
    level = NoiseLevel(shot=0.01, read=1e-4)
    for value in (0.2, 0.7):
        flat = np.full((256, 256), value, np.float32)
        noisy = add_noise(flat, level, rng, gamma=1.0)  # gamma 1: the variance is directly visible
        expected = level.shot * value + level.read
        assert noisy.var() == pytest.approx(expected, rel=0.05)
        assert noisy.mean() == pytest.approx(value, abs=0.003)


def test_brooks_noise_sampling_ranges():
    rng = np.random.default_rng(1)
    levels = [sample_noise(rng) for _ in range(2000)]
    shot = np.log([lv.shot for lv in levels])
    assert shot.min() >= math.log(1e-4) - 1e-9 and shot.max() <= math.log(0.012) + 1e-9
    resid = np.log([lv.read for lv in levels]) - (2.18 * shot + 1.20)
    assert abs(resid.mean()) < 0.03 and resid.std() == pytest.approx(0.26, rel=0.1)


def test_motorcycle_source_uses_real_disparity():
    img, depth = image_source("motorcycle", shape=(100, 148))
    assert img.shape == (100, 148, 3) and depth.shape == (100, 148)
    assert 0 <= depth.min() and depth.max() <= 1 and depth.std() > 0.05
