"""Classical fusion methods: quality against ground truth, depth, dtypes, channels,
streaming memory, block-wise == whole-image, tiny images."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from napari_focusdeep.fusion import fuse, get_method, list_methods
from napari_focusdeep.fusion.core import selection_image
from napari_focusdeep.stack import Stack
from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

METHODS = ["pyramid", "laplacian", "wavelet"]


def psnr(image: np.ndarray, truth: np.ndarray) -> float:
    err = np.mean((np.clip(image.astype(np.float64), 0, 1) - truth) ** 2)
    return float(10 * np.log10(1.0 / max(err, 1e-20)))


def to_unit(image: np.ndarray) -> np.ndarray:
    if image.dtype.kind in "ui":
        return image.astype(np.float64) / np.iinfo(image.dtype).max
    return image.astype(np.float64)


_CACHE: dict = {}


def make_stack(
    shape=(160, 160), n=8, channels=3, *, kind="mixed", max_blur=12.0, noise="low", dtype=np.float32, seed=3
):
    key = (shape, n, channels, kind, max_blur, noise, np.dtype(dtype).str, seed)
    if key not in _CACHE:
        sharp, depth = synthetic_scene(shape, channels=channels, kind=kind, seed=seed)
        _CACHE[key] = simulate_stack(sharp, depth, n, max_blur=max_blur, noise=noise, dtype=dtype, seed=seed)
    return _CACHE[key]


def run_accumulator(method: str, frames: np.ndarray, **options):
    """Drive a method's accumulator directly, as the driver does for one block."""
    meth = get_method(method)
    frames = frames if frames.ndim == 4 else frames[..., None]
    acc = meth.make(len(frames), frames.shape[1:], **{**meth.options, **options})
    for f in frames:
        f = f.astype(np.float32)
        acc.add(f, selection_image(f))
    return acc.finish()


# -- registry ------------------------------------------------------------------------------
def test_methods_are_registered():
    names = [m.name for m in list_methods()]
    for m in METHODS:
        assert m in names
        assert get_method(m).kind == "classical"
    assert fuse.__kwdefaults__["method"] == "pyramid"


@pytest.mark.parametrize("method", METHODS)
def test_unknown_and_bad_options_are_refused(method):
    sim = make_stack((32, 32), 3, 1)
    with pytest.raises(TypeError, match="unknown option"):
        fuse(sim.frames, method=method, register=False, levle=3)
    bad = {"pyramid": {"window": 4}, "laplacian": {"power": -1}, "wavelet": {"wavelet": "db2"}}[method]
    with pytest.raises(ValueError):
        fuse(sim.frames, method=method, register=False, **bad)


# -- quality -------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_beats_best_single_frame(method, channels):
    sim = make_stack(channels=channels)
    best = max(psnr(f, sim.sharp) for f in sim.frames)
    res = fuse(sim.frames, method=method, register=False)
    assert res.image.shape == sim.sharp.shape
    assert res.image.dtype == np.float32
    assert res.method == method
    got = psnr(res.image, sim.sharp)
    assert got >= best + 3.0, (method, channels, got, best)


@pytest.mark.parametrize("method", METHODS)
def test_depth_map_finds_focused_frame(method):
    # texture everywhere, so every pixel has a defined in-focus frame
    sim = make_stack((128, 128), 8, 1, kind="fractal", max_blur=16.0, noise=None, seed=5)
    res = fuse(sim.frames, method=method, register=False)
    assert res.depth.shape == sim.depth.shape and res.depth.dtype == np.float32
    assert res.depth_unit == "frame"
    inner = (slice(8, -8), slice(8, -8))
    err = np.abs(res.depth - sim.depth)[inner]
    assert np.mean(err <= 1.0) > 0.9, np.mean(err <= 1.0)
    assert np.median(err) < 0.5


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("method", METHODS)
def test_dtype_is_preserved(method, dtype):
    sim = make_stack((96, 96), 6, 3, dtype=dtype)
    res = fuse(sim.frames, method=method, register=False)
    assert res.image.dtype == np.dtype(dtype)
    assert res.image.shape == sim.frames.shape[1:]
    best = max(psnr(to_unit(f), sim.sharp) for f in sim.frames)
    assert psnr(to_unit(res.image), sim.sharp) > best + 2.0


@pytest.mark.parametrize("channels", [2, 5, 130])
@pytest.mark.parametrize("method", METHODS)
def test_any_channel_count(method, channels):
    # 130 channels is more than one OpenCV image may hold (128)
    if channels < 100:
        shape = (64, 64)
        sim = make_stack(shape, 5, channels, noise=None)
        frames, sharp = sim.frames, sim.sharp
    else:  # many channels: repeat an RGB stack's channels
        shape = (32, 28)
        sim = make_stack(shape, 5, 3, noise=None)
        pick = np.arange(channels) % 3
        frames, sharp = sim.frames[..., pick], sim.sharp[..., pick]
    stack = Stack.from_array(frames, axes="ZYXC")
    res = fuse(stack, method=method, register=False)
    assert res.image.shape == shape + (channels,)
    assert np.all(np.isfinite(res.image))
    best = max(psnr(f, sharp) for f in frames)
    assert psnr(res.image, sharp) > best + 2.0
    if channels > 100:
        # the repeated channels are fused identically
        np.testing.assert_allclose(res.image[..., 3:6], res.image[..., 0:3], atol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_channel_selects_what_focus_is_measured_on(method):
    # Channel 0 is focused front to back, channel 1 back to front: the depth map must
    # follow whichever channel is selected.
    a = make_stack((96, 96), 7, 1, kind="fractal", max_blur=16.0, noise=None, seed=7)
    b = make_stack((96, 96), 7, 1, kind="fractal", max_blur=16.0, noise=None, seed=8)
    frames = np.stack([a.frames, b.frames[::-1]], axis=-1)
    stack = Stack.from_array(frames, axes="ZYXC")
    inner = (slice(8, -8), slice(8, -8))
    d0 = fuse(stack, method=method, register=False, channel=0).depth
    d1 = fuse(stack, method=method, register=False, channel=1).depth
    assert np.mean(np.abs(d0 - a.depth)[inner] <= 1) > 0.85
    assert np.mean(np.abs(d1 - (6 - b.depth))[inner] <= 1) > 0.85
    # and the selected channel is the one that comes out sharp
    r0 = fuse(stack, method=method, register=False, channel=0).image
    r1 = fuse(stack, method=method, register=False, channel=1).image
    assert psnr(r0[..., 0], a.sharp) > psnr(r1[..., 0], a.sharp) + 1
    assert psnr(r1[..., 1], b.sharp) > psnr(r0[..., 1], b.sharp) + 1
    with pytest.raises(ValueError):
        fuse(stack, method=method, register=False, channel=2)


# -- streaming -----------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_memory_does_not_grow_with_frames(method):
    rng = np.random.default_rng(0)
    h, w, c = 96, 80, 3
    pool = [rng.random((h, w, c), dtype=np.float32) for _ in range(4)]
    focus = [selection_image(f) for f in pool]
    frame_bytes = pool[0].nbytes
    meth = get_method(method)

    def peak(n: int) -> int:
        tracemalloc.start()
        try:
            acc = meth.make(n, (h, w, c), **meth.options)
            for z in range(n):
                acc.add(pool[z % 4], focus[z % 4])
            out, depth = acc.finish()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    few, many = peak(10), peak(150)
    assert many - few < frame_bytes, (few, many, frame_bytes)
    # The undecimated wavelet keeps 3 C + 1 full-size planes per level (5 levels):
    # more than the others, but just as constant in the number of frames.
    limit = {"pyramid": 12, "laplacian": 8, "wavelet": 50}[method]
    assert many < limit * frame_bytes, many / frame_bytes


# -- blocks --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, shape, block, options",
    [
        ("pyramid", (203, 301), 64, {"levels": 3}),
        ("pyramid", (150, 170), 48, {"levels": 4, "window": 3}),
        ("pyramid", (40, 900), 192, {}),  # default levels: halo 384, so a long thin image
        ("laplacian", (203, 301), 64, {}),
        ("wavelet", (131, 157), 48, {"levels": 3}),
        ("wavelet", (24, 700), 150, {}),
    ],
)
def test_blockwise_equals_whole_image(method, shape, block, options):
    sim = make_stack(shape, 5, 3, max_blur=10.0)
    whole = fuse(sim.frames, method=method, register=False, **options)
    tiled = fuse(sim.frames, method=method, register=False, block_size=block, **options)
    assert tiled.info["blocks"] > 1
    assert np.abs(tiled.image - whole.image).max() < 1e-4
    assert np.abs(tiled.depth - whole.depth).max() < 1e-4


def test_pyramid_default_levels_do_not_depend_on_block():
    meth = get_method("pyramid")
    assert meth.align(**meth.options) == 2 ** meth.options["levels"]
    # a block cut from a large image always keeps the full pyramid
    from napari_focusdeep.fusion.pyramid import pyramid_levels

    halo = meth.halo(**meth.options)
    assert pyramid_levels((halo + 1, 1), meth.options["levels"]) == meth.options["levels"]


# -- edge cases ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (2, 3), (7, 5), (13, 2), (2, 13)])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("method", METHODS)
def test_tiny_images(method, shape, channels):
    rng = np.random.default_rng(1)
    frames = rng.random((4,) + shape + ((channels,) if channels > 1 else ()), dtype=np.float32)
    res = fuse(frames, method=method, register=False)
    assert res.image.shape == frames.shape[1:]
    assert res.depth.shape == shape
    assert np.all(np.isfinite(res.image)) and np.all(np.isfinite(res.depth))
    assert np.all((res.depth >= 0) & (res.depth <= 3))


@pytest.mark.parametrize("method", METHODS)
def test_single_frame_is_returned(method):
    sim = make_stack((45, 38), 1, 3, dtype=np.uint8)
    res = fuse(sim.frames, method=method, register=False)
    np.testing.assert_array_equal(res.image, sim.frames[0])
    np.testing.assert_array_equal(res.depth, 0)
    rng = np.random.default_rng(2)
    f = rng.random((1, 37, 29), dtype=np.float32)
    out, depth = run_accumulator(method, f)
    assert np.abs(out[..., 0] - f[0]).max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_identical_frames_are_reproduced(method):
    # No frame is sharper than another: the result is that same image.
    sim = make_stack((50, 61), 1, 3)
    frames = np.repeat(sim.frames, 5, axis=0)
    out, _ = run_accumulator(method, frames)
    assert np.abs(out - frames[0]).max() < 1e-4


# -- noise-aware selection (pyramid) -------------------------------------------------------
def test_pyramid_averages_noise_instead_of_selecting_it():
    # Max selection picks the largest noise excursion wherever no frame is sharp; the
    # noise-aware default averages there and still selects real detail.
    noisy = make_stack((160, 160), 12, 1, noise="high", max_blur=8.0, seed=5)
    auto = fuse(noisy.frames, register=False)
    hard = fuse(noisy.frames, register=False, noise=0)
    assert auto.info["options"]["noise"] > 0.01
    gain = psnr(to_unit(auto.image), noisy.sharp) - psnr(to_unit(hard.image), noisy.sharp)
    assert gain > 1.5, gain
    clean = make_stack((160, 160), 12, 1, noise=None, max_blur=8.0, seed=5)
    a = psnr(to_unit(fuse(clean.frames, register=False).image), clean.sharp)
    h = psnr(to_unit(fuse(clean.frames, register=False, noise=0).image), clean.sharp)
    assert a > h - 0.2, (a, h)


def test_noise_estimate_recovers_a_known_level():
    from napari_focusdeep.fusion.pyramid import estimate_noise, noise_sigma

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:300, :400] / 400.0
    smooth = (0.5 + 0.3 * np.sin(6 * xx) * np.cos(4 * yy)).astype(np.float32)
    assert noise_sigma(smooth) < 1e-3
    for sigma in (0.005, 0.02, 0.08):
        frames = np.stack([smooth + rng.normal(0, sigma, smooth.shape).astype(np.float32) for _ in range(3)])
        est = estimate_noise(frames[..., None])
        assert abs(est - sigma) < 0.12 * sigma, (est, sigma)


def test_pyramid_noise_options_are_checked():
    sim = make_stack((40, 40), 3, 1)
    for bad in ({"noise": -0.1}, {"noise": "high"}, {"noise": float("nan")}, {"tau": 0}, {"tau": -1}):
        with pytest.raises(ValueError):
            fuse(sim.frames, register=False, **bad)
    # an explicit level is used as given, not re-estimated
    assert fuse(sim.frames, register=False, noise=0.03).info["options"]["noise"] == 0.03


def test_soft_and_hard_selection_stream_in_constant_memory_per_level():
    # the online softmax keeps C + 2 planes per level, as max selection does
    from napari_focusdeep.fusion.pyramid import PyramidFusion

    rng = np.random.default_rng(1)
    for noise in (0.0, 0.02):
        acc = PyramidFusion(4, (64, 64, 3), levels=3, noise=noise)
        for _ in range(4):
            f = rng.random((64, 64, 3), dtype=np.float32)
            acc.add(f, f.mean(-1))
        planes = sum(a.size for lvl in acc.coef for a in lvl) + sum(a.size for a in acc.best) + sum(a.size for a in acc.wsum)
        level_pixels = sum(h * w for h, w in acc.sizes[:-1])
        assert planes <= 5 * level_pixels


@pytest.mark.parametrize("method", ["pyramid", "laplacian", "wavelet"])
@pytest.mark.parametrize("block", [None, 48])
def test_without_the_depth_map_the_image_is_the_same(method, block, monkeypatch):
    from dataclasses import replace

    from napari_focusdeep.fusion import registry

    sim = make_stack((120, 150), 4, 3, max_blur=8.0)
    options = {"levels": 3} if method != "laplacian" else {}
    both = fuse(sim.frames, method=method, register=False, block_size=block, **options)
    meth = get_method(method)
    made = []

    def make(*args, **kwargs):
        acc = meth.make(*args, **kwargs)
        made.append(acc.depth is None)  # before finish(), which drops it anyway
        return acc

    monkeypatch.setitem(registry._REGISTRY, method, replace(meth, make=make))
    image_only = fuse(sim.frames, method=method, register=False, block_size=block, depth=False, **options)
    assert image_only.depth is None and both.depth is not None
    assert made and all(made)  # the accumulators never tracked it
    np.testing.assert_array_equal(image_only.image, both.image)


def test_without_the_depth_map_pyramid_holds_fewer_planes():
    from napari_focusdeep.fusion.pyramid import PyramidFusion

    sim = make_stack((256, 256), 3, 3)
    peaks = {}
    for track in (True, False):
        tracemalloc.start()
        acc = PyramidFusion(3, (256, 256, 3), noise=0.01, track_depth=track)
        for frame in sim.frames:
            acc.add(frame, selection_image(frame))
        image, depth = acc.finish()
        peaks[track] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert (depth is None) is (not track)
    plane = 256 * 256 * 4
    assert peaks[True] - peaks[False] > 3 * plane, (peaks, plane)
