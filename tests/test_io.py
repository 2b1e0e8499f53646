"""Tests for napari_focusdeep.io: readers (TIFF, OME, frames, bioio) and atomic writers."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import cv2
import dask.array as da
import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from napari_focusdeep.io import (
    MissingExtraError,
    UnsupportedFormatError,
    _frames,
    atomic_write,
    is_supported,
    list_frames,
    natural_sorted,
    read_stack,
    write_image,
    write_stack,
)
from napari_focusdeep.io._axes import to_stack_axes
from napari_focusdeep.stack import Stack

RNG = np.random.default_rng(1234)


def _rand(shape, dtype=np.uint8):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return RNG.random(shape, dtype=np.float32).astype(dtype)
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)


def _write_png(path: Path, arr: np.ndarray) -> Path:
    """Save RGB(A)/gray with OpenCV (which wants BGR)."""
    if arr.ndim == 3:
        arr = arr[..., [2, 1, 0, 3][: arr.shape[2]]]
    assert cv2.imwrite(str(path), arr)
    return path


def _only_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- TIFF / OME-TIFF -----------------------------------------------------------------------


def test_plain_multipage_tiff_is_a_lazy_zyx_stack(tmp_path):
    data = _rand((6, 20, 24), np.uint8)
    path = tmp_path / "focus.tif"
    tifffile.imwrite(path, data)
    stack = read_stack(path)
    assert isinstance(stack.data, da.Array)
    assert stack.axes == "ZYX"
    assert stack.data.chunks[0] == (1,) * 6  # one chunk per frame
    assert stack.data.chunksize == (1, 20, 24)
    assert stack.name == "focus"
    assert stack.paths == (path,)
    assert stack.scale == {} and stack.unit is None
    np.testing.assert_array_equal(stack.data.compute(), data)
    np.testing.assert_array_equal(stack.frame(3), data[3])


def test_tiff_pixels_are_read_on_compute_not_on_open(tmp_path):
    path = tmp_path / "lazy.tif"
    tifffile.imwrite(path, np.zeros((5, 8, 8), np.uint8), photometric="minisblack")
    stack = read_stack(path)
    # change frame 3 on disk after opening: a lazy reader sees the new pixels
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[3].dataoffsets[0]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes([7]) * 64)
    assert (stack.frame(3) == 7).all()
    assert (stack.frame(2) == 0).all()


def test_pages_without_metadata_are_z(tmp_path):
    # a multi-page TIFF written by other software: tifffile calls the page axis I or Q
    data = _rand((4, 10, 12), np.uint16)
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tw:
        for page in data:
            tw.write(page, contiguous=False, metadata=None)
    stack = read_stack(path)
    assert stack.axes == "ZYX"
    assert stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_appended_single_images_are_one_stack(tmp_path):
    # tifffile.imwrite(..., append=True) leaves one "shaped" series per image
    data = _rand((3, 10, 12), np.uint8)
    path = tmp_path / "appended.tif"
    for page in data:
        tifffile.imwrite(path, page, append=True)
    stack = read_stack(path)
    assert stack.axes == "ZYX"
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_16bit_tiff(tmp_path):
    data = _rand((3, 16, 18), np.uint16)
    # tifffile would store a (3, Y, X) array as planar RGB unless told otherwise
    tifffile.imwrite(tmp_path / "a.tif", data, photometric="minisblack")
    stack = read_stack(tmp_path / "a.tif")
    assert stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_imagej_rgb_stack_is_zyxc(tmp_path):
    data = _rand((4, 16, 18, 3), np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, data, imagej=True, photometric="rgb", metadata={"axes": "ZYXS"})
    stack = read_stack(path)
    assert stack.axes == "ZYXC"
    assert stack.data.chunksize == (1, 16, 18, 3)
    np.testing.assert_array_equal(stack.data.compute(), data)


@pytest.mark.parametrize("order", ["ZCYX", "CZYX"])
def test_ome_channels_are_moved_last(tmp_path, order):
    zcyx = _rand((5, 2, 12, 14), np.uint16)
    data = zcyx if order == "ZCYX" else zcyx.transpose(1, 0, 2, 3)
    path = tmp_path / "multi.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": order})
    stack = read_stack(path)
    assert stack.axes == "ZYXC"
    assert stack.name == "multi"
    assert stack.data.chunksize == (1, 12, 14, 2)
    np.testing.assert_array_equal(stack.data.compute(), zcyx.transpose(0, 2, 3, 1))


def test_imagej_time_and_channels(tmp_path):
    data = _rand((2, 3, 2, 10, 12), np.uint16)  # T Z C Y X
    path = tmp_path / "tl.tif"
    tifffile.imwrite(path, data, imagej=True, metadata={"axes": "TZCYX", "finterval": 30.0})
    stack = read_stack(path)
    assert stack.axes == "TZYXC"
    assert stack.n_timepoints == 2 and stack.n_frames == 3 and stack.n_channels == 2
    assert stack.scale.get("T") == 30.0
    assert stack.data.chunksize == (1, 1, 10, 12, 2)
    np.testing.assert_array_equal(stack.data.compute(), data.transpose(0, 1, 3, 4, 2))


def test_ome_time_without_channels(tmp_path):
    data = _rand((2, 3, 10, 12), np.uint8)
    path = tmp_path / "t.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TZYX"})
    stack = read_stack(path)
    assert stack.axes == "TZYX"
    np.testing.assert_array_equal(stack.timepoint(1).data.compute(), data[1])


@pytest.mark.parametrize("compression", ["lzw", "zlib", "jpeg"])
def test_compressed_tiff(tmp_path, compression):
    path = tmp_path / f"c_{compression}.tif"
    if compression == "jpeg":
        # a smooth RGB stack: JPEG is lossy, so compare loosely
        yy, xx = np.mgrid[0:32, 0:40]
        data = np.stack(
            [
                np.stack([(xx * 6 + z * 10) % 256, yy * 7, np.full_like(xx, 128)], -1)
                for z in range(3)
            ]
        ).astype(np.uint8)
        tifffile.imwrite(
            path, data, photometric="rgb", compression="jpeg", metadata={"axes": "ZYXS"}
        )
    else:
        data = _rand((3, 32, 40), np.uint16)
        tifffile.imwrite(path, data, compression=compression, photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression != 1  # really compressed
    stack = read_stack(path)
    out = stack.data.compute()
    assert out.shape == data.shape and out.dtype == data.dtype
    if compression == "jpeg":
        assert stack.axes == "ZYXC"
        assert np.abs(out.astype(int) - data).mean() < 6
    else:
        np.testing.assert_array_equal(out, data)


def test_scale_from_ome_metadata_converts_units(tmp_path):
    path = tmp_path / "s.ome.tif"
    tifffile.imwrite(
        path,
        _rand((3, 8, 8), np.uint8),
        ome=True,
        metadata={
            "axes": "ZYX",
            "PhysicalSizeX": 0.325,
            "PhysicalSizeY": 0.325,
            "PhysicalSizeZ": 1500.0,
            "PhysicalSizeZUnit": "nm",
        },
    )
    stack = read_stack(path)
    assert stack.unit == "\u00b5m"  # OME's default unit
    assert stack.scale["X"] == pytest.approx(0.325)
    assert stack.scale["Y"] == pytest.approx(0.325)
    assert stack.scale["Z"] == pytest.approx(1.5)
    assert stack.z_step == pytest.approx(1.5)
    assert stack.layer_scale() == pytest.approx((1.5, 0.325, 0.325))


@pytest.mark.parametrize("unit", ["micron", "um", "\\u00B5m"])
def test_scale_from_imagej_metadata(tmp_path, unit):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(
        path,
        _rand((4, 8, 8), np.uint16),
        imagej=True,
        resolution=(1 / 0.65, 1 / 0.65),
        metadata={"axes": "ZYX", "spacing": 2.5, "unit": unit},
    )
    stack = read_stack(path)
    assert stack.unit == "\u00b5m"
    assert stack.scale == pytest.approx({"X": 0.65, "Y": 0.65, "Z": 2.5})


def test_uncalibrated_imagej_has_no_scale(tmp_path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, _rand((2, 8, 8), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    stack = read_stack(path)
    assert stack.scale == {} and stack.unit is None


def test_time_series_without_z_is_refused_with_a_hint(tmp_path):
    data = _rand((5, 8, 8), np.uint8)
    path = tmp_path / "tyx.ome.tif"
    tifffile.imwrite(path, data, ome=True, metadata={"axes": "TYX"})
    with pytest.raises(ValueError, match=r"no Z axis.*axes='ZYX'"):
        read_stack(path)
    stack = read_stack(path, axes="ZYX")
    assert stack.axes == "ZYX"
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_channels_and_samples_together_are_ambiguous(tmp_path):
    # tifffile's default for a 4-D RGB array in ImageJ mode is CYXS: which axis is Z?
    data = _rand((4, 8, 8, 3), np.uint8)
    path = tmp_path / "naive.tif"
    tifffile.imwrite(path, data, imagej=True, photometric="rgb")
    with pytest.raises(ValueError, match="axes='ZYXC'"):
        read_stack(path)
    stack = read_stack(path, axes="ZYXC")
    assert stack.axes == "ZYXC"
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_bad_axes_override(tmp_path):
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, _rand((5, 8, 8)))
    with pytest.raises(ValueError, match="letters"):
        read_stack(path, axes="ZY")
    with pytest.raises(ValueError, match="unknown letters"):
        read_stack(path, axes="ZYQ")


@pytest.mark.parametrize(
    "axes, shape, expected_axes, expected_shape",
    [
        ("ZYX", (3, 4, 5), "ZYX", (3, 4, 5)),
        ("QYX", (3, 4, 5), "ZYX", (3, 4, 5)),
        ("IYXS", (3, 4, 5, 3), "ZYXC", (3, 4, 5, 3)),
        ("CZYX", (2, 3, 4, 5), "ZYXC", (3, 4, 5, 2)),
        ("TZCYX", (2, 3, 2, 4, 5), "TZYXC", (2, 3, 4, 5, 2)),
        ("TCZYX", (1, 1, 3, 4, 5), "ZYX", (3, 4, 5)),  # bioio layout, singletons dropped
        ("TCZYX", (1, 2, 3, 4, 5), "ZYXC", (3, 4, 5, 2)),
        ("YX", (4, 5), "ZYX", (1, 4, 5)),
        ("YXS", (4, 5, 3), "ZYXC", (1, 4, 5, 3)),
    ],
)
def test_axis_mapping(axes, shape, expected_axes, expected_shape):
    data = da.zeros(shape, dtype=np.uint8)
    out, got = to_stack_axes(data, axes, "'x'")
    assert got == expected_axes
    assert out.shape == expected_shape
    Stack(out, axes=got)  # a valid Stack


@pytest.mark.parametrize("axes", ["PQZYX", "EZYX", "QZYX", "QIYX"])
def test_unknown_axes_are_refused(axes):
    data = da.zeros((2,) * (len(axes) - 2) + (4, 5), dtype=np.uint8)
    with pytest.raises(ValueError, match="pass axes="):
        to_stack_axes(data, axes, "'x'")


def test_corrupt_tiff_is_a_value_error(tmp_path):
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00garbage")
    with pytest.raises(ValueError, match="bad.tif"):
        read_stack(path)


# -- folders and lists of frames ---------------------------------------------------------


def _frame_folder(
    folder: Path, n: int, *, shape=(12, 16), ext=".png", name="frame_{}"
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = np.full(shape, i * 10 % 256, dtype=np.uint8)
        paths.append(_write_png(folder / (name.format(i + 1) + ext), arr))
    return paths


def test_natural_sort():
    names = ["frame_10.png", "frame_2.png", "Frame_1.png", "frame_1b.png", "img01.png", "img1.png"]
    assert natural_sorted(names) == [
        "Frame_1.png",
        "frame_1b.png",
        "frame_2.png",
        "frame_10.png",
        "img1.png",
        "img01.png",
    ]


def test_folder_in_natural_order(tmp_path):
    folder = tmp_path / "bracket"
    _frame_folder(folder, 12)
    stack = read_stack(folder)
    assert stack.axes == "ZYX"
    assert stack.name == "bracket"
    assert [p.name for p in stack.paths][:3] == ["frame_1.png", "frame_2.png", "frame_3.png"]
    assert stack.paths[-1].name == "frame_12.png"
    values = stack.data.compute()[:, 0, 0]
    np.testing.assert_array_equal(values, np.arange(12) * 10)


def test_folder_ignores_hidden_and_non_image_files(tmp_path):
    folder = tmp_path / "mixed"
    _frame_folder(folder, 3)
    # would be refused (different size) if they were read
    _write_png(folder / ".hidden.png", np.zeros((5, 5), np.uint8))
    _write_png(folder / "._frame_1.png", np.zeros((5, 5), np.uint8))
    (folder / "notes.txt").write_text("hello")
    (folder / "meta.json").write_text("{}")
    (folder / "sub.png").mkdir()  # a folder with an image-like name
    # upper-case extensions count
    _write_png(folder / "frame_4.PNG", np.full((12, 16), 40, np.uint8))
    cv2.imwrite(str(folder / "frame_5.JPG"), np.full((12, 16), 50, np.uint8))
    assert [p.name for p in list_frames(folder)] == [
        "frame_1.png",
        "frame_2.png",
        "frame_3.png",
        "frame_4.PNG",
        "frame_5.JPG",
    ]
    stack = read_stack(folder)
    assert stack.n_frames == 5
    np.testing.assert_allclose(stack.data[:, 0, 0].compute(), [0, 10, 20, 40, 50], atol=2)


def test_list_of_files_keeps_given_order(tmp_path):
    paths = _frame_folder(tmp_path / "f", 4)
    order = [paths[2], paths[0], paths[3], paths[1]]
    stack = read_stack([str(p) for p in order])
    assert stack.paths == tuple(order)
    np.testing.assert_array_equal(stack.data[:, 0, 0].compute(), [20, 0, 30, 10])


def test_mismatched_frame_size_is_refused_naming_the_file(tmp_path):
    folder = tmp_path / "b"
    _frame_folder(folder, 2, shape=(600, 800))
    _write_png(folder / "frame_3.png", np.zeros((480, 640), np.uint8))
    with pytest.raises(ValueError) as err:
        read_stack(folder)
    message = str(err.value)
    assert "b/frame_3.png" in message
    assert "640x480" in message and "800x600" in message


def test_mismatched_channels_and_dtype_are_refused(tmp_path):
    folder = tmp_path / "c"
    _frame_folder(folder, 2)
    _write_png(folder / "frame_3.png", np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ValueError, match=r"frame_3\.png.*3 channels \(RGB\).*grayscale"):
        read_stack(folder)
    (folder / "frame_3.png").unlink()
    _write_png(folder / "frame_3.png", np.zeros((12, 16), np.uint16))
    with pytest.raises(ValueError, match=r"frame_3\.png.*uint16.*uint8"):
        read_stack(folder)


def test_folder_leaves_out_ground_truths_and_results_with_a_warning(tmp_path):
    folder = tmp_path / "pcb"
    _frame_folder(folder, 3)
    # same size as the frames, so only the name can tell (focus-stack's samples hold expected.jpg)
    for name in ("expected.png", "ground_truth.png", "pcb_fused.png", "depth.png"):
        _write_png(folder / name, np.full((12, 16), 99, np.uint8))
    _write_png(folder / "result_004.png", np.full((12, 16), 7, np.uint8))  # numbered: a frame
    with pytest.warns(UserWarning, match="not fusing .*expected.png.* ground truth, result or depth map"):
        stack = read_stack(folder)
    assert stack.n_frames == 4 and [p.name for p in stack.paths][-1] == "result_004.png"
    # a folder of nothing but such names is read as it is
    only = tmp_path / "only"
    only.mkdir()
    for name in ("a_gt.png", "b_gt.png"):
        _write_png(only / name, np.full((12, 16), 5, np.uint8))
    assert read_stack(only).n_frames == 2


def test_empty_folder_and_missing_paths(tmp_path):
    with pytest.raises(ValueError, match="no image frames"):
        read_stack(tmp_path)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image frames.*1 other"):
        read_stack(tmp_path)
    with pytest.raises(FileNotFoundError):
        read_stack(tmp_path / "nope")
    with pytest.raises(FileNotFoundError):
        read_stack(tmp_path / "nope.tif")
    paths = _frame_folder(tmp_path / "f", 2)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_stack([paths[0], tmp_path / "missing.png"])
    with pytest.raises(ValueError):
        read_stack([])


def test_rgb_png_frames_are_zyxc_in_rgb_order(tmp_path):
    folder = tmp_path / "rgb"
    folder.mkdir()
    frames = _rand((3, 10, 12, 3), np.uint8)
    for i, f in enumerate(frames):
        _write_png(folder / f"f{i}.png", f)
    stack = read_stack(folder)
    assert stack.axes == "ZYXC"
    assert stack.data.chunksize == (1, 10, 12, 3)
    np.testing.assert_array_equal(stack.data.compute(), frames)
    # Pillow agrees on the channel order
    np.testing.assert_array_equal(np.asarray(Image.open(folder / "f0.png")), frames[0])


def test_16bit_and_rgba_png_frames(tmp_path):
    gray16 = _rand((2, 9, 11), np.uint16)
    for i, f in enumerate(gray16):
        _write_png(tmp_path / f"g{i}.png", f)
    stack = read_stack([tmp_path / "g0.png", tmp_path / "g1.png"])
    assert stack.dtype == np.uint16 and stack.axes == "ZYX"
    np.testing.assert_array_equal(stack.data.compute(), gray16)

    rgba = _rand((2, 9, 11, 4), np.uint8)
    for i, f in enumerate(rgba):
        _write_png(tmp_path / f"a{i}.png", f)
    stack = read_stack([tmp_path / "a0.png", tmp_path / "a1.png"])
    assert stack.axes == "ZYXC" and stack.n_channels == 4
    np.testing.assert_array_equal(stack.data.compute(), rgba)


def test_palette_png_frames(tmp_path):
    im = Image.fromarray(_rand((9, 11, 3), np.uint8)).quantize(16)
    im.save(tmp_path / "p1.png")
    im.save(tmp_path / "p2.png")
    stack = read_stack([tmp_path / "p1.png", tmp_path / "p2.png"])
    assert stack.axes == "ZYXC" and stack.n_channels == 3
    np.testing.assert_array_equal(stack.frame(0), np.asarray(im.convert("RGB")))


def test_jpeg_frames(tmp_path):
    folder = tmp_path / "jpg"
    folder.mkdir()
    yy, xx = np.mgrid[0:24, 0:32]
    base = np.stack([xx * 8, yy * 10, np.full_like(xx, 200)], -1).astype(np.uint8)
    for i in range(3):
        Image.fromarray(base).save(folder / f"IMG_{i}.jpg", quality=95)
    stack = read_stack(folder)
    assert stack.axes == "ZYXC" and stack.dtype == np.uint8
    out = stack.data.compute()
    assert np.abs(out.astype(int) - base).mean() < 4


def test_jpeg_exif_orientation_is_applied(tmp_path):
    yy, xx = np.mgrid[0:24, 0:40]
    base = np.stack([xx * 6, yy * 10, np.full_like(xx, 90)], -1).astype(np.uint8)
    paths = []
    for i in range(2):
        im = Image.fromarray(base)
        exif = im.getexif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        path = tmp_path / f"r{i}.jpg"
        im.save(path, exif=exif, quality=95)
        paths.append(path)
    stack = read_stack(paths)
    assert stack.frame_shape == (40, 24)  # height and width swapped, as shown
    shown = np.asarray(ImageOps.exif_transpose(Image.open(paths[0])))
    assert np.abs(stack.frame(0).astype(int) - shown).mean() < 3


def test_tiff_frames_folder(tmp_path):
    folder = tmp_path / "tifs"
    folder.mkdir()
    data = _rand((3, 10, 12, 3), np.uint16)
    for i, f in enumerate(data):
        tifffile.imwrite(folder / f"z{i}.tif", f, photometric="rgb")
    stack = read_stack(folder)
    assert stack.axes == "ZYXC" and stack.dtype == np.uint16
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_multipage_tiff_inside_a_folder_of_frames_is_refused(tmp_path):
    folder = tmp_path / "f"
    _frame_folder(folder, 2, ext=".png")
    tifffile.imwrite(folder / "frame_3.tif", _rand((5, 12, 16)))
    with pytest.raises(ValueError, match="frame_3.tif.*several images"):
        read_stack(folder)


def test_folder_holding_one_stack_file(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    data = _rand((5, 8, 8))
    tifffile.imwrite(folder / "stack.tif", data)
    stack = read_stack(folder)
    assert stack.name == "one" and stack.n_frames == 5
    np.testing.assert_array_equal(stack.data.compute(), data)


def test_single_image_file_is_a_one_frame_stack(tmp_path):
    path = _write_png(tmp_path / "single.png", _rand((8, 9, 3)))
    stack = read_stack(path)
    assert stack.axes == "ZYXC" and stack.n_frames == 1 and stack.name == "single"


def test_folder_of_200_frames_opens_fast_and_lazily(tmp_path, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    tiny = np.arange(48, dtype=np.uint8).reshape(6, 8)
    encoded = cv2.imencode(".png", tiny)[1].tobytes()
    for i in range(200):
        (folder / f"img_{i}.png").write_bytes(encoded)

    calls = []
    real = _frames.decode_frame

    def counting(info):
        calls.append(info.path.name)
        return real(info)

    monkeypatch.setattr(_frames, "decode_frame", counting)
    start = time.perf_counter()
    stack = read_stack(folder)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"opening 200 frames took {elapsed:.2f} s"
    assert stack.n_frames == 200
    assert stack.data.numblocks == (200, 1, 1)
    assert calls == []  # nothing decoded by opening
    stack.frame(57)
    assert calls == ["img_57.png"]  # one frame read, one decode
    calls.clear()
    out = stack.data.compute()
    assert len(calls) == 200
    np.testing.assert_array_equal(out[199], tiny)


def test_frame_changed_on_disk_is_reported(tmp_path):
    paths = _frame_folder(tmp_path / "f", 2)
    stack = read_stack(paths)
    _write_png(paths[1], np.zeros((5, 5), np.uint8))  # replaced after opening
    with pytest.raises(ValueError, match="frame_2.png"):
        stack.data.compute()


# -- bioio -------------------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("bioio_czi") is not None, reason="bioio-czi installed")
def test_missing_bioio_plugin_names_the_extra(tmp_path):
    path = tmp_path / "scan.czi"
    path.write_bytes(b"ZISRAWFILE" + b"\0" * 100)
    with pytest.raises(MissingExtraError) as err:
        read_stack(path)
    message = str(err.value)
    assert "'formats' extra" in message
    assert "pip install 'napari-focusdeep[formats]'" in message
    assert ".czi" in message
    assert isinstance(err.value, ImportError)


def test_unknown_format_is_refused(tmp_path):
    path = tmp_path / "data.xyz"
    path.write_bytes(b"\0" * 64)
    with pytest.raises(UnsupportedFormatError, match="data.xyz"):
        read_stack(path)


def test_bioio_reader_converts_tczyx(tmp_path):
    pytest.importorskip("bioio_ome_tiff")
    data = _rand((3, 2, 10, 12), np.uint16)  # Z C Y X
    path = tmp_path / "b.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0},
    )
    stack = read_stack(path, reader="bioio")
    assert stack.metadata["reader"] == "bioio"
    assert stack.axes == "ZYXC"
    assert stack.scale == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    assert stack.unit == "\u00b5m"
    np.testing.assert_array_equal(stack.data.compute(), data.transpose(0, 2, 3, 1))


def test_is_supported(tmp_path):
    for name in [
        "a.tif",
        "a.TIFF",
        "a.ome.tif",
        "a.png",
        "a.JPG",
        "a.jpeg",
        "a.czi",
        "a.nd2",
        "a.lif",
    ]:
        assert is_supported(tmp_path / name), name
    for name in ["a.txt", "a.json", "a", "a.zip"]:
        assert not is_supported(tmp_path / name), name
    assert not is_supported(tmp_path)  # empty folder
    (tmp_path / "x.txt").write_text("x")
    assert not is_supported(tmp_path)
    _write_png(tmp_path / "f.png", np.zeros((3, 3), np.uint8))
    assert is_supported(str(tmp_path))
    assert is_supported([tmp_path / "a.png", tmp_path / "b.png"])
    assert not is_supported([])
    assert not is_supported([tmp_path / "a.png", tmp_path / "b.txt"])


def test_reader_argument(tmp_path):
    data = _rand((5, 8, 8))
    path = tmp_path / "a.tif"
    tifffile.imwrite(path, data)
    assert read_stack(path, reader="tifffile").n_frames == 5
    with pytest.raises(ValueError, match="reader must be"):
        read_stack(path, reader="magic")


# -- writers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.uint8, (20, 24)),
        (np.uint16, (20, 24)),
        (np.float32, (20, 24)),
        (np.uint8, (20, 24, 3)),
        (np.uint16, (20, 24, 3)),
        (np.float32, (20, 24, 3)),
        (np.float64, (20, 24)),
        (np.int16, (20, 24)),
    ],
)
def test_tiff_round_trip_keeps_values_dtype_and_scale(tmp_path, dtype, shape):
    image = _rand(shape, dtype)
    path = write_image(tmp_path / "out.tif", image, scale={"X": 0.325, "Y": 0.325}, unit="um")
    assert path == tmp_path / "out.tif"
    stack = read_stack(path)
    assert stack.n_frames == 1
    assert stack.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stack.frame(0), image)
    assert stack.unit == "\u00b5m"
    assert stack.scale["X"] == pytest.approx(0.325, rel=1e-7)
    assert stack.scale["Y"] == pytest.approx(0.325, rel=1e-7)
    assert _only_files(tmp_path) == ["out.tif"]  # no temporary file left


def test_imagej_tiff_is_calibrated_for_fiji(tmp_path):
    write_image(
        tmp_path / "o.tif", _rand((8, 8), np.uint16), scale={"X": 0.5, "Y": 0.5}, unit="\u00b5m"
    )
    with tifffile.TiffFile(tmp_path / "o.tif") as tif:
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] in ("micron", "um")
        assert tif.pages[0].get_resolution() == pytest.approx((2.0, 2.0))


def test_write_stack_round_trip_with_z_step(tmp_path):
    frames = _rand((4, 10, 12, 3), np.uint8)
    source = Stack.from_array(frames, scale={"Z": 2.0, "Y": 0.5, "X": 0.5}, unit="\u00b5m")
    path = write_stack(tmp_path / "registered.tif", source)
    stack = read_stack(path)
    assert stack.axes == "ZYXC"
    np.testing.assert_array_equal(stack.data.compute(), frames)
    assert stack.scale == pytest.approx({"Z": 2.0, "Y": 0.5, "X": 0.5})
    assert stack.unit == "\u00b5m"


def test_time_series_stack_round_trip(tmp_path):
    data = _rand((2, 3, 8, 10), np.uint16)
    source = Stack(
        da.from_array(data, chunks=(1, 1, 8, 10)),
        axes="TZYX",
        scale={"T": 60.0, "Z": 1.0, "Y": 0.5, "X": 0.5},
        unit="\u00b5m",
    )
    for name in ("t.tif", "t.ome.tif"):
        stack = read_stack(write_stack(tmp_path / name, source))
        assert stack.axes == "TZYX"
        np.testing.assert_array_equal(stack.data.compute(), data)
        assert stack.scale == pytest.approx({"T": 60.0, "Z": 1.0, "Y": 0.5, "X": 0.5}), name


def test_write_stack_from_lazy_frames(tmp_path):
    # a dask stack (e.g. registered frames) is written frame by frame
    paths = _frame_folder(tmp_path / "src", 5)
    lazy = read_stack(paths)
    out = write_stack(tmp_path / "out.tif", lazy.data, compression="zlib")
    np.testing.assert_array_equal(read_stack(out).data.compute(), lazy.data.compute())


@pytest.mark.parametrize(
    "shape, axes", [((3, 10, 12), "ZYX"), ((3, 10, 12, 2), "ZYXC"), ((10, 12, 3), "YXC")]
)
def test_ome_tiff_round_trip(tmp_path, shape, axes):
    data = _rand(shape, np.uint16)
    path = write_image(
        tmp_path / "o.ome.tif",
        data,
        axes=axes,
        scale={"X": 0.1, "Y": 0.1, "Z": 0.3},
        unit="\u00b5m",
    )
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        assert 'PhysicalSizeX="0.1"' in tif.ome_metadata
    stack = read_stack(path)
    expected = data if "Z" in axes else data[None]
    np.testing.assert_array_equal(stack.data.compute(), expected)
    assert stack.scale["X"] == pytest.approx(0.1)
    if "Z" in axes:
        assert stack.scale["Z"] == pytest.approx(0.3)
    assert stack.unit == "\u00b5m"


def test_ome_nm_unit_round_trip(tmp_path):
    path = write_image(
        tmp_path / "n.ome.tiff", _rand((8, 8), np.uint8), scale={"X": 65.0, "Y": 65.0}, unit="nm"
    )
    stack = read_stack(path)
    assert stack.unit == "nm" and stack.scale["X"] == pytest.approx(65.0)


def test_metadata_round_trip(tmp_path):
    md = {"method": "pmax", "frames": 12}
    for name, dtype in [("a.tif", np.uint8), ("b.ome.tif", np.uint8), ("c.tif", np.float64)]:
        write_image(tmp_path / name, _rand((6, 6), dtype), metadata=md)
        assert read_stack(tmp_path / name).metadata["focusdeep"] == md, name
    with pytest.raises(ValueError, match="JSON"):
        write_image(tmp_path / "d.tif", _rand((6, 6)), metadata={"x": object()})


@pytest.mark.parametrize(
    "dtype, shape",
    [
        (np.uint8, (9, 11)),
        (np.uint16, (9, 11)),
        (np.uint8, (9, 11, 3)),
        (np.uint16, (9, 11, 3)),
        (np.uint8, (9, 11, 4)),
    ],
)
def test_png_round_trip(tmp_path, dtype, shape):
    image = _rand(shape, dtype)
    path = write_image(tmp_path / "o.png", image)
    stack = read_stack(path)
    assert stack.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(stack.frame(0), image)
    if len(shape) == 3 and dtype == np.uint8:
        np.testing.assert_array_equal(np.asarray(Image.open(path)), image)  # RGB order on disk


def test_jpeg_writes_8bit_and_refuses_the_rest(tmp_path):
    yy, xx = np.mgrid[0:24, 0:32]
    image = np.stack([xx * 8, yy * 10, np.full_like(xx, 60)], -1).astype(np.uint8)
    path = write_image(tmp_path / "o.jpg", image, quality=98)
    back = np.asarray(Image.open(path))
    assert back.shape == image.shape and np.abs(back.astype(int) - image).mean() < 3
    write_image(tmp_path / "g.jpeg", image[..., 0])
    for bad in (image.astype(np.uint16), image.astype(np.float32)):
        with pytest.raises(ValueError, match=r"\.tif"):
            write_image(tmp_path / "bad.jpg", bad)
    with pytest.raises(ValueError, match="JPEG"):
        write_image(tmp_path / "bad.jpg", _rand((8, 8, 4)))
    assert not (tmp_path / "bad.jpg").exists()


def test_png_refuses_floats_and_stacks(tmp_path):
    with pytest.raises(ValueError, match=r"\.tif"):
        write_image(tmp_path / "f.png", _rand((8, 8), np.float32))
    with pytest.raises(ValueError, match="single image"):
        write_image(tmp_path / "s.png", _rand((3, 8, 8)), axes="ZYX")
    write_image(tmp_path / "one.png", _rand((1, 8, 8)), axes="ZYX")  # a singleton Z is fine
    assert _only_files(tmp_path) == ["one.png"]


def test_unknown_write_extension(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "o.bmp", _rand((8, 8)))


def test_axes_argument_for_channel_first_arrays(tmp_path):
    cyx = _rand((3, 10, 12))
    write_image(tmp_path / "c.png", cyx, axes="CYX")
    np.testing.assert_array_equal(read_stack(tmp_path / "c.png").frame(0), cyx.transpose(1, 2, 0))
    with pytest.raises(ValueError, match="axes"):
        write_image(tmp_path / "d.png", cyx, axes="YX")


def test_existing_file_is_not_overwritten(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_image(target, _rand((8, 8)))
    assert target.read_bytes() == b"precious"
    write_image(target, _rand((8, 8)), overwrite=True)
    assert target.read_bytes() != b"precious"
    assert read_stack(target).frame_shape == (8, 8)
    assert _only_files(tmp_path) == ["out.png"]


def _failing_stack(n_ok: int = 2) -> da.Array:
    """A lazy stack whose frame ``n_ok`` raises when computed (a mid-write failure)."""

    def block(block_id=None):
        if block_id[0] == n_ok:
            raise RuntimeError("disk on fire")
        return np.full((1, 16, 16), block_id[0], np.uint8)

    return da.map_blocks(
        block, chunks=((1,) * 4, (16,), (16,)), dtype=np.uint8, meta=np.empty((0, 0, 0), np.uint8)
    )


@pytest.mark.parametrize("name", ["stack.tif", "stack.ome.tif"])
def test_failure_mid_write_leaves_nothing(tmp_path, name):
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_stack(tmp_path / name, _failing_stack())
    assert _only_files(tmp_path) == []


def test_failure_mid_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "stack.tif"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_stack(target, _failing_stack(), overwrite=True)
    assert target.read_bytes() == b"old"
    assert _only_files(tmp_path) == ["stack.tif"]


def test_atomic_write_helper(tmp_path):
    target = tmp_path / "sub" / "weights.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".") and tmp.suffix == ".bin"
        assert not target.exists()
        tmp.write_bytes(b"abc")
    assert target.read_bytes() == b"abc"
    assert _only_files(target.parent) == ["weights.bin"]

    with pytest.raises(KeyError):
        with atomic_write(target, overwrite=True) as tmp:
            tmp.write_bytes(b"partial")
            raise KeyError("boom")
    assert target.read_bytes() == b"abc"
    assert _only_files(target.parent) == ["weights.bin"]

    with pytest.raises(FileExistsError):
        with atomic_write(target):
            pass
    with pytest.raises(RuntimeError, match="nothing was written"):
        with atomic_write(tmp_path / "empty.bin"):
            pass
    assert not (tmp_path / "empty.bin").exists()


def test_atomic_write_does_not_clobber_a_file_that_appears_meanwhile(tmp_path):
    target = tmp_path / "race.bin"
    with pytest.raises(FileExistsError):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"theirs")  # someone else got there first
    assert target.read_bytes() == b"theirs"
    assert _only_files(tmp_path) == ["race.bin"]


def test_write_image_accepts_a_stack(tmp_path):
    source = Stack.from_array(
        _rand((2, 8, 8), np.uint16), scale={"Z": 3.0, "Y": 0.2, "X": 0.2}, unit="nm"
    )
    stack = read_stack(write_image(tmp_path / "s.tif", source))
    assert stack.scale == pytest.approx({"Z": 3.0, "Y": 0.2, "X": 0.2}) and stack.unit == "nm"
