"""Reliability: bad input, damaged files, interrupted runs, unsafe weights, big stacks.

Each test backs a row of ``docs/reliability.md``. Command-line cases check the
contract a user sees: exit status 2, exactly one plain line on stderr naming the
problem (never a traceback), and no output file left behind.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from napari_focusdeep.cli import main
from napari_focusdeep.fusion import fuse
from napari_focusdeep.io import read_stack
from napari_focusdeep.registration import RegistrationWarning

METHODS = ["pyramid", "laplacian", "wavelet"]
RNG = np.random.default_rng(7)


# -- helpers -------------------------------------------------------------------------------
def _texture(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    """Smooth random texture (registration needs something to lock on to)."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random(shape[:2]).astype(np.float32), (0, 0), 2)
    img = (img - img.min()) / (np.ptp(img) + 1e-6)
    if len(shape) == 3:
        img = np.stack([np.roll(img, 3 * c, axis=1) for c in range(shape[2])], axis=-1)
    if np.dtype(dtype).kind == "f":
        return img.astype(dtype)
    return (img * np.iinfo(dtype).max).astype(dtype)


def _write_frames(folder: Path, frames, ext=".png") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, frame in enumerate(frames):
        path = folder / f"f{i}{ext}"
        if ext in (".tif", ".tiff"):
            tifffile.imwrite(path, frame)
        else:
            arr = frame[..., ::-1] if frame.ndim == 3 else frame  # OpenCV wants BGR
            assert cv2.imwrite(str(path), arr)
        paths.append(path)
    return paths


def _series(n, shape, dtype=np.uint8) -> list[np.ndarray]:
    """``n`` frames of one texture, each shifted a pixel further (a shaky bracket)."""
    base = _texture(shape, dtype)
    return [np.roll(base, i, axis=1) for i in range(n)]


def _frames_dir(tmp_path: Path, n=4, shape=(48, 64), ext=".png", dtype=np.uint8) -> Path:
    return _write_frames(tmp_path / "frames", _series(n, shape, dtype), ext)[0].parent


def _truncate(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _refused(capsys, argv, *fragments, out: Path | None = None) -> str:
    """Run the CLI and check the failure contract; return the message."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    # one error line, last; anything before it is a plain warning line
    assert lines and lines[-1].startswith("focusdeep: error: "), err
    assert all(line.startswith("focusdeep: warning: ") for line in lines[:-1]), err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])
    if out is not None:
        assert not out.exists()
        assert not [p for p in out.parent.iterdir() if p.name.startswith("." + out.name)]
    return lines[-1]


# -- bad input: folders and frames --------------------------------------------------------
def test_empty_folder_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".DS_Store").write_bytes(b"\0")  # hidden files do not count
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", empty, "-o", out], "'empty' holds no image frames", out=out)


def test_one_frame_is_returned_unchanged(tmp_path, capsys):
    frame = _texture((40, 52, 3))
    folder = _write_frames(tmp_path / "one", [frame])[0].parent
    out = tmp_path / "o.png"
    assert main(["fuse", str(folder), "-o", str(out)]) == 0
    assert "1 frames" in capsys.readouterr().err
    np.testing.assert_array_equal(read_stack(out).frame(0), frame)
    # and with registration on, from Python
    res = fuse(frame[None], method="wavelet")
    np.testing.assert_array_equal(res.image, frame)
    np.testing.assert_array_equal(res.depth, 0)


@pytest.mark.parametrize(
    "odd, fragments",
    [
        (np.zeros((40, 64), np.uint8), ["f2.png", "64x40", "64x48"]),
        (np.zeros((48, 64, 3), np.uint8), ["f2.png", "3 channels (RGB)", "grayscale"]),
        (np.zeros((48, 64), np.uint16), ["f2.png", "uint16", "uint8"]),
    ],
    ids=["size", "channels", "dtype"],
)
def test_mismatched_frames_are_refused_naming_the_file(tmp_path, capsys, odd, fragments):
    folder = _frames_dir(tmp_path, n=4)
    (folder / "f2.png").unlink()
    _write_frames(tmp_path / "odd", [odd])[0].rename(folder / "f2.png")
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", folder, "-o", out], *fragments, out=out)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif"])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
def test_truncated_frame_is_refused_naming_the_file(tmp_path, capsys, ext, fraction):
    folder = _frames_dir(tmp_path, n=4, ext=ext)
    _truncate(folder / f"f1{ext}", fraction)
    out = tmp_path / "o.tif"
    # damaged headers are caught when the folder is opened, damaged pixels when
    # the frame is decoded: either way one line naming the file
    _refused(capsys, ["fuse", folder, "-o", out], f"frames/f1{ext}", out=out)


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("fraction", [0.3, 0.7, 0.95])
def test_truncated_tiff_stack_is_refused(tmp_path, capsys, compression, fraction):
    path = tmp_path / "stack.tif"
    frames = np.stack(_series(6, (40, 48)))
    tifffile.imwrite(path, frames, compression=compression)
    _truncate(path, fraction)
    # before this was checked, a truncated compressed stack opened as one frame and
    # "fused" without complaint
    with pytest.raises(ValueError, match=r"stack\.tif.*trunc"):
        read_stack(path).data.compute()
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", path, "-o", out], "stack.tif", out=out)


def _corrupt_page_data(path: Path, page: int) -> None:
    """Overwrite the compressed pixel data of one page with garbage (headers intact)."""
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[page].dataoffsets[0]
        count = tif.pages[page].databytecounts[0]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = bytes(RNG.integers(0, 256, count, dtype=np.uint8))
    path.write_bytes(bytes(data))


def test_damage_found_only_when_decoding_names_the_file(tmp_path, capsys):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack(_series(5, (40, 48))), compression="zlib")
    _corrupt_page_data(path, 3)
    stack = read_stack(path)  # the headers are fine: opening succeeds, lazily
    assert stack.n_frames == 5
    with pytest.raises(ValueError, match=r"cannot read '.*stack\.tif': the file is truncated or damaged"):
        fuse(stack, method="laplacian")
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", path, "-o", out], "stack.tif", "damaged", out=out)
    # the same inside a folder of TIFF frames
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for i, frame in enumerate(_series(3, (40, 48))):
        tifffile.imwrite(folder / f"f{i}.tif", frame, compression="zlib")
    _corrupt_page_data(folder / "f1.tif", 0)
    _refused(capsys, ["fuse", folder, "-o", out], "tiffs/f1.tif", "damaged", out=out)


def test_non_image_files_among_frames(tmp_path, capsys):
    folder = _frames_dir(tmp_path, n=3)
    # other extensions are ignored (see also test_io::test_folder_ignores_hidden_and_non_image_files)
    (folder / "notes.txt").write_text("focus series, 3 frames")
    (folder / "Thumbs.db").write_bytes(b"\0" * 64)
    out = tmp_path / "o.tif"
    assert main(["fuse", str(folder), "-o", str(out), "--no-register"]) == 0
    capsys.readouterr()
    # a file that claims to be an image but is not one is refused, by name
    (folder / "notes.png").write_text("not a picture")
    out2 = tmp_path / "o2.tif"
    _refused(capsys, ["fuse", folder, "-o", out2], "frames/notes.png", out=out2)


# -- bad input: values ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("method", METHODS)
def test_nan_and_inf_are_refused_naming_the_frame(method, bad):
    frames = np.stack(_series(4, (40, 48), np.float32))
    frames[2, 10, 11] = bad
    frames[2, 30, 7] = bad
    kind = "NaN" if np.isnan(bad) else "infinite"
    with pytest.raises(ValueError, match=rf"frame 2 of 'stack' holds 2 {kind} values"):
        fuse(frames, method=method, register=False)
    # with registration the frame is refused as soon as it is read
    with pytest.raises(ValueError, match=rf"frame 2 of 'stack' holds 2 {kind} values"):
        fuse(frames, method=method)


def test_nan_in_float_frames_names_the_file(tmp_path, capsys):
    frames = _series(3, (40, 48), np.float32)
    frames[1][5, 5] = np.nan
    folder = _write_frames(tmp_path / "floats", frames, ext=".tif")[0].parent
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", folder, "-o", out], "frame 1 ('f1.tif')", "1 NaN value", "nan_to_num", out=out)


@pytest.mark.parametrize("dtype, value", [(np.uint8, 7), (np.uint16, 60000), (np.float32, 0.25), (np.float32, -3.5)])
@pytest.mark.parametrize("method", METHODS)
def test_constant_frames_give_the_constant(method, dtype, value):
    frames = np.full((5, 33, 47), value, dtype)
    with pytest.warns(RegistrationWarning, match="no texture"):
        res = fuse(frames, method=method)  # registration on: it must fall back, not fail
    assert res.image.dtype == np.dtype(dtype) and res.image.shape == (33, 47)
    if np.dtype(dtype).kind == "f":
        np.testing.assert_allclose(res.image, value, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(res.image, value)
    assert np.isfinite(res.depth).all()


def test_constant_frames_at_the_cli_warn_in_plain_lines(tmp_path, capsys):
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, np.full((5, 20, 24), 9, np.uint8))
    out = tmp_path / "o.tif"
    assert main(["fuse", str(path), "-o", str(out)]) == 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith(("focusdeep: warning: ", "wrote ")) for line in lines), lines
    assert any("no texture" in line for line in lines)
    np.testing.assert_array_equal(tifffile.imread(out), 9)


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (2, 2), (3, 90), (90, 3)])
@pytest.mark.parametrize("method", METHODS)
def test_tiny_and_thin_images_with_registration(method, shape):
    frames = np.stack([RNG.integers(0, 256, shape + (3,), dtype=np.uint8) for _ in range(4)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fuse(frames, method=method)  # registration on (the default)
    assert res.image.shape == shape + (3,) and res.image.dtype == np.uint8
    assert frames.min() <= res.image.min() and res.image.max() <= frames.max()
    assert np.isfinite(res.depth).all() and res.depth.min() >= 0 and res.depth.max() <= 3
    # OpenCV's registration asserts on a 1-pixel side: such frames are fused as they are
    assert any("too small to register" in str(w.message) for w in caught)


def test_thin_frames_at_the_cli(tmp_path, capsys):
    folder = _write_frames(tmp_path / "line", [RNG.integers(0, 256, (1, 300), dtype=np.uint8) for _ in range(4)])[0].parent
    out = tmp_path / "o.png"
    assert main(["fuse", str(folder), "-o", str(out)]) == 0
    assert "too small to register" in capsys.readouterr().err
    assert read_stack(out).frame_shape == (1, 300)


# -- bad input: files and formats -----------------------------------------------------------
def test_ambiguous_5d_stack_asks_for_axes(tmp_path, capsys):
    path = tmp_path / "five.tif"
    data = RNG.integers(0, 256, (2, 3, 4, 16, 20), dtype=np.uint8)
    tifffile.imwrite(path, data)  # no metadata: tifffile calls the axes QQSYX
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", path, "-o", out], "five.tif", "cannot tell which is the focus (Z) axis", "--axes", out=out)
    _refused(capsys, ["info", path], "--axes")
    # told, it reads: 2 time points of 3 frames with 4 channels
    assert main(["fuse", str(path), "-o", str(out), "--axes", "TZCYX", "--no-register"]) == 0
    assert read_stack(out).data.shape == (2, 16, 20, 4)  # one fused image per time point
    assert main(["info", str(path), "--axes", "TZCYX"]) == 0
    capsys.readouterr()
    _refused(capsys, ["fuse", path, "-o", tmp_path / "o2.tif", "--axes", "ZYX"], "--axes 'ZYX' has 3 letters")


@pytest.mark.skipif(importlib.util.find_spec("bioio_czi") is not None, reason="bioio-czi installed")
def test_missing_plugin_names_the_extra_at_the_cli(tmp_path, capsys):
    path = tmp_path / "scan.czi"
    path.write_bytes(b"ZISRAWFILE" + b"\0" * 100)
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", path, "-o", out], "'formats' extra", "pip install 'napari-focusdeep[formats]'", out=out)


def test_unknown_format_is_refused_at_the_cli(tmp_path, capsys):
    path = tmp_path / "data.xyz"
    path.write_bytes(b"\0" * 64)
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", path, "-o", out], "data.xyz", "not a format", out=out)


def test_block_wise_fuse_without_scratch_space_is_refused(tmp_path, capsys, monkeypatch):
    """The frame cache needs the registered stack's size on disk; without it the CLI stops at once."""
    import shutil
    from collections import namedtuple

    frames = _frames_dir(tmp_path, n=3)
    real = shutil.disk_usage
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 100, 100) if "tmp" in str(p).lower() else real(p))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))  # gettempdir() is cached
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", frames, "-o", out, "--method", "laplacian", "--block-size", "16", "--no-register"],
             "TMPDIR", "GB", out=out)
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    "exc, fragments",
    [
        (MemoryError(), ["not enough memory", "--block-size"]),
        (ImportError("No module named 'torch'"), ["torch"]),
        (OSError(28, "No space left on device"), ["No space left"]),
        (ValueError("first line\nsecond line"), ["first line second line"]),
    ],
    ids=["memory", "import", "disk-full", "multi-line"],
)
def test_failures_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch, exc, fragments):
    import napari_focusdeep.fusion as fusion

    def fail(*args, **kwargs):
        raise exc

    monkeypatch.setattr(fusion, "fuse", fail)
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", _frames_dir(tmp_path, n=2), "-o", out], *fragments, out=out)


# -- safe model loading at the command line ------------------------------------------------
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_tampered_weights_are_refused_at_the_cli(tmp_path, capsys, damage):
    from napari_focusdeep.models.weights import WEIGHTS_DIR

    weights = tmp_path / "mine.safetensors"
    shutil.copy(WEIGHTS_DIR / "focusdeep-any.safetensors", weights)
    shutil.copy(WEIGHTS_DIR / "focusdeep-any.json", weights.with_suffix(".json"))
    data = bytearray(weights.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 1000]
    weights.write_bytes(bytes(data))
    out = tmp_path / "o.tif"
    _refused(capsys, ["fuse", _frames_dir(tmp_path, n=2), "-o", out, "--method", "focusdeep-any",
                      "--weights", weights, "--no-register"], "checksum", out=out)


def _damaged_weights(folder: Path, damage: str, name: str = "focusdeep-any") -> Path:
    """A copy of shipped weights, damaged: bytes changed, or a header that does not parse
    (with the checksum updated to match, so only the safetensors check can catch it)."""
    from napari_focusdeep.models.weights import WEIGHTS_DIR

    folder.mkdir(exist_ok=True)
    weights = folder / f"{name}.safetensors"
    data = bytearray((WEIGHTS_DIR / f"{name}.safetensors").read_bytes())
    cfg = json.loads((WEIGHTS_DIR / f"{name}.json").read_text())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data[8:12] = b"\xff\xfe\x00{"  # the JSON header no longer parses
        import hashlib

        cfg["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    weights.write_bytes(bytes(data))
    weights.with_suffix(".json").write_text(json.dumps(cfg))
    return weights


@pytest.mark.parametrize("where", ["given", "shipped"])
@pytest.mark.parametrize("damage, fragment", [("flip", "checksum mismatch"), ("header", "not a valid safetensors file")])
def test_bad_weights_are_refused_before_the_stack_is_read(tmp_path, capsys, monkeypatch, where, damage, fragment):
    """Damaged weights fail at once, not after the stack was read and registered (minutes)."""
    import napari_focusdeep.io as fio
    from napari_focusdeep.models import weights as W

    frames = _frames_dir(tmp_path, n=3)

    def too_early(*args, **kwargs):
        raise AssertionError("the stack was read before the weights were checked")

    monkeypatch.setattr(fio, "read_stack", too_early)
    weights = _damaged_weights(tmp_path / "w", damage)
    argv = ["fuse", frames, "-o", tmp_path / "o.tif", "--method", "focusdeep-any"]
    if where == "given":
        argv += ["--weights", weights]
    else:
        monkeypatch.setattr(W, "WEIGHTS_DIR", weights.parent)
    message = _refused(capsys, argv, "focusdeep-any.safetensors", fragment, out=tmp_path / "o.tif")
    assert "Traceback" not in message


def test_bad_weights_are_refused_before_registration(tmp_path, monkeypatch):
    """The Python API (and so the napari widget) checks the weights before registering."""
    import napari_focusdeep.registration as reg

    def too_early(*args, **kwargs):
        raise AssertionError("registration ran before the weights were checked")

    monkeypatch.setattr(reg, "iter_estimate_transforms", too_early)
    weights = _damaged_weights(tmp_path / "w", "flip")
    stack = np.stack(_series(3, (48, 64)))
    with pytest.raises(ValueError, match="checksum mismatch"):
        fuse(stack, method="focusdeep-any", weights=str(weights), register=True)


# -- interrupted runs leave nothing behind --------------------------------------------------
_SLOW_RUN = textwrap.dedent(
    """
    import dataclasses, sys, time
    from pathlib import Path
    from napari_focusdeep.cli import main
    from napari_focusdeep.fusion import get_method, register_method

    started = Path(sys.argv[1])
    base = get_method("laplacian")

    class Slow:  # the real method, slowed down so that the run can be caught mid-way
        def __init__(self, acc):
            self.acc = acc
        def add(self, frame, focus):
            started.touch()
            time.sleep(0.05)
            self.acc.add(frame, focus)
        def finish(self):
            return self.acc.finish()

    register_method(dataclasses.replace(base, name="slow", make=lambda n, shape, **o: Slow(base.make(n, shape, **o))))
    sys.exit(main(sys.argv[2:]))
    """
)


def test_killed_fuse_leaves_no_partial_output(tmp_path):
    """Ctrl-C (SIGINT), SIGTERM and SIGKILL in the middle of a block-wise fuse.

    The three runs go in parallel to keep the test short. Each gets its own
    output folder and TMPDIR; afterwards both must be empty: no output, no
    hidden temporary file of the atomic writer, no frame cache.
    """
    frames = _frames_dir(tmp_path, n=6, shape=(96, 128))
    script = tmp_path / "slow_fuse.py"
    script.write_text(_SLOW_RUN)
    runs = {}
    for sig in ("SIGINT", "SIGTERM", "SIGKILL"):
        root = tmp_path / sig
        outdir, tmpdir = root / "out", root / "tmp"
        outdir.mkdir(parents=True)
        tmpdir.mkdir()
        started = root / "started"
        # --block-size 48: several blocks, so the frames are first cached in a temporary file
        argv = [sys.executable, str(script), str(started), "fuse", str(frames), "-o", str(outdir / "fused.tif"),
                "--depth-map", str(outdir / "depth.tif"), "--method", "slow", "--block-size", "48", "--no-register"]
        env = {**os.environ, "TMPDIR": str(tmpdir)}
        # As from a terminal: a shell starts background jobs (a CI runner's, say) with
        # SIGINT ignored, and Python keeps an ignored SIGINT instead of raising
        # KeyboardInterrupt, so the child would finish instead of being interrupted.
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        runs[sig] = (proc, started, outdir, tmpdir)
    try:
        deadline = time.monotonic() + 120
        pending = dict(runs)
        while pending:
            for sig, (proc, started, _, tmpdir) in list(pending.items()):
                assert proc.poll() is None, (sig, proc.communicate())
                if started.exists():
                    assert not list(tmpdir.iterdir())  # the frame cache is unlinked once mapped
                    proc.send_signal(getattr(signal, sig))
                    del pending[sig]
            assert time.monotonic() < deadline, f"{sorted(pending)} never started fusing"
            time.sleep(0.01)
        errors = {sig: run[0].communicate(timeout=60)[1] for sig, run in runs.items()}
    finally:
        for proc, *_ in runs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for sig, (proc, _, outdir, tmpdir) in runs.items():
        err = errors[sig]
        expected = {"SIGINT": 130, "SIGTERM": 143, "SIGKILL": -signal.SIGKILL}[sig]
        assert proc.returncode == expected, (sig, err)
        if sig != "SIGKILL":
            assert err.strip().splitlines()[-1].endswith("no output was written"), err
            assert "Traceback" not in err
        assert list(outdir.iterdir()) == [], sig
        assert list(tmpdir.iterdir()) == [], sig


# -- resource limits -------------------------------------------------------------------------
_MEMORY_RUN = textwrap.dedent(
    """
    import json, sys, threading, time
    import numpy as np

    path, method, h, w, n, block = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:7])

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    # the stack, on disk: written frame by frame, never whole in memory
    rng = np.random.default_rng(0)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, h, w))
    tile = rng.integers(0, 256, (h, w), dtype=np.uint8)
    for z in range(n):
        mm[z] = np.roll(tile, 7 * z, axis=1)
    mm.flush()
    del mm

    from napari_focusdeep.fusion import fuse

    stack = np.load(path, mmap_mode="r")
    base = status("RssAnon")
    peak = [base]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], status("RssAnon"))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    start = time.perf_counter()
    sampler.start()
    result = fuse(stack, method=method, register=False, block_size=block)
    done.set()
    sampler.join()
    peak[0] = max(peak[0], status("RssAnon"))
    print(json.dumps({"growth": peak[0] - base, "base": base, "hwm": status("VmHWM"), "stack": n * h * w,
                      "seconds": time.perf_counter() - start, "blocks": result.info["blocks"]}))
    """
)


def _fuse_memory(tmp_path: Path, method: str, h: int, w: int, n: int, block: int) -> dict:
    """Fuse an n-frame memory-mapped uint8 stack in a fresh process; its memory use.

    ``growth`` is the peak of the *anonymous* resident memory (sampled every
    2 ms) above what the process held before fusing. File-backed pages of the
    memory-mapped stack and of the frame cache count in VmRSS/VmHWM too, but
    the kernel drops them under memory pressure; anonymous memory it cannot.
    """
    script = tmp_path / "memory_run.py"
    script.write_text(_MEMORY_RUN)
    stack = tmp_path / f"stack-{n}.npy"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script), str(stack), method, str(h), str(w), str(n), str(block)],
                          capture_output=True, text=True, env=env, timeout=600)
    stack.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    mib = {k: round(run[k] / 2**20) for k in ("stack", "growth", "base", "hwm")}
    print(f"{method} {n}x{h}x{w} block {block}: {mib} MiB, {run['seconds']:.1f} s")  # shown with -s
    return run


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_memory_does_not_grow_with_the_stack(tmp_path):
    """A memory-mapped stack fuses a frame at a time: memory is set by the block, not the stack.

    Scaled down to run in seconds; ``FOCUSDEEP_BIG_STACK=method,H,W,N,BLOCK,LIMIT_MB``
    runs one stack of any size against a limit (docs/reliability.md gives the
    1.5 GB run).
    """
    custom = os.environ.get("FOCUSDEEP_BIG_STACK")
    if custom:
        method, h, w, n, block, limit = custom.split(",")
        run = _fuse_memory(tmp_path, method, int(h), int(w), int(n), int(block))
        assert run["growth"] < int(limit) * 2**20, run
        return
    # pyramid, 512-pixel blocks: 2 frames or 16, the same memory
    small = _fuse_memory(tmp_path, "pyramid", 1024, 1024, 2, 512)
    large = _fuse_memory(tmp_path, "pyramid", 1024, 1024, 16, 512)
    assert small["blocks"] == large["blocks"] == 4
    assert large["growth"] < small["growth"] + 8 * 2**20, (small, large)
    # a stack three times larger than the memory used to fuse it
    big = _fuse_memory(tmp_path, "laplacian", 1024, 1024, 128, 512)
    assert big["growth"] < big["stack"] / 2, big
