"""Registration: ECC recovers known synthetic motion to a fraction of a pixel."""
from __future__ import annotations

import json
import math
import warnings

import cv2
import dask
import dask.array as da
import numpy as np
import pytest

from napari_focusdeep.registration import (
    RegistrationWarning,
    Transforms,
    apply_transforms,
    estimate_transforms,
    iter_estimate_transforms,
    resolve_reference,
    warp_frame,
)

TOL = 0.2  # pixels


# -- synthetic focus stacks ---------------------------------------------------------------
def _scene(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smoothed noise at three scales plus hard-edged shapes, in [0, 1]."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for sigma, amp in [(1.5, 0.5), (4, 0.8), (12, 1.0)]:
        n = cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), sigma)
        img += amp * n / n.std()
    for _ in range(20):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, centre, int(rng.integers(5, min(h, w) // 10)), float(rng.uniform(-2, 2)), -1)
    for _ in range(12):
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        size = (int(rng.integers(5, 50)), int(rng.integers(5, 50)))
        cv2.rectangle(img, (x, y), (x + size[0], y + size[1]), float(rng.uniform(-2, 2)), -1)
    return (img - img.min()) / (img.max() - img.min())


def _make_stack(
    h: int = 256,
    w: int = 320,
    n: int = 5,
    *,
    mag: float = 0.03,
    shift: float = 4.0,
    rot: float = 0.5,
    perspective: float = 0.0,
    blur: tuple[float, float] = (0.5, 2.5),
    seed: int = 0,
    margin: int = 48,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames of a larger scene seen through known motion, with defocus that sweeps
    from the border (sharp first) to a central disc (sharp last).

    Returns the frames ``(n, h, w)`` float32 and ``G[i]``: scene coords -> frame-i
    coords; the true ``M[i]`` for reference ``r`` is ``G[i] @ inv(G[r])``.
    """
    rng = np.random.default_rng(seed)
    big_h, big_w = h + 2 * margin, w + 2 * margin
    sc = _scene(big_h, big_w, seed)
    centre = np.array([(big_w - 1) / 2, (big_h - 1) / 2])
    yy, xx = np.mgrid[:big_h, :big_w]
    disc = (((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) < (0.3 * min(big_h, big_w)) ** 2).astype(np.float32)
    disc = cv2.GaussianBlur(disc, (0, 0), 5)
    t, ang = np.zeros(2), 0.0
    frames, gs = [], []
    for i in range(n):
        f = i / max(1, n - 1)
        if i:
            t = t + rng.uniform(-shift, shift, 2)
            ang += rng.uniform(-rot, rot)
        s = 1 + mag * f  # focus breathing: magnification grows through the burst
        a = math.radians(ang)
        g = np.eye(3)
        g[:2, :2] = s * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        g[:2, 2] = centre - g[:2, :2] @ centre + t - margin
        if perspective and i:
            g = g @ np.array([[1, 0, 0], [0, 1, 0], [perspective * f / big_w, 0.5 * perspective * f / big_h, 1]])
        gs.append(g)
        s_out, s_in = blur[0] + (blur[1] - blur[0]) * f, blur[1] - (blur[1] - blur[0]) * f
        img = cv2.GaussianBlur(sc, (0, 0), s_out) * (1 - disc) + cv2.GaussianBlur(sc, (0, 0), s_in) * disc
        frames.append(cv2.warpPerspective(img, g, (w, h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT))
    return np.clip(np.stack(frames), 0, 1).astype(np.float32), gs


def _truth(gs: list[np.ndarray], ref: int) -> np.ndarray:
    inv = np.linalg.inv(gs[ref])
    m = np.array([g @ inv for g in gs])
    return m / m[:, 2:3, 2:3]


def _map(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ m.T
    return q[:, :2] / q[:, 2:3]


def _max_error(est: np.ndarray, true: np.ndarray, region: tuple[int, int, int, int], step: int = 8) -> np.ndarray:
    """Per frame, the largest distance between where the estimated and the true
    transform send a grid of reference points in ``region``."""
    y0, y1, x0, x1 = region
    ys, xs = np.mgrid[y0:y1:step, x0:x1:step]
    pts = np.c_[xs.ravel(), ys.ravel()].astype(np.float64)
    return np.array([np.linalg.norm(_map(a, pts) - _map(b, pts), axis=1).max() for a, b in zip(est, true)])


@pytest.fixture(scope="module")
def stack():
    return _make_stack()


@pytest.fixture(scope="module")
def middle(stack):
    frames, _ = stack
    return estimate_transforms(da.from_array(frames[..., None], chunks=(1, -1, -1, -1)))


# -- accuracy ------------------------------------------------------------------------------
@pytest.mark.parametrize("reference", ["first", "middle", "last", 1, -2])
def test_recovers_known_motion_for_every_reference(stack, middle, reference):
    frames, gs = stack
    n = len(frames)
    tf = middle if reference == "middle" else estimate_transforms(frames, reference=reference)
    ref = resolve_reference(reference, n)
    assert tf.reference == ref
    assert tf.matrices.shape == (n, 3, 3) and tf.matrices.dtype == np.float64
    np.testing.assert_array_equal(tf.matrices[ref], np.eye(3))
    assert tf.status == ["reference" if i == ref else "ecc" for i in range(n)]
    assert tf.frame_shape == frames.shape[1:3]
    err = _max_error(tf.matrices, _truth(gs, ref), tf.valid_region)
    assert err.max() < TOL, err
    assert all(s > 0.9 for i, s in enumerate(tf.scores) if i > 0)


def test_middle_is_the_default_and_halves_the_chain(middle, stack):
    assert middle.reference == (len(stack[0]) - 1) // 2 == 2
    assert resolve_reference("middle", 6) == 2 and resolve_reference("middle", 7) == 3
    assert resolve_reference("first", 6) == 0 and resolve_reference("last", 6) == 5
    assert resolve_reference(-1, 6) == 5 and resolve_reference("2", 6) == 2
    for bad in ["centre", 6, -7]:
        with pytest.raises(ValueError):
            resolve_reference(bad, 6)


def test_chaining_composes_pairwise_transforms(stack, middle):
    frames, gs = stack
    first = estimate_transforms(frames, reference="first")
    # The pairwise estimates do not depend on the reference, so changing it is a pure
    # re-referencing: M_first[i] = M_middle[i] @ inv(M_middle[0]).
    rebased = middle.matrices @ np.linalg.inv(middle.matrices[0])
    np.testing.assert_allclose(first.matrices, rebased, atol=1e-9)
    # And each link M[i] @ inv(M[i-1]) is the true frame-to-frame motion.
    region = (0, frames.shape[1], 0, frames.shape[2])
    for i in range(1, len(frames)):
        link = middle.matrices[i] @ np.linalg.inv(middle.matrices[i - 1])
        true = gs[i] @ np.linalg.inv(gs[i - 1])
        assert _max_error(link[None], (true / true[2, 2])[None], region, step=16)[0] < TOL


@pytest.mark.parametrize("sizes", [(100, 200), (130, None), (None, 140)])
def test_coarse_to_fine_scaling_is_exact(sizes):
    # Small working / refine sizes force downscaled levels (factors 4 and 2, 3, 3) on
    # a frame that they do not divide; a half-pixel slip in the level <-> full
    # coordinate maps would show as a bias of (factor - 1) / 2 pixels.
    frames, gs = _make_stack(301, 403, 4, seed=3)
    tf = estimate_transforms(frames, working_size=sizes[0], refine_size=sizes[1])
    err = _max_error(tf.matrices, _truth(gs, tf.reference), tf.valid_region)
    assert err.max() < TOL, err


def test_progress_and_each_frame_read_once(stack):
    frames, _ = stack
    reads = []

    def load(i):
        reads.append(i)
        return frames[i]

    shape, dtype = frames.shape[1:], frames.dtype
    lazy = da.stack([da.from_delayed(dask.delayed(load)(i), shape, dtype) for i in range(len(frames))])
    gen = iter_estimate_transforms(lazy, reference="last")
    steps = []
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        tf = stop.value
    n = len(frames)
    assert steps == [(i + 1, n) for i in range(n)]
    assert sorted(reads) == list(range(n))
    assert isinstance(tf, Transforms) and tf.reference == n - 1


# -- motion models and dtypes ---------------------------------------------------------------
def test_uint16_rgb_input(stack):
    frames, gs = stack
    rgb = np.stack([frames, frames**1.5, 1 - 0.7 * frames], axis=-1)
    data = np.round(rgb * 65535).astype(np.uint16)
    tf = estimate_transforms(data, reference="first")
    err = _max_error(tf.matrices, _truth(gs, 0), tf.valid_region)
    assert err.max() < TOL, err


def test_many_channels_use_first_principal_component(stack):
    frames, gs = stack
    channels = np.stack([frames, 1 - frames, frames**2, 0.5 * frames, np.sqrt(frames)], axis=-1)
    tf = estimate_transforms((channels * 255).astype(np.uint8), reference="middle")
    err = _max_error(tf.matrices, _truth(gs, tf.reference), tf.valid_region)
    assert err.max() < 2 * TOL, err  # 8-bit quantisation of the channels


def test_homography_recovers_perspective():
    frames, gs = _make_stack(256, 320, 5, perspective=0.02, seed=1)
    tf = estimate_transforms(frames, motion="homography")
    assert tf.motion == "homography"
    err = _max_error(tf.matrices, _truth(gs, tf.reference), tf.valid_region)
    assert err.max() < TOL, err
    assert np.abs(tf.matrices[0, 2, :2]).max() > 0  # perspective terms were estimated
    affine = estimate_transforms(frames, motion="affine")
    assert _max_error(affine.matrices, _truth(gs, tf.reference), affine.valid_region).max() > err.max()


@pytest.mark.parametrize("motion", ["translation", "euclidean"])
def test_constrained_models(motion):
    frames, gs = _make_stack(256, 320, 4, mag=0.0, rot=0.0 if motion == "translation" else 0.5, seed=2)
    tf = estimate_transforms(frames, motion=motion)
    err = _max_error(tf.matrices, _truth(gs, tf.reference), tf.valid_region)
    assert err.max() < TOL, err
    lin = tf.matrices[:, :2, :2]
    if motion == "translation":
        np.testing.assert_allclose(lin, np.broadcast_to(np.eye(2), lin.shape), atol=1e-12)
    else:  # rotations: orthonormal linear parts
        np.testing.assert_allclose(lin @ lin.transpose(0, 2, 1), np.broadcast_to(np.eye(2), lin.shape), atol=1e-4)
    np.testing.assert_array_equal(tf.matrices[:, 2], np.broadcast_to([0, 0, 1], (len(frames), 3)))


# -- fallbacks ------------------------------------------------------------------------------
def test_blank_frame_falls_back_with_a_warning(stack):
    frames, gs = stack
    data = frames.copy()
    data[3] = 0.5  # a constant frame: nothing to register
    with pytest.warns(RegistrationWarning, match="frame 3"):
        tf = estimate_transforms(data, reference="first")
    assert tf.status[3] == "identity"
    assert tf.status[:3] == ["reference", "ecc", "ecc"] and tf.status[4] == "ecc"
    np.testing.assert_allclose(tf.matrices[3], tf.matrices[2])  # assumed not to move
    # The frame after the blank one is registered across the gap, to frame 2.
    keep = [0, 1, 2, 4]
    err = _max_error(tf.matrices[keep], _truth(gs, 0)[keep], tf.valid_region)
    assert err.max() < TOL, err


def test_ecc_failure_falls_back_to_phase_correlation():
    frames, gs = _make_stack(256, 320, 4, mag=0.0, rot=0.0, shift=6.0, seed=4)
    # An unreachable correlation makes every ECC result a failure.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tf = estimate_transforms(frames, reference="first", min_correlation=1.01)
    assert len([w for w in caught if issubclass(w.category, RegistrationWarning)]) == 3
    assert "phase correlation" in str(caught[0].message)
    assert tf.status == ["reference", "phase", "phase", "phase"]
    assert all(math.isnan(s) for s in tf.scores)
    np.testing.assert_array_equal(tf.matrices[:, :2, :2], np.broadcast_to(np.eye(2), (4, 2, 2)))
    err = _max_error(tf.matrices, _truth(gs, 0), tf.valid_region)
    assert err.max() < 1.0, err  # phase correlation is coarser than ECC


def test_status_is_the_worst_link_between_frame_and_reference(stack):
    frames, _ = stack
    data = frames.copy()
    data[1] = 0.0
    with pytest.warns(RegistrationWarning):
        tf = estimate_transforms(data, reference="last")
    # Frame 1 is tied to the chain by an identity link; frame 0 through frame 2
    # (the blank frame is skipped as a template), so its chain is all ECC.
    assert tf.status == ["ecc", "identity", "ecc", "ecc", "reference"]


def test_single_frame_and_bad_arguments(stack):
    frames, _ = stack
    tf = estimate_transforms(frames[:1])
    assert tf.status == ["reference"] and np.array_equal(tf.matrices, np.eye(3)[None])
    with pytest.raises(ValueError, match="motion"):
        estimate_transforms(frames, motion="elastic")
    with pytest.raises(ValueError):
        estimate_transforms(frames[0])


# -- the Transforms object --------------------------------------------------------------------
def test_json_round_trip(tmp_path, middle):
    tf = middle
    back = Transforms.from_json(tf.to_json())
    np.testing.assert_array_equal(back.matrices, tf.matrices)  # bit-exact
    assert (back.motion, back.reference, back.status, back.frame_shape) == (
        tf.motion,
        tf.reference,
        tf.status,
        tf.frame_shape,
    )
    assert math.isnan(back.scores[0]) and back.scores[1:] == tf.scores[1:]
    doc = json.loads(tf.to_json())  # strict JSON: NaN written as null
    assert doc["scores"][0] is None and len(doc["matrices"]) == len(tf)

    path = tf.save(tmp_path / "sub" / "stack.transforms.json")
    assert [p.name for p in path.parent.iterdir()] == ["stack.transforms.json"]  # no temp files left
    loaded = Transforms.load(path)
    np.testing.assert_array_equal(loaded.matrices, tf.matrices)
    assert loaded.valid_region == tf.valid_region
    tf.save(path)  # overwriting is fine


def test_transforms_validation():
    with pytest.raises(ValueError):
        Transforms(np.zeros((2, 2, 3)))
    with pytest.raises(ValueError):
        Transforms(np.repeat(np.eye(3)[None], 2, 0), reference=2)
    with pytest.raises(ValueError):
        Transforms.from_json("{}")
    ident = Transforms.identity(3, (40, 60), reference=1)
    assert ident.status == ["given", "reference", "given"]
    assert ident.valid_region == (0, 40, 0, 60)


def test_valid_region_shrinks_and_is_covered_by_every_frame(stack, middle):
    frames, _ = stack
    h, w = frames.shape[1:3]
    y0, y1, x0, x1 = middle.valid_region
    assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
    assert (y1 - y0) < h and (x1 - x0) < w  # magnification and shake crop the frame
    assert (y1 - y0) > 0.8 * h and (x1 - x0) > 0.8 * w  # ...but only by that much
    ys, xs = np.mgrid[y0:y1, x0:x1]
    border = (ys == y0) | (ys == y1 - 1) | (xs == x0) | (xs == x1 - 1)
    pts = np.c_[xs[border], ys[border]].astype(np.float64)
    for m in middle.matrices:
        q = _map(m, pts)
        assert q[:, 0].min() >= -1e-6 and q[:, 0].max() <= w - 1 + 1e-6
        assert q[:, 1].min() >= -1e-6 and q[:, 1].max() <= h - 1 + 1e-6
    # A pure 10-pixel shift to the right crops exactly 10 columns.
    shift = np.repeat(np.eye(3)[None], 2, 0)
    shift[1, 0, 2] = 10.0
    assert Transforms(shift, frame_shape=(50, 80)).valid_region == (0, 50, 0, 70)
    # Magnifying by 2% about the centre crops about 1% on each side.
    zoom = np.repeat(np.eye(3)[None], 2, 0)
    c = np.array([(w - 1) / 2, (h - 1) / 2])
    zoom[1, :2, :2] = 1 / 1.02 * np.eye(2)  # reference -> frame: frame 1 sees more
    zoom[1, :2, 2] = c - zoom[1, :2, :2] @ c
    assert Transforms(zoom, frame_shape=(h, w)).valid_region == (0, h, 0, w)
    zoom[1, :2, :2] = 1.02 * np.eye(2)
    zoom[1, :2, 2] = c - zoom[1, :2, :2] @ c
    zy0, zy1, zx0, zx1 = Transforms(zoom, frame_shape=(h, w)).valid_region
    assert abs(zx0 - 0.01 * w) <= 1 and abs((w - zx1) - 0.01 * w) <= 1 and abs(zy0 - 0.01 * h) <= 1


# -- applying ------------------------------------------------------------------------------
def test_apply_aligns_another_channel(stack, middle):
    frames, gs = stack
    h, w = frames.shape[1:3]
    # A second channel (another scene, no blur) seen through the same motion.
    margin = 48
    other = _scene(h + 2 * margin, w + 2 * margin, seed=11)
    chan = np.stack([cv2.warpPerspective(other, g, (w, h), flags=cv2.INTER_CUBIC) for g in gs])
    rgb5 = (np.stack([chan] * 5, axis=-1) * 255).round().astype(np.uint8)
    out = apply_transforms(da.from_array(rgb5, chunks=(2, 64, 64, 5)), middle)
    assert isinstance(out, da.Array)
    assert out.shape == rgb5.shape and out.dtype == np.uint8
    assert out.chunks[0] == (1,) * len(frames) and out.numblocks[1:] == (1, 1, 1)
    res = out.compute()
    y0, y1, x0, x1 = middle.valid_region
    ref = res[middle.reference, y0:y1, x0:x1].astype(np.float32)
    np.testing.assert_array_equal(res[middle.reference], rgb5[middle.reference])
    for i in range(len(frames)):
        diff = np.abs(res[i, y0:y1, x0:x1].astype(np.float32) - ref)
        before = np.abs(rgb5[i, y0:y1, x0:x1].astype(np.float32) - ref)
        assert diff.mean() < 2.0 and diff.mean() < 0.2 * before.mean() + 1e-3, (i, diff.mean(), before.mean())
    # All channels were warped alike (OpenCV does at most 4 at a time).
    np.testing.assert_array_equal(res[..., 4], res[..., 0])


def test_apply_gray_float_and_borders(stack, middle):
    frames, _ = stack
    out = apply_transforms(frames, middle).compute()  # (Z, Y, X) numpy in
    assert out.shape == frames.shape and out.dtype == np.float32
    assert out.min() >= frames.min() - 1e-6  # replicated edges, no black borders
    zeros = apply_transforms(frames, middle, border="constant").compute()
    assert (zeros[-1] == 0).sum() > 100  # the last frame is magnified: its edges fall inside
    with pytest.raises(ValueError, match="interpolation"):
        apply_transforms(frames, middle, interpolation="bicubic-ish")


def test_apply_refuses_other_frame_shapes(stack, middle):
    frames, _ = stack
    with pytest.raises(ValueError, match="frames"):
        apply_transforms(frames[:, :-1], middle)
    with pytest.raises(ValueError, match="frames"):
        apply_transforms(frames[:-1], middle)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, np.bool_])
def test_warp_frame_keeps_dtype(dtype):
    rng = np.random.default_rng(0)
    img = rng.random((30, 40, 6))
    if dtype == np.bool_:
        frame = img > 0.5
    elif np.dtype(dtype).kind in "ui":
        frame = (img * np.iinfo(dtype).max * (0.999 if dtype == np.int32 else 1)).astype(dtype)
    else:
        frame = img.astype(dtype)
    m = np.array([[1.01, 0.0, 1.3], [0.0, 0.99, -0.7], [0, 0, 1]])
    out = warp_frame(frame, m)
    assert out.shape == frame.shape and out.dtype == frame.dtype
    ident = warp_frame(frame, np.eye(3))
    np.testing.assert_array_equal(ident, frame)
    # An integer shift moves pixels exactly.
    sh = warp_frame(frame[..., 0], np.array([[1, 0, 2.0], [0, 1, 1.0], [0, 0, 1]]), interpolation="nearest")
    np.testing.assert_array_equal(sh[:-1, :-2], frame[1:, 2:, 0])


def test_warp_frame_inverts_the_synthetic_motion(stack, middle):
    frames, gs = stack
    ref = middle.reference
    true = _truth(gs, ref)
    y0, y1, x0, x1 = middle.valid_region
    for i in (0, len(frames) - 1):
        back = warp_frame(frames[i], true[i], interpolation="cubic")
        # The frames differ in defocus; compare after blurring both alike.
        a = cv2.GaussianBlur(back, (0, 0), 3)[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8]
        b = cv2.GaussianBlur(frames[ref], (0, 0), 3)[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8]
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.97


def test_cubic_resampling_keeps_fine_detail_and_stays_in_range():
    from napari_focusdeep.registration import warp_frame

    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.random((96, 96), dtype=np.float32), (0, 0), 0.8)
    there = np.array([[1, 0, 0.5], [0, 1, 0.5], [0, 0, 1.0]])
    back = np.linalg.inv(there)
    err = {}
    for interp in ("linear", "cubic"):
        out = warp_frame(warp_frame(img, there, interpolation=interp), back, interpolation=interp)
        err[interp] = float(np.abs(out - img)[8:-8, 8:-8].mean())
        assert img.min() <= out.min() and out.max() <= img.max()
    assert err["cubic"] < 0.6 * err["linear"], err


def test_fuse_refuses_an_unknown_interpolation_before_registering():
    from napari_focusdeep.fusion import fuse

    with pytest.raises(ValueError, match="interpolation"):
        fuse(np.zeros((3, 32, 32), np.float32), interpolation="bicubic")
