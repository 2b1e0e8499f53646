"""``focusdeep batch`` on dask.distributed: discovery, naming, resume, failures, exit codes,
distributed block-wise fusion and per-worker model reuse."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_focusdeep import batch as B
from napari_focusdeep.cli import main
from napari_focusdeep.fusion import fuse
from napari_focusdeep.io import read_stack, write_image, write_stack
from napari_focusdeep.training.simulate import simulate_stack, synthetic_scene

distributed = pytest.importorskip("distributed")


# -- data ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sims():
    """Three different small RGB brackets (uint8), with a little camera shake."""
    out = []
    for seed in (1, 2, 3):
        sharp, depth = synthetic_scene((48, 64), channels=3, seed=seed)
        out.append(simulate_stack(sharp, depth, 4, shake=0.6, dtype=np.uint8, seed=seed).frames)
    return out


def make_plate(root: Path, sims) -> Path:
    """plate/A1, plate/A2: folders of PNG frames; plate/B2.tif: a multi-page TIFF;
    plate/tl.tif: a time-lapse (T=2) hyperstack."""
    plate = root / "plate"
    for name, frames in (("A1", sims[0]), ("A2", sims[1])):
        (plate / name).mkdir(parents=True)
        for i, f in enumerate(frames):
            write_image(plate / name / f"frame_{i}.png", f)
    write_stack(plate / "B2.tif", sims[2])
    write_stack(plate / "tl.tif", np.stack([sims[0], sims[2]]), axes="TZYXC")
    return plate


@pytest.fixture()
def plate(tmp_path, sims):
    return make_plate(tmp_path, sims)


@pytest.fixture(scope="module")
def scheduler():
    """A 2-worker in-process cluster: starts in a fraction of a second, reached by address."""
    import logging

    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster:
        yield cluster.scheduler_address


def fused(path) -> np.ndarray:
    return fuse(read_stack(path)).image


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def summary_rows(out: str) -> dict[str, str]:
    """stack name -> status column of the summary table."""
    rows = {}
    for line in out.strip().splitlines()[1:-1]:
        parts = line.split(None, 3)
        rows[parts[0]] = parts[3]
    return rows


# -- the whole thing, on real worker processes -------------------------------------------
def test_batch_plate_on_two_worker_processes(plate, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["batch", plate, "-o", out, "--workers", 2], capsys)
    assert code == 0, err
    names = {"A1", "A2", "B2", "tl_t0", "tl_t1"}
    assert {p.stem for p in out.iterdir()} == names
    assert set(summary_rows(stdout)) == names
    assert all(s == "fused" for s in summary_rows(stdout).values())
    assert "2 worker(s)" in err
    # each output is exactly what `fuse` makes of that stack (or time point)
    np.testing.assert_array_equal(tifffile.imread(out / "A1.tif"), fused(plate / "A1"))
    np.testing.assert_array_equal(tifffile.imread(out / "B2.tif"), fused(plate / "B2.tif"))
    tl = read_stack(plate / "tl.tif")
    for t in (0, 1):
        np.testing.assert_array_equal(tifffile.imread(out / f"tl_t{t}.tif"), fuse(tl.timepoint(t)).image)
    assert tifffile.imread(out / "A1.tif").shape == (48, 64, 3)


# -- discovery and naming ----------------------------------------------------------------
def test_discovery_rules_and_names(tmp_path, sims):
    plate = tmp_path / "plate"
    (plate / "A1" / "thumbs").mkdir(parents=True)
    for i, f in enumerate(sims[0]):
        write_image(plate / "A1" / f"frame_{i}.png", f)
    write_image(plate / "A1" / "thumbs" / "t.png", sims[0][0])
    (plate / "B").mkdir()
    write_stack(plate / "B" / "pos1.tif", sims[1])
    write_image(plate / "B" / "overview.png", sims[1][0])
    (plate / "notes.txt").write_text("not an image")
    (plate / "out").mkdir()  # the output folder inside the input is never searched
    write_stack(plate / "out" / "old.tif", sims[1])
    notes: list[str] = []
    found = B.discover_stacks([plate, plate / "B" / "pos1.tif"], exclude=[plate / "out"], note=notes.append)
    assert [(s.name, s.path) for s in found] == [("A1", plate / "A1"), ("B_pos1", plate / "B" / "pos1.tif")]
    assert any("sub-folder" in n for n in notes) and any("overview.png" in n for n in notes)
    # a folder of frames given directly is one stack named after the folder
    assert [s.name for s in B.discover_stacks([plate / "A1"])] == ["A1"]


def test_time_point_names_are_zero_padded(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (11, 2, 16, 16), dtype=np.uint8)
    write_stack(tmp_path / "lapse.tif", frames, axes="TZYX")
    tasks, failed = B.plan_batch(B.discover_stacks([tmp_path / "lapse.tif"]), tmp_path / "o", fmt="png")
    assert not failed
    assert [t.name for t in tasks] == [f"lapse_t{t:02d}" for t in range(11)]
    assert [t.timepoint for t in tasks] == list(range(11))
    assert tasks[3].output == tmp_path / "o" / "lapse_t03.png" and tasks[3].frames == 2


def test_time_points_fuse_separately_through_the_cli(plate, tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(["batch", plate / "tl.tif", "-o", out, "--scheduler", scheduler, "--format", "png"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["tl_t0.png", "tl_t1.png"]
    import cv2

    t0 = cv2.imread(str(out / "tl_t0.png"))[..., ::-1]
    t1 = cv2.imread(str(out / "tl_t1.png"))[..., ::-1]
    assert not np.array_equal(t0, t1)  # two different time points, not one fused twice
    np.testing.assert_array_equal(t0, fused(plate / "A1"))  # time point 0 holds A1's frames


# -- resume ------------------------------------------------------------------------------
def test_resume_skips_finished_outputs_and_cleans_stray_temp_files(plate, tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    out.mkdir()
    # a previous run finished A1 (this content proves it is kept as it is) ...
    sentinel = np.full((48, 64, 3), 7, np.uint8)
    write_image(out / "A1.tif", sentinel)
    before = (out / "A1.tif").stat().st_mtime_ns
    # ... and was killed while writing B2: only its hidden temporary file is there
    stray = out / ".B2.tif.0badc0de.tmp.tif"
    stray.write_bytes(b"half a tiff")
    unrelated = out / ".keep-me"
    unrelated.write_text("not ours")
    code, stdout, err = run_cli(["batch", plate, "-o", out, "--scheduler", scheduler], capsys)
    assert code == 0, err
    rows = summary_rows(stdout)
    assert rows["A1"].startswith("skipped") and rows["B2"] == "fused"
    assert (out / "A1.tif").stat().st_mtime_ns == before
    np.testing.assert_array_equal(tifffile.imread(out / "A1.tif"), sentinel)
    np.testing.assert_array_equal(tifffile.imread(out / "B2.tif"), fused(plate / "B2.tif"))
    assert not stray.exists() and unrelated.exists()
    assert "removed 1 unfinished" in err
    # a second rerun has nothing to do; --overwrite redoes everything
    code, stdout, _ = run_cli(["batch", plate, "-o", out, "--scheduler", scheduler], capsys)
    assert code == 0 and all(s.startswith("skipped") for s in summary_rows(stdout).values())
    code, stdout, _ = run_cli(["batch", plate, "-o", out, "--scheduler", scheduler, "--overwrite"], capsys)
    assert code == 0 and all(s == "fused" for s in summary_rows(stdout).values())
    np.testing.assert_array_equal(tifffile.imread(out / "A1.tif"), fused(plate / "A1"))


def test_interrupted_batch_resumes(plate, tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    tasks, _ = B.plan_batch(B.discover_stacks([plate]), out)
    seen = []

    def stop_after_first(res):
        seen.append(res)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with B.batch_client(workers=1, processes=False) as client:
            B.run_batch(tasks, B.FuseSettings(), client, progress=stop_after_first)
    # closing the cluster waited for the task that was running; queued ones were cancelled
    done = {p.stem for p in out.iterdir() if not p.name.startswith(".")}
    assert seen[0].name in done and len(done) < len(tasks)
    code, stdout, err = run_cli(["batch", plate, "-o", out, "--scheduler", scheduler], capsys)
    assert code == 0, err
    rows = summary_rows(stdout)
    assert {n for n, s in rows.items() if s.startswith("skipped")} == done
    assert {n for n, s in rows.items() if s == "fused"} == {t.name for t in tasks} - done


# -- failures ----------------------------------------------------------------------------
def test_corrupt_stacks_are_reported_and_the_rest_are_written(plate, tmp_path, scheduler, capsys):
    png = plate / "A2" / "frame_2.png"
    png.write_bytes(png.read_bytes()[:120])  # header intact, pixels cut off: fails on the worker
    (plate / "bad.tif").write_bytes(b"this is not a TIFF" * 8)  # fails when its header is read
    out = tmp_path / "out"
    code, stdout, err = run_cli(["batch", plate, "-o", out, "--scheduler", scheduler], capsys)
    assert code == 1
    rows = summary_rows(stdout)
    assert rows["A2"].startswith("failed") and "frame_2.png" in rows["A2"]
    assert rows["bad"].startswith("failed") and "bad.tif" in rows["bad"]
    assert rows["A1"] == rows["B2"] == rows["tl_t0"] == "fused"
    assert {p.stem for p in out.iterdir()} == {"A1", "B2", "tl_t0", "tl_t1"}
    assert "2 failed" in stdout and "Traceback" not in err + stdout


def test_failed_result_keeps_the_worker_traceback(tmp_path, sims, scheduler):
    (tmp_path / "s").mkdir()
    write_stack(tmp_path / "s" / "x.tif", sims[0])
    tasks, _ = B.plan_batch(B.discover_stacks([tmp_path / "s"]), tmp_path / "o")
    with B.batch_client(scheduler) as client:
        [res] = B.run_batch(tasks, B.FuseSettings(reference=99), client)
    assert res.status == "failed" and res.worker and "Traceback" in res.detail


# -- usage errors ------------------------------------------------------------------------
def _code(argv) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as exc:
        return int(exc.code)


def test_usage_errors_exit_2(plate, tmp_path, capsys, sims):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        write_stack(tmp_path / d / "same.tif", sims[0])
    cases = [
        ["batch", tmp_path / "missing", "-o", out],
        ["batch", plate, "-o", out, "--workers", 2, "--scheduler", "tcp://x:1"],
        ["batch", plate, "-o", out, "--format", ".bmp"],
        ["batch", plate, "-o", tmp_path / "afile"],
        ["batch", plate, "-o", out, "--method", "nonsense"],
        ["batch", tmp_path / "empty", "-o", out],
        ["batch", tmp_path / "a" / "same.tif", tmp_path / "b" / "same.tif", "-o", out],
        ["batch", plate, "-o", out, "--device", "tpu"],
        ["batch", plate, "-o", out, "--workers", 0],
        ["batch", plate],
    ]
    for argv in cases:
        assert _code(argv) == 2, argv
        err = capsys.readouterr().err
        assert "Traceback" not in err, argv
    assert not out.exists()  # nothing was started


def test_unreachable_scheduler_is_a_usage_error():
    with pytest.raises(B.BatchUsageError, match="cannot reach the dask scheduler"):
        with B.batch_client("tcp://127.0.0.1:9", connect_timeout=1):
            pass


# -- huge images: blocks as distributed tasks ----------------------------------------------
def test_blocks_as_distributed_tasks_equal_block_wise_fuse(tmp_path, scheduler):
    sharp, depth = synthetic_scene((160, 200), channels=1, seed=5)
    frames = simulate_stack(sharp, depth, 5, shake=1.0, dtype=np.uint16, seed=5).frames
    write_stack(tmp_path / "big.tif", frames)
    stack = read_stack(tmp_path / "big.tif")
    ref = fuse(stack, method="laplacian", block_size=64)
    with B.batch_client(scheduler) as client:
        got = B.fuse_blocks_distributed(tmp_path / "big.tif", client, method="laplacian", block_size=64, scratch=tmp_path)
    assert got.info["blocks"] == ref.info["blocks"] > 1
    np.testing.assert_array_equal(got.image, ref.image)
    np.testing.assert_array_equal(got.depth, ref.depth)
    assert got.image.dtype == np.uint16 and got.valid_region == ref.valid_region
    assert not list(tmp_path.glob(".focusdeep-blocks-*"))  # scratch removed


def test_distribute_blocks_through_the_cli(plate, tmp_path, scheduler, capsys):
    out = tmp_path / "out"
    # Without registration: ECC under load may differ in the last bits between two runs
    # (once seen), and what is tested here is the distribution of the blocks.
    argv = ["batch", plate / "B2.tif", "-o", out, "--scheduler", scheduler, "--distribute-blocks",
            "--block-size", 16, "--method", "laplacian", "--no-register"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    ref = fuse(read_stack(plate / "B2.tif"), method="laplacian", block_size=16, register=False)
    assert ref.info["blocks"] > 1
    np.testing.assert_array_equal(tifffile.imread(out / "B2.tif"), ref.image)


# -- GPU-style workers: one model per worker ------------------------------------------------
def _count_model_loads():
    """Runs on each worker: wrap load_model with a counter."""
    from napari_focusdeep.models import weights

    original = weights.load_model
    weights._batch_test_loads = 0

    def counting(*args, **kwargs):
        weights._batch_test_loads += 1
        return original(*args, **kwargs)

    weights.load_model = counting
    return os.getpid()


def _model_loads():
    from napari_focusdeep.models import weights

    return weights._batch_test_loads


def test_a_worker_process_loads_the_model_once(tmp_path):
    pytest.importorskip("torch")
    import cloudpickle

    cloudpickle.register_pickle_by_value(__import__(__name__))
    rng = np.random.default_rng(0)
    for i in range(3):
        (tmp_path / "in" / f"s{i}").mkdir(parents=True)
        for z in range(2):
            write_image(tmp_path / "in" / f"s{i}" / f"f{z}.png", rng.integers(0, 255, (24, 32, 3), dtype=np.uint8))
    tasks, _ = B.plan_batch(B.discover_stacks([tmp_path / "in"]), tmp_path / "out")
    settings = B.FuseSettings(method="focusdeep-any", register=False, options={"device": "cpu"})
    with B.batch_client(workers=1, processes=True) as client:
        [pid] = client.run(_count_model_loads).values()
        results = B.run_batch(tasks, settings, client)
        [loads] = client.run(_model_loads).values()
    assert pid != os.getpid()
    assert [r.status for r in results] == ["fused"] * 3, [r.message for r in results]
    assert loads == 1  # three stacks on one worker process: the network was loaded once


# -- pieces --------------------------------------------------------------------------------
def test_summary_table_and_format_names():
    rows = [
        B.TaskResult("A1", None, 6, 1.234, "fused"),
        B.TaskResult("bad", None, 0, float("nan"), "failed", "cannot read it"),
        B.TaskResult("A2", None, 6, float("nan"), "skipped", "output exists"),
    ]
    text = B.format_summary(rows)
    lines = text.splitlines()
    assert lines[0].split() == ["stack", "frames", "seconds", "status"]
    assert lines[1].split() == ["A1", "6", "1.2", "fused"]
    assert lines[2].split(None, 3) == ["bad", "-", "-", "failed: cannot read it"]
    assert lines[-1] == "1 fused, 1 skipped (already done), 1 failed"
    assert B.normalise_format("TIF") == ".tif" and B.normalise_format(".ome.tif") == ".ome.tif"
    with pytest.raises(B.BatchUsageError):
        B.normalise_format("gif")
