"""The scratch copy of a stack that block-wise fusion reads its blocks from."""
from __future__ import annotations

import dataclasses
import os
import shutil
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from napari_focusdeep.fusion import fuse
from napari_focusdeep.fusion import core as fusion_core
from napari_focusdeep.fusion._spill import FrameSpill, SpillSpaceError
from napari_focusdeep.fusion.core import memory_block_size
from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_regions_read_back_what_was_written(tmp_path, dtype):
    rng = np.random.default_rng(0)
    frames = (rng.random((4, 37, 53, 3)) * 1000).astype(dtype)
    with FrameSpill(frames.shape, dtype, directory=tmp_path) as spill:
        for z in (2, 0, 3, 1):  # any order
            spill.write(z, frames[z])
        for z, y0, y1, x0, x1 in [(0, 0, 37, 0, 53), (1, 5, 20, 0, 53), (2, 3, 30, 7, 41), (3, 36, 37, 52, 53)]:
            region = spill.read(z, y0, y1, x0, x1)
            assert region.dtype == dtype and region.flags.c_contiguous
            np.testing.assert_array_equal(region, frames[z, y0:y1, x0:x1])
        with pytest.raises(ValueError, match="does not fit"):
            spill.write(0, frames[0, :10])


@pytest.mark.skipif(os.name == "nt", reason="Windows cannot unlink an open file; close() removes it")
def test_the_file_is_gone_while_in_use_and_after(tmp_path):
    spill = FrameSpill((2, 8, 8, 1), np.uint8, directory=tmp_path)
    spill.write(0, np.ones((8, 8, 1), np.uint8))
    assert list(tmp_path.iterdir()) == []  # unlinked at once: a killed process leaves nothing
    spill.close()
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(SpillSpaceError, match="TMPDIR"):
        FrameSpill((10, 100, 100, 3), np.uint8, directory=tmp_path)
    assert list(tmp_path.iterdir()) == []


def _rss_file() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no RssFile")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux /proc")
def test_reading_does_not_keep_the_stack_resident(tmp_path):
    """A memory map would keep every page it read in the process's RSS (48 MB here)."""
    n, h, w = 16, 512, 1024
    frame = np.random.default_rng(1).integers(0, 256, (h, w, 3), dtype=np.uint8)
    before = _rss_file()
    with FrameSpill((n, h, w, 3), np.uint8, directory=tmp_path) as spill:
        for z in range(n):
            spill.write(z, frame)
        for z in range(n):
            for x0 in (0, 512):
                assert spill.read(z, 0, h, x0, x0 + 512).shape == (h, 512, 3)
        grown = _rss_file() - before
    assert grown < 8 * 2**20, grown


# -- choosing blocks when the whole image would not fit ------------------------------------
def test_memory_block_size():
    assert memory_block_size((3000, 4000, 3), available=64 * 10**9) is None
    assert memory_block_size((3000, 4000, 3), available=1 * 10**9) == 1024
    # a frame no larger than one block gains nothing from blocks
    assert memory_block_size((1000, 1000, 3), available=10**6) is None


def test_fusion_falls_back_to_blocks_when_memory_is_short(monkeypatch):
    sharp, depth = synthetic_scene((300, 1100), channels=3, seed=2)
    frames = simulate_stack(sharp, depth, 4, noise="low", dtype=np.uint8, seed=2, max_blur=6.0).frames
    whole = fuse(frames, register=False)
    assert whole.info["blocks"] == 1
    monkeypatch.setattr(fusion_core, "_WHOLE_IMAGE_BYTES", 10**6)  # "needs" 1.6 TB
    blocked = fuse(frames, register=False)
    assert blocked.info["blocks"] > 1 and blocked.info["block_size"] == 1024
    np.testing.assert_array_equal(blocked.image, whole.image)
    assert np.abs(blocked.depth - whole.depth).max() < 1e-4


def test_no_automatic_blocks_for_a_method_without_a_declared_halo(monkeypatch):
    """A third-party method that does not say what context its blocks need is never
    split by fuse's own choice (its blocks could show seams); asked-for blocks still apply."""
    from napari_focusdeep.fusion import registry
    from napari_focusdeep.fusion.laplacian import _halo

    laplacian = registry.get_method("laplacian")
    plain = dataclasses.replace(laplacian, name="test-no-halo", halo=registry.Method.halo)
    declared = dataclasses.replace(laplacian, name="test-halo", halo=_halo)
    assert not registry.declares_halo(plain) and registry.declares_halo(declared)
    monkeypatch.setitem(registry._REGISTRY, plain.name, plain)
    monkeypatch.setitem(registry._REGISTRY, declared.name, declared)
    sharp, depth = synthetic_scene((300, 1100), channels=3, seed=2)
    frames = simulate_stack(sharp, depth, 3, noise="low", dtype=np.uint8, seed=2, max_blur=6.0).frames
    monkeypatch.setattr(fusion_core, "_WHOLE_IMAGE_BYTES", 10**6)
    assert fuse(frames, method="test-no-halo", register=False).info["blocks"] == 1
    assert fuse(frames, method="test-halo", register=False).info["blocks"] > 1
    assert fuse(frames, method="test-no-halo", register=False, block_size=512).info["blocks"] > 1


def test_automatic_blocks_without_scratch_space_fall_back_to_the_whole_image(monkeypatch):
    sharp, depth = synthetic_scene((300, 1100), channels=3, seed=2)
    frames = simulate_stack(sharp, depth, 3, noise="low", dtype=np.uint8, seed=2, max_blur=6.0).frames
    whole = fuse(frames, register=False)
    monkeypatch.setattr(fusion_core, "_WHOLE_IMAGE_BYTES", 10**6)

    def no_space(*args, **kwargs):
        raise SpillSpaceError("no room for the scratch copy")

    monkeypatch.setattr(fusion_core, "FrameSpill", no_space)
    with pytest.warns(ResourceWarning, match="whole image"):
        fallback = fuse(frames, register=False)
    assert fallback.info["blocks"] == 1
    np.testing.assert_array_equal(fallback.image, whole.image)
    # blocks the caller asked for are not second-guessed
    with pytest.raises(SpillSpaceError):
        fuse(frames, register=False, block_size=256)
