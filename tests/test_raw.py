"""Camera raw: DNG fixtures written with pidng from synthetic mosaics, read back with
rawpy; Bayer packing and registration; unprocess/process; the raw CLI path."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

rawpy = pytest.importorskip("rawpy")
pytest.importorskip("pidng")

from napari_focusdeep.io import read_stack  # noqa: E402
from napari_focusdeep.io.bayer import (  # noqa: E402
    apply_flip,
    estimate_transforms_packed,
    full_to_half,
    mosaic,
    pack,
    plane_matrices,
    rggb_origin,
    unpack,
    warp_packed,
)
from napari_focusdeep.io.raw import read_raw, read_raw_header  # noqa: E402
from napari_focusdeep.training.unprocess import (  # noqa: E402
    SRGB_TO_XYZ,
    CameraParams,
    add_raw_noise,
    linear_to_srgb,
    process,
    random_camera,
    srgb_to_linear,
    unprocess,
    unprocess_burst,
)

_INDEX = {"R": 0, "G": 1, "B": 2}
_DEFAULT_XYZ_TO_CAM = np.array([[1.9549, -0.7877, -0.2582], [-0.5724, 1.0121, 0.1917], [-0.1267, -0.0110, 0.6621]])


def write_dng(
    path: Path,
    cam: np.ndarray,
    cfa: str = "RGGB",
    *,
    orientation: int = 1,
    black: int | tuple[int, int, int, int] = 64,
    white: int = 4095,
    neutral: tuple[float, float, float] = (0.5, 1.0, 2 / 3),
    xyz_to_cam: np.ndarray = _DEFAULT_XYZ_TO_CAM,
    subject_distance: float | None = None,
) -> Path:
    """Mosaic a linear camera-RGB image ``(H, W, 3)`` in [0, 1] through ``cfa`` (sensor
    orientation) and write it as a 16-bit uncompressed DNG; ``black`` may give one
    level per 2x2 CFA position (row order)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CalibrationIlluminant, DNGVersion, PhotometricInterpretation

    h, w, _ = cam.shape
    yy, xx = np.mgrid[0:h, 0:w]
    chan = np.array([_INDEX[c] for c in cfa]).reshape(2, 2)[yy % 2, xx % 2]
    values = np.take_along_axis(cam, chan[..., None], axis=-1)[..., 0]
    black_map = np.asarray(black, np.float64).reshape(-1)[(yy % 2) * 2 + xx % 2] if np.ndim(black) else black
    mosaic_u16 = np.rint(black_map + np.clip(values, 0, 1) * (white - black_map)).astype(np.uint16)
    t = DNGTags()
    t.set(Tag.ImageWidth, w)
    t.set(Tag.ImageLength, h)
    t.set(Tag.TileWidth, w)
    t.set(Tag.TileLength, h)
    t.set(Tag.Orientation, orientation)
    t.set(Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array)
    t.set(Tag.SamplesPerPixel, 1)
    t.set(Tag.BitsPerSample, 16)
    t.set(Tag.CFARepeatPatternDim, [2, 2])
    t.set(Tag.CFAPattern, [_INDEX[c] for c in cfa])
    if np.ndim(black):
        t.set(Tag.BlackLevelRepeatDim, [2, 2])
        t.set(Tag.BlackLevel, [int(b) for b in black])
    else:
        t.set(Tag.BlackLevel, black)
    t.set(Tag.WhiteLevel, white)
    t.set(Tag.ColorMatrix1, [[int(round(v * 10000)), 10000] for v in np.asarray(xyz_to_cam).ravel()])
    t.set(Tag.CalibrationIlluminant1, CalibrationIlluminant.D65)
    t.set(Tag.AsShotNeutral, [[int(round(v * 1_000_000)), 1_000_000] for v in neutral])
    t.set(Tag.Make, "Synthetic")
    t.set(Tag.Model, "Bayer " + cfa)
    t.set(Tag.DNGVersion, DNGVersion.V1_4)
    t.set(Tag.DNGBackwardVersion, DNGVersion.V1_2)
    if subject_distance is not None:
        t.set(Tag.SubjectDistance, [[int(round(subject_distance * 1000)), 1000]])
    writer = RAW2DNG()
    writer.options(t, path=str(path.parent), compress=False)
    writer.convert(mosaic_u16, filename=path.stem)
    return path.with_suffix(".dng")


def _exif_orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """Display an image stored with EXIF ``orientation`` (1, 3, 6, 8)."""
    return {1: img, 3: img[::-1, ::-1], 6: np.rot90(img, -1), 8: np.rot90(img, 1)}[orientation]


def _cam_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    # every pixel and channel different, so a mix-up of colours or positions shows
    return np.random.default_rng(seed).uniform(0.02, 0.95, (h, w, 3)).astype(np.float32)


# -- reading --------------------------------------------------------------------------------
@pytest.mark.parametrize("cfa", ["RGGB", "BGGR", "GRBG", "GBRG"])
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_bayer_planes_normalise_cfa_levels_and_orientation(tmp_path: Path, cfa: str, orientation: int) -> None:
    h, w = 32, 48  # LibRaw refuses frames under 22 pixels; DNG tiles are multiples of 16
    black, white = 128, 4000
    cam = _cam_image(h, w)
    path = write_dng(tmp_path / "f.dng", cam, cfa, orientation=orientation, black=black, white=white)
    stack = read_raw(path, output="bayer")
    planes = stack.data.compute()[0]

    shown = _exif_orient(cam, orientation)  # the displayed camera image
    yy, xx = np.mgrid[0:h, 0:w]
    letters = np.array(list(cfa)).reshape(2, 2)[yy % 2, xx % 2]  # the sensor's filter per pixel
    shown_cfa = _exif_orient(letters, orientation)[:2, :2]
    oy, ox = rggb_origin(np.vectorize(_INDEX.get)(shown_cfa), b"RGB")
    hh, ww = (shown.shape[0] - oy) // 2 * 2, (shown.shape[1] - ox) // 2 * 2
    expected = mosaic(shown[oy : oy + hh, ox : ox + ww])
    quant = 1.0 / (white - black)
    assert planes.shape == (hh // 2, ww // 2, 4)
    assert planes.dtype == np.float32
    np.testing.assert_allclose(planes, expected, atol=0.51 * quant + 1e-6)
    md = stack.metadata
    assert md["cfa_pattern"] == cfa
    assert md["bayer_crop"] == [oy, ox]
    assert md["black_level"] == [black] * 4 and md["white_level"] == white
    assert md["make"] == "Synthetic"

    # the demosaiced stack is on the same grid: its size is the packed size doubled
    rgb = read_raw(path, gamma="linear")
    assert rgb.data.shape == (1, hh, ww, 3) and rgb.dtype == np.uint16


def test_black_level_per_cfa_position_follows_the_planes(tmp_path: Path) -> None:
    h, w, white = 32, 48, 4000
    blacks = (100, 200, 300, 400)  # per sensor position (0,0), (0,1), (1,0), (1,1)
    cam = _cam_image(h, w, seed=2)
    path = write_dng(tmp_path / "f.dng", cam, "GRBG", orientation=6, black=blacks, white=white)
    stack = read_raw(path, output="bayer")
    yy, xx = np.mgrid[0:h, 0:w]
    shown_black = _exif_orient(np.array(blacks)[(yy % 2) * 2 + xx % 2], 6)
    oy, ox = stack.metadata["bayer_crop"]
    expected_black = [float(shown_black[oy + dy, ox + dx]) for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1))]
    assert stack.metadata["black_level"] == expected_black
    shown = _exif_orient(cam, 6)
    hh, ww = (shown.shape[0] - oy) // 2 * 2, (shown.shape[1] - ox) // 2 * 2
    expected = mosaic(shown[oy : oy + hh, ox : ox + ww])
    np.testing.assert_allclose(stack.data.compute()[0], expected, atol=0.51 / (white - 400) + 1e-6)


def test_levels_clip_and_white_normalise(tmp_path: Path) -> None:
    cam = np.zeros((32, 32, 3), np.float32)
    cam[:16] = 1.0  # top half saturated
    path = write_dng(tmp_path / "f.dng", cam, black=200, white=1000)
    planes = read_raw(path, output="bayer").data.compute()[0]
    np.testing.assert_allclose(planes[:8], 1.0)
    np.testing.assert_allclose(planes[8:], 0.0)


def test_colour_metadata_reproduces_libraw(tmp_path: Path) -> None:
    """White balance + camera matrix from the metadata applied to the packed planes
    give LibRaw's own linear sRGB rendering (a flat patch: no demosaicking error)."""
    colour = np.array([0.21, 0.43, 0.30], np.float32)
    cam = np.broadcast_to(colour, (32, 32, 3)).copy()
    path = write_dng(tmp_path / "f.dng", cam, "GRBG", neutral=(0.45, 1.0, 0.7))
    planes = read_raw(path, output="bayer").data.compute()[0]
    stack = read_raw(path, gamma="linear")
    libraw = stack.data.compute()[0].astype(np.float64) / 65535
    camera = CameraParams.from_metadata(stack.metadata)
    np.testing.assert_allclose(camera.wb, [1 / 0.45, 1.0, 1 / 0.7], rtol=1e-5)
    flat = np.stack([planes[..., 0], planes[..., 1:3].mean(-1), planes[..., 3]], -1)
    ours = process(flat, camera, gamma="linear")
    np.testing.assert_allclose(ours[3:-3, 3:-3], libraw[6:-6:2, 6:-6:2], atol=2 / 65535)
    # the sRGB stack is the exact sRGB curve of the linear one
    srgb = read_raw(path).data.compute()[0].astype(np.float64) / 65535
    np.testing.assert_allclose(srgb, linear_to_srgb(libraw), atol=1.5 / 65535)


def test_folder_ordered_by_focus_distance(tmp_path: Path) -> None:
    folder = tmp_path / "burst"
    folder.mkdir()
    cam = _cam_image(32, 32)
    for name, dist in (("a", 2.0), ("b", 0.5), ("c", 1.25)):
        write_dng(folder / f"{name}.dng", cam, subject_distance=dist)
    (folder / "a.jpg").write_bytes(b"a RAW+JPEG preview is ignored")
    stack = read_stack(folder)
    assert stack.metadata["reader"] == "raw"
    assert [p.stem for p in stack.paths] == ["b", "c", "a"]
    assert stack.metadata["focus_distance_m"] == [0.5, 1.25, 2.0]
    assert stack.metadata["frame_order"].startswith("focus distance")
    assert [p.stem for p in read_raw(folder, order="name").paths] == ["a", "b", "c"]
    # frames decoded one at a time equal the whole stack decoded at once (rawpy's
    # arrays are views of LibRaw buffers that die with the file: they must be copied)
    packed = read_raw(folder, output="bayer")
    whole = packed.data.compute()
    for z in (2, 0, 1):
        np.testing.assert_array_equal(packed.data[z].compute(), whole[z])
    # one frame without a distance: file-name order, and order="focus" refuses
    write_dng(folder / "d.dng", cam)
    assert [p.stem for p in read_raw(folder).paths] == ["a", "b", "c", "d"]
    with pytest.raises(ValueError, match="focus distance on every frame"):
        read_raw(folder, order="focus")


def test_raw_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "broken.nef"
    bad.write_bytes(b"not a raw file at all" * 10)
    with pytest.raises(ValueError, match="broken.nef"):
        read_stack(bad)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no camera raw files"):
        read_raw(empty)
    a = write_dng(tmp_path / "a.dng", _cam_image(32, 32))
    b = write_dng(tmp_path / "b.dng", _cam_image(32, 48))
    with pytest.raises(ValueError, match="b.dng' is 48x32"):
        read_raw([a, b])


def test_header_reads_no_pixels(tmp_path: Path) -> None:
    path = write_dng(tmp_path / "f.dng", _cam_image(32, 48), "BGGR", orientation=6, subject_distance=0.8)
    head = read_raw_header(path)
    assert (head.height, head.width, head.flip) == (48, 32, 6)
    assert head.cfa == "BGGR" and head.focus_distance_m == pytest.approx(0.8)
    assert head.camera_wb == pytest.approx((2.0, 1.0, 1.5), rel=1e-5)


# -- Bayer geometry ------------------------------------------------------------------------
def test_pack_unpack_and_flip() -> None:
    m = np.arange(48).reshape(6, 8)
    assert np.array_equal(unpack(pack(m)), m)
    for flip, ref in ((3, m[::-1, ::-1]), (6, np.rot90(m, -1)), (5, np.rot90(m, 1))):
        assert np.array_equal(apply_flip(m, flip), ref)
    with pytest.raises(ValueError, match="not a 2x2 Bayer"):
        rggb_origin(np.zeros((6, 6), int), b"RGBG")


@pytest.mark.parametrize("flip", range(8))
@pytest.mark.parametrize("shape", [(6, 8), (7, 8), (6, 9), (7, 9)])
def test_oriented_pattern_matches_flipping_the_whole_filter_map(flip: int, shape: tuple[int, int]) -> None:
    """The header's analytic pattern of the displayed frame equals flipping the full
    per-pixel colour map, odd sizes included (DNG fixtures cannot have odd sizes)."""
    from napari_focusdeep.io.raw import _oriented_pattern

    pattern = np.array([[1, 2], [0, 3]])
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    full = pattern[yy % 2, xx % 2]
    assert np.array_equal(_oriented_pattern(pattern, flip, *shape), apply_flip(full, flip)[:2, :2])


def test_plane_matrices_halve_translations() -> None:
    t = np.array([[1, 0, 3.4], [0, 1, -1.2], [0, 0, 1.0]])
    for m in plane_matrices(t):
        np.testing.assert_allclose(m, [[1, 0, 1.7], [0, 1, -0.6], [0, 0, 1]], atol=1e-12)


def _affine(scale: float, angle_deg: float, tx: float, ty: float, centre: tuple[float, float]) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = scale * math.cos(a), scale * math.sin(a)
    cx, cy = centre
    return np.array([[c, -s, cx - c * cx + s * cy + tx], [s, c, cy - s * cx - c * cy + ty], [0, 0, 1.0]])


def _register_then_pack(frame: np.ndarray, m: np.ndarray) -> np.ndarray:
    from napari_focusdeep.registration import warp_frame

    return mosaic(warp_frame(frame, m))


def test_register_then_pack_equals_pack_then_register_exactly_on_ramps() -> None:
    """On a scene linear in x and y, bilinear interpolation is exact, so any difference
    is geometry: the per-plane matrices keep Bayer phase, a single block-centred
    half-resolution matrix is off by (L - I)(d_k - 1/2)/2."""
    from napari_focusdeep.registration import warp_frame

    h, w = 64, 80
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frame = np.stack([0.2 + 0.006 * xx, 0.1 + 0.008 * yy, 0.3 + 0.003 * (xx + yy)], -1).astype(np.float32)
    m = _affine(1.06, 2.0, 1.7, -2.3, ((w - 1) / 2, (h - 1) / 2))
    ref = _register_then_pack(frame, m)
    ours = warp_packed(mosaic(frame), m)
    half = full_to_half(m)
    single = np.stack([warp_frame(mosaic(frame)[..., k], half) for k in range(4)], -1)
    inner = (slice(8, -8), slice(8, -8))
    err_ours = np.abs(ours - ref)[inner].max()
    err_single = np.abs(single - ref)[inner].max()
    assert err_ours < 2e-5
    assert err_single > 10 * err_ours and err_single > 1e-4


def test_register_then_pack_equals_pack_then_register_on_texture() -> None:
    import cv2

    from napari_focusdeep.training.simulate import synthetic_scene

    sharp, _ = synthetic_scene((96, 128), seed=3)
    frame = cv2.GaussianBlur(sharp, (0, 0), 1.2)  # camera optics: no detail at the Nyquist limit
    m = _affine(1.03, -1.5, -2.2, 1.4, (63.5, 47.5))
    ref = _register_then_pack(frame, m)
    ours = warp_packed(mosaic(frame), m)
    inner = (slice(6, -6), slice(6, -6))
    err = np.abs(ours - ref)[inner].mean()
    # ignoring Bayer geometry altogether (the full-resolution matrix on the planes)
    wrong = np.stack([cv2.warpAffine(mosaic(frame)[..., k], m[:2], (64, 48), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                     borderMode=cv2.BORDER_REPLICATE) for k in range(4)], -1)
    assert err < 0.01
    assert np.abs(wrong - ref)[inner].mean() > 5 * err


def test_luminance_registration_recovers_motion() -> None:
    from napari_focusdeep.training.simulate import synthetic_scene

    import cv2

    sharp, _ = synthetic_scene((128, 160), seed=1)
    sharp = cv2.GaussianBlur(sharp, (0, 0), 0.8)
    true = [_affine(1.0 + 0.01 * (i - 1), 0.3 * (i - 1), 1.5 * (i - 1), -1.1 * (i - 1), (79.5, 63.5)) for i in range(3)]
    # frame i shows the scene so that frame(M p) = scene(p)
    frames = [cv2.warpAffine(sharp, m[:2], (160, 128), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT) for m in true]
    packed = np.stack([mosaic(f) for f in frames])
    tf = estimate_transforms_packed(packed, reference=1)
    assert tf.frame_shape == (128, 160)
    corners = np.array([[20.0, 20.0], [140.0, 20.0], [140.0, 108.0], [20.0, 108.0]])
    for i in range(3):
        err = np.abs(tf.map_points(i, corners) - np.c_[corners, np.ones(4)] @ true[i][:2].T).max()
        assert err < 0.25, (i, err)


# -- unprocess / process -------------------------------------------------------------------
def test_unprocess_process_round_trip() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0.15, 0.75, (32, 48, 3)).astype(np.float32)
    img = 0.5 * img + 0.5 * img.mean(-1, keepdims=True)  # moderately saturated: in every camera's gamut
    for seed in range(4):
        cam = random_camera(seed)
        raw_rgb = unprocess(img, cam, mosaic=False)
        assert raw_rgb.min() >= 0 and raw_rgb.max() <= 1
        np.testing.assert_allclose(process(raw_rgb, cam), img, atol=2e-4)
        packed = unprocess(img, cam)
        assert packed.shape == (16, 24, 4)
        np.testing.assert_array_equal(packed, mosaic(raw_rgb))
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(np.linspace(0, 1, 101))), np.linspace(0, 1, 101), atol=1e-6)


def test_random_camera_matches_brooks_ranges() -> None:
    for seed in range(20):
        cam = random_camera(seed)
        np.testing.assert_allclose(cam.rgb_to_cam.sum(axis=1), 1.0, atol=1e-9)  # white stays white
        red, blue = cam.wb[0] / cam.wb[1], cam.wb[2] / cam.wb[1]
        assert 1.9 <= red <= 2.4 and 1.5 <= blue <= 1.9


def test_highlights_stay_saturated() -> None:
    cam = random_camera(5)
    white = np.ones((4, 4, 3), np.float32)
    raw = unprocess(white, cam, mosaic=False)
    np.testing.assert_allclose(raw, 1.0, atol=1e-6)
    raw_unsafe = unprocess(white, cam, mosaic=False, safe_highlights=False)
    assert raw_unsafe.min() < 0.9  # the plain inverse gains would darken white


def test_raw_noise_is_shot_plus_read_in_linear_light() -> None:
    from napari_focusdeep.training.simulate import NoiseLevel

    level = NoiseLevel(shot=4e-3, read=1e-4)
    rng = np.random.default_rng(1)
    for x in (0.1, 0.5):
        flat = np.full((256, 256, 4), x, np.float32)
        noisy = add_raw_noise(flat, level, rng)
        assert noisy.mean() == pytest.approx(x, abs=2e-3)
        assert noisy.var() == pytest.approx(level.shot * x + level.read, rel=0.05)


def test_unprocess_burst_shares_camera_and_draws_noise_per_frame() -> None:
    from napari_focusdeep.training.simulate import sample_stack

    sim = sample_stack((32, 48), 3, noise=None, dtype=np.float32)
    burst = unprocess_burst(sim.frames, sim.sharp, noise="medium", seed=2)
    assert burst.frames.shape == (3, 16, 24, 4) and burst.target.shape == (32, 48, 3)
    clean = np.stack([unprocess(f, burst.camera) for f in sim.frames])
    noise = burst.frames - clean
    assert 0.005 < noise.std() < 0.1
    assert abs(np.corrcoef(noise[0].ravel(), noise[1].ravel())[0, 1]) < 0.05
    np.testing.assert_allclose(process(burst.target, burst.camera), sim.sharp, atol=0.02)


# -- fusing --------------------------------------------------------------------------------
def _raw_burst(folder: Path, *, n: int = 5, shape: tuple[int, int] = (96, 128)) -> tuple[np.ndarray, Path]:
    """A simulated focus bracket with breathing, written as DNGs through a known
    camera (exposure gain 1, so LibRaw's green-normalised white balance restores it)."""
    from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

    import cv2

    sharp, depth = synthetic_scene(shape, seed=4)
    # a lens resolves less than the sensor's Nyquist limit; without this, demosaicking
    # error (aliasing of the synthetic textures) dominates every comparison
    sharp = np.clip(cv2.GaussianBlur(sharp, (0, 0), 1.5), 0, 1)
    sim = simulate_stack(sharp, depth, n, breathing=0.02, max_blur=8.0, layers=8, seed=4)
    base = random_camera(7)
    camera = CameraParams(base.cam_to_rgb, base.wb / base.wb[1])
    xyz_to_cam = camera.rgb_to_cam @ np.linalg.inv(SRGB_TO_XYZ)
    folder.mkdir()
    for i, frame in enumerate(sim.frames):
        raw = unprocess(frame, camera, mosaic=False)
        write_dng(folder / f"IMG_{i + 1:04d}.dng", raw, "GBRG", neutral=tuple(1 / camera.wb), xyz_to_cam=xyz_to_cam)
    return sim.sharp, folder


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_cli_fuses_a_raw_folder(tmp_path: Path) -> None:
    import tifffile

    from napari_focusdeep.cli import main

    sharp, folder = _raw_burst(tmp_path / "burst")
    out, lin = tmp_path / "out.tif", tmp_path / "linear.tif"
    assert main(["fuse", str(folder), "-o", str(out), "--linear-output", str(lin)]) == 0
    image, linear = tifffile.imread(out), tifffile.imread(lin)
    assert image.dtype == np.uint16 and image.shape == (94, 128, 3)  # GBRG: starts on row 1, even size
    assert linear.dtype == np.uint16 and linear.shape == image.shape
    np.testing.assert_allclose(linear_to_srgb(linear / 65535), image / 65535, atol=2e-3)
    # the fused sRGB result matches the scene through the camera's colour pipeline
    truth = sharp[1:95]
    inner = (slice(8, -8), slice(8, -8))
    fused_psnr = _psnr(image[inner] / 65535, truth[inner])
    frames = read_raw(folder).data.compute() / 65535
    best_frame = max(_psnr(f[inner], truth[inner]) for f in frames)
    assert fused_psnr > best_frame + 1.0, (fused_psnr, best_frame)
    assert fused_psnr > 33
    # no overwrite without asking
    assert main(["fuse", str(folder), "-o", str(out)]) == 2


def test_cli_raw_flag_refuses_non_raw_and_rgb_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from napari_focusdeep.cli import main
    from napari_focusdeep.io import write_image

    frames = tmp_path / "frames"
    for i in range(2):
        write_image(frames / f"f{i}.png", np.zeros((32, 32, 3), np.uint8))
    assert main(["fuse", str(frames), "-o", str(tmp_path / "o.tif"), "--raw"]) == 2
    assert "camera raw" in capsys.readouterr().err
    _, folder = _raw_burst(tmp_path / "burst", n=2, shape=(32, 32))
    pytest.importorskip("torch")
    rgb_weights = ["--weights", "focusdeep-any"]  # the shipped RGB network, by name
    assert main(["fuse", str(folder), "-o", str(tmp_path / "o.tif"), "--raw", "--method", "focusdeep-any", *rgb_weights]) == 2
    assert "RGB input" in capsys.readouterr().err


def test_raw_focusdeep_path_with_a_random_tiny_model(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    import tifffile

    from napari_focusdeep.cli import main
    from napari_focusdeep.models import build_model
    from napari_focusdeep.models.weights import save_weights
    from napari_focusdeep.raw_fusion import fuse_raw

    torch.manual_seed(0)
    model = build_model("focusdeep-any", stem="raw", in_channels=4, features=8, front_blocks=1, groups=1,
                        blocks_per_group=1, offset_groups=2)
    weights = tmp_path / "raw-tiny.safetensors"
    save_weights(model, weights, description="random, for tests")
    _, folder = _raw_burst(tmp_path / "burst", n=3, shape=(48, 64))
    whole = fuse_raw(folder, method="focusdeep-any", weights=str(weights), device="cpu", tile=512)
    assert whole.path == "bayer"
    assert whole.image.shape == (46, 64, 3) and whole.image.dtype == np.uint16  # GBRG: rows 1..46
    assert whole.depth.shape == (46, 64)
    tiled = fuse_raw(folder, method="focusdeep-any", weights=str(weights), device="cpu", tile=16,
                     transforms=whole.transforms)
    assert np.abs(tiled.linear.astype(int) - whole.linear.astype(int)).max() <= 2  # tiling is exact up to rounding
    # the same through the CLI, with --raw
    out = tmp_path / "raw.tif"
    assert main(["fuse", str(folder), "-o", str(out), "--raw", "--method", "focusdeep-any", "--weights", str(weights),
                 "--device", "cpu"]) == 0
    assert tifffile.imread(out).shape == (46, 64, 3)
