"""Property-based tests of the fusion core and a fuzz run of the readers (hypothesis).

Fusion: over random shapes (1x1 and 1xN included), dtypes, channel counts and
frame counts, every classical method returns an image of the input's shape and
dtype whose values lie within the input's range, and a finite depth map.

Readers: small valid TIFF (and PNG/JPEG) files with random byte mutations,
truncations and insertions. What is acceptable: the file opens and decodes, or
``read_stack``/computing the data raises a ``ValueError`` or ``OSError`` whose
message names the file. Anything else (another exception type, a message that
does not say which file, a crash of the process) fails the test.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from napari_focusdeep.fusion import fuse
from napari_focusdeep.io import read_stack
from napari_focusdeep.stack import Stack

METHODS = ["pyramid", "laplacian", "wavelet"]
DTYPES = [np.uint8, np.uint16, np.float32]

# bounded: every example is a small stack, and there are few of them
FUSION = settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow])
READERS = settings(max_examples=200, deadline=None, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# -- fusion core -----------------------------------------------------------------------------
def _frames(n: int, h: int, w: int, c: int, dtype, seed: int, *, scale: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, h, w) + ((c,) if c > 1 else ())
    if np.dtype(dtype).kind == "f":
        # any float range, negative values included (e.g. background-subtracted data)
        return ((rng.random(shape) - 0.3) * scale).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


@FUSION
@given(
    method=st.sampled_from(METHODS),
    n=st.integers(1, 6),
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    c=st.integers(1, 5),
    dtype=st.sampled_from(DTYPES),
    seed=st.integers(0, 2**31),
    scale=st.sampled_from([1.0, 1e-3, 4096.0]),
)
def test_fusion_shape_dtype_and_range(method, n, h, w, c, dtype, seed, scale):
    frames = _frames(n, h, w, c, dtype, seed, scale=scale)
    stack = Stack.from_array(frames, axes="ZYXC" if c > 1 else "ZYX")
    res = fuse(stack, method=method, register=False)
    assert res.image.shape == frames.shape[1:]
    assert res.image.dtype == frames.dtype
    assert np.isfinite(res.image).all()
    # never a value no frame holds: pyramid/wavelet overshoot is clipped to the input range
    assert frames.min() <= res.image.min() and res.image.max() <= frames.max()
    assert res.depth.shape == (h, w) and res.depth.dtype == np.float32
    assert np.isfinite(res.depth).all()
    assert res.depth.min() >= 0 and res.depth.max() <= n - 1
    if n == 1:  # one frame is returned as it is (float maths may move the last bit)
        if frames.dtype.kind == "f":
            np.testing.assert_allclose(res.image, frames[0], rtol=1e-6, atol=1e-6 * scale)
        else:
            np.testing.assert_array_equal(res.image, frames[0])


@FUSION
@given(
    method=st.sampled_from(METHODS),
    n=st.integers(2, 5),
    h=st.integers(1, 24),
    w=st.integers(1, 24),
    c=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31),
)
def test_fusion_with_registration_never_raises_on_small_frames(method, n, h, w, c, seed):
    frames = _frames(n, h, w, c, np.uint8, seed, scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # registration of noise falls back, with a warning
        res = fuse(frames, method=method)
    assert res.image.shape == frames.shape[1:] and res.image.dtype == np.uint8
    assert frames.min() <= res.image.min() and res.image.max() <= frames.max()


# -- reader fuzz -----------------------------------------------------------------------------
def _tiff_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (3, 8, 10), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 8, 10, 3), dtype=np.uint8)
    seeds = []
    for data, kwargs in [
        (gray, {}),
        (gray, {"compression": "zlib"}),
        (gray, {"imagej": True}),
        (gray.astype(np.uint16) * 250, {"ome": True, "metadata": {"axes": "ZYX"}}),
        (rgb, {"photometric": "rgb"}),
        (gray.astype(np.float32) / 255, {"compression": "zlib", "predictor": True}),
    ]:
        buf = io.BytesIO()
        tifffile.imwrite(buf, data, **kwargs)
        seeds.append(buf.getvalue())
    return seeds


def _image_seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    img = cv2.GaussianBlur(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8), (3, 3), 0)
    return {ext: cv2.imencode(ext, img)[1].tobytes() for ext in (".png", ".jpg")}


TIFF_SEEDS = _tiff_seeds()
IMAGE_SEEDS = _image_seeds()

# one mutation: (where, as a fraction of the length; what; a byte value or run length)
mutation = st.tuples(st.floats(0, 1, exclude_max=True), st.sampled_from(["set", "truncate", "insert", "zero"]),
                     st.integers(0, 255))


def _mutate(data: bytes, mutations) -> bytes:
    buf = bytearray(data)
    for where, what, value in mutations:
        if not buf:
            break
        pos = int(where * len(buf))
        if what == "set":
            buf[pos] = value
        elif what == "truncate":
            del buf[pos:]
        elif what == "insert":
            buf[pos:pos] = bytes([value]) * (1 + value % 8)
        else:  # a run of zeros, as a bad sector or an interrupted copy leaves
            buf[pos : pos + 1 + value] = bytes(len(buf[pos : pos + 1 + value]))
    return bytes(buf)


def _read_everything(path: Path) -> None:
    """Open the file and decode every pixel; the only errors allowed name the file."""
    claimed = 0
    try:
        stack = read_stack(path)
        claimed = stack.data.nbytes
        stack.data.compute()
    except (ValueError, OSError) as exc:
        message = str(exc)
        assert path.name in message, f"{type(exc).__name__} does not name the file: {message!r}"
        assert "\n" not in message.strip(), message
        return
    # a damaged size field may promise a huge image; a few hundred bytes cannot hold one
    # (the seeds are at most zlib-compressed, about 1000:1), so decoding it must fail
    assert claimed < 2**26, f"{path.name}: a {claimed}-byte image decoded from {path.stat().st_size} bytes"


@READERS
@given(seed=st.sampled_from(range(len(TIFF_SEEDS))), mutations=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_tiffs_fail_cleanly(tmp_path_factory, seed, mutations):
    path = tmp_path_factory.mktemp("fuzz") / "fuzzed.tif"
    path.write_bytes(_mutate(TIFF_SEEDS[seed], mutations))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _read_everything(path)


@settings(READERS, max_examples=100)
@given(ext=st.sampled_from(sorted(IMAGE_SEEDS)), mutations=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_png_and_jpeg_frames_fail_cleanly(tmp_path_factory, ext, mutations):
    path = tmp_path_factory.mktemp("fuzz") / f"fuzzed{ext}"
    path.write_bytes(_mutate(IMAGE_SEEDS[ext], mutations))
    _read_everything(path)


def test_the_seeds_are_valid():
    """Unmutated, every seed reads: the fuzz starts from files the readers accept."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        for i, data in enumerate(TIFF_SEEDS):
            path = Path(folder) / f"seed{i}.tif"
            path.write_bytes(data)
            assert read_stack(path).data.compute().size > 0
        for ext, data in IMAGE_SEEDS.items():
            path = Path(folder) / f"seed{ext}"
            path.write_bytes(data)
            assert read_stack(path).frame(0).shape == (12, 16, 3)
