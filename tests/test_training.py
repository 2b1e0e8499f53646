"""The trainer, its checkpoints, a lab's own data, and fine-tuning from the shipped weights.

Tiny networks (8 features, one block each) on 48-pixel crops keep the file fast.
"""
from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_focusdeep.io import write_image  # noqa: E402
from napari_focusdeep.training.data import (  # noqa: E402
    PHOTO_SOURCES,
    SimConfig,
    StackCrops,
    load_training_folder,
    make_pseudo_gt,
    psnr,
    simulated_pair,
)
from napari_focusdeep.training.simulate import psf_kernel, simulate_stack, synthetic_scene  # noqa: E402
from napari_focusdeep.training.train import (  # noqa: E402
    MIX_2026_11_27,
    TrainConfig,
    build_parser,
    config_from_args,
    load_checkpoint,
    train,
)

TINY = {"features": 8, "front_blocks": 1, "groups": 1, "blocks_per_group": 1}


# every test runs torch on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_cfg(**kw) -> TrainConfig:
    base = dict(
        model=dict(TINY), steps=4, batch_size=2, crop=48, frames=(3, 4), val_every=100, val_count=2,
        device="cpu", seed=3, lr=1e-3,
    )
    base.update(kw)
    return TrainConfig(**base)


def sim_val(n: int = 2, crop: int = 48, frames: int = 3) -> list:
    rng = np.random.default_rng(99)
    cfg = SimConfig(crop=crop, frames=(frames, frames))
    return [simulated_pair(rng, cfg, frames) for _ in range(n)]


def checkpoint_model(out: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(out / "checkpoint.safetensors")).items() if k.startswith("model.")}


# -- the loop --------------------------------------------------------------------------
def test_overfitting_one_batch_reduces_the_loss(tmp_path):
    rng = np.random.default_rng(0)
    # a fixed mix of sources, so the batch does not change when the training mix grows
    cfg_sim = SimConfig(crop=40, frames=(3, 3), noise=False, photos=PHOTO_SOURCES, scenes=("mixed", "fractal", "cells", "fibres", "text"))
    pairs = [simulated_pair(rng, cfg_sim, 3) for _ in range(2)]
    batch = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    losses = []
    res = train(
        tiny_cfg(steps=12, crop=40, lr=5e-3, min_lr=5e-3), tmp_path, batches=itertools.repeat(batch), val=pairs[:1],
        progress=lambda p: losses.append(p.step_loss), log=lambda s: None,
    )
    assert res.step == 12 and len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses


@pytest.mark.parametrize("source", ["simulated", "crops"])
def test_resume_continues_the_same_run_exactly(tmp_path, source):
    val = sim_val(1)
    crops = None
    if source == "crops":
        stack, gt = _sim_stack(64, 4, seed=5)
        crops = StackCrops([stack], [gt], crop=48)

    def run(out, stop_at=None):
        stop = threading.Event()

        def progress(p):
            if stop_at is not None and p.step >= stop_at:
                stop.set()

        return train(tiny_cfg(), out, batches=crops, val=val, progress=progress, stop=stop, log=lambda s: None)

    straight = run(tmp_path / "a")
    first = run(tmp_path / "b", stop_at=2)
    assert (first.step, first.stopped) == (2, "stopped")
    mid = checkpoint_model(tmp_path / "b")
    second = run(tmp_path / "b")
    assert (straight.step, second.step) == (4, 4)
    a, b = checkpoint_model(tmp_path / "a"), checkpoint_model(tmp_path / "b")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # and the run really moved after resuming: step 4 differs from step 2
    assert any(not torch.equal(a[k], mid[k]) for k in a)


def test_checkpoints_hold_no_pickle(tmp_path):
    from safetensors import safe_open

    train(tiny_cfg(steps=1), tmp_path, val=sim_val(1), log=lambda s: None)
    ck = tmp_path / "checkpoint.safetensors"
    assert ck.read_bytes()[:2] not in (b"\x80\x02", b"\x80\x04", b"PK")  # not pickle, not torch's zip
    with safe_open(str(ck), framework="pt") as f:
        keys = list(f.keys())
    assert any(k.startswith("model.") for k in keys) and any(k.startswith("optim.") for k in keys)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["step"] == 1 and meta["config"]["architecture"] == "focusdeep-any"
    json.loads((tmp_path / "focusdeep-any.json").read_text())
    # weights with no checkpoint beside them are not replaced unless asked
    ck.rename(tmp_path / "moved.safetensors")
    with pytest.raises(ValueError, match="no checkpoint to resume"):
        train(tiny_cfg(steps=1), tmp_path, val=sim_val(1), log=lambda s: None)
    # pickled files are refused, as checkpoints and as starting weights, even when they exist
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"\x80\x04not really")
    model = torch.nn.Linear(1, 1)
    with pytest.raises(ValueError, match="safetensors"):
        load_checkpoint(bad, model, torch.optim.Adam(model.parameters()))
    with pytest.raises(ValueError, match="safetensors"):
        train(tiny_cfg(steps=1, init_weights=str(bad)), tmp_path / "x", val=sim_val(1), log=lambda s: None)


def test_stop_event_ends_at_the_next_step_with_a_checkpoint(tmp_path):
    stop = threading.Event()
    res = train(
        tiny_cfg(steps=50), tmp_path, val=sim_val(1), stop=stop, log=lambda s: None,
        progress=lambda p: stop.set(),
    )
    assert (res.step, res.stopped) == (1, "stopped")
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 1
    assert res.weights is not None and res.weights.exists()


def test_early_stop_after_patience_validations_without_gain(tmp_path):
    # a zero learning rate cannot improve the validation score: patience 2 stops at step 3
    res = train(
        tiny_cfg(steps=20, lr=0.0, min_lr=0.0, val_every=1, patience=2), tmp_path, val=sim_val(1), log=lambda s: None
    )
    assert (res.stopped, res.step) == ("early-stop", 3)
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["bad_vals"] == 2


def test_freeze_keeps_the_named_parts_fixed(tmp_path):
    res = train(tiny_cfg(steps=2, freeze=("extract", "align")), tmp_path, val=sim_val(1), log=lambda s: None)
    assert res.step == 2
    with pytest.raises(ValueError, match="nothing to freeze named 'nope'"):
        train(tiny_cfg(steps=1, freeze=("nope",)), tmp_path / "x", val=sim_val(1), log=lambda s: None)


# -- the command line and fusion with the result --------------------------------------
def test_focusdeep_train_cli_writes_weights_fuse_accepts(tmp_path, capsys):
    from napari_focusdeep.cli import main
    from napari_focusdeep.fusion import fuse
    from napari_focusdeep.training.simulate import sample_stack

    out = tmp_path / "run"
    rc = main([
        "train", "-o", str(out), "--model", json.dumps(TINY), "--steps", "2", "--batch-size", "2", "--crop", "48",
        "--frames", "3", "4", "--val-every", "1", "--val-count", "1", "--device", "cpu",
    ])
    assert rc == 0
    weights = out / "focusdeep-any.safetensors"
    assert weights.exists() and (out / "log.jsonl").read_text().count("\n") == 2
    sim = sample_stack((48, 64), 4, noise=None, seed=1)
    # options that only make sense with --data are refused with one line
    for extra in (["--pseudo-gt", "pyramid"], ["--noise-level", "low"]):
        assert main(["train", "-o", str(tmp_path / "x"), *extra]) == 2
        assert "--data" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    res = fuse(sim.frames, method="focusdeep-any", weights=str(weights), register=False, device="cpu")
    assert res.image.shape == sim.frames.shape[1:] and res.image.dtype == sim.frames.dtype


def test_train_arguments_pick_fine_tuning_defaults():
    from napari_focusdeep.training.train import FINETUNE_LR, PRETRAIN_LR, build_parser, config_from_args

    def cfg(*argv):
        return config_from_args(build_parser().parse_args(["-o", "run", *argv]))

    assert (cfg().lr, cfg().init_weights, cfg().data) == (PRETRAIN_LR, "auto", None)
    c = cfg("--data", "lab", "--pseudo-gt", "pyramid", "--reference", "2", "--noise-level", "medium")
    assert (c.lr, c.data, c.pseudo_gt, c.reference, c.noise) == (FINETUNE_LR, "lab", "pyramid", 2, "medium")
    assert cfg("--data", "lab", "--init", "none").lr == PRETRAIN_LR
    assert cfg("--data", "lab", "--lr", "1e-3").lr == 1e-3
    assert cfg("--freeze", "extract, align", "--clock", "cpu").freeze == ("extract", "align")


# -- a lab's own data ------------------------------------------------------------------
def _sim_stack(size: int, n: int, seed: int, **kw):
    sharp, depth = synthetic_scene((size, size), seed=seed)
    sim = simulate_stack(sharp, depth, n, max_blur=4.0, layers=6, seed=seed, dtype=np.uint8, **kw)
    return sim.frames, sim.sharp


def _write_stack_folder(folder: Path, frames: np.ndarray, gt: np.ndarray | None, gt_name: str = "ground_truth.tif"):
    folder.mkdir(parents=True)
    for i, f in enumerate(frames):
        write_image(folder / f"frame_{i:02d}.png", f)
    if gt is not None:
        write_image(folder / gt_name, gt)


def test_load_training_folder_registers_and_pairs(tmp_path):
    data = tmp_path / "data"
    sharp, depth = synthetic_scene((72, 80), seed=1)
    sim = simulate_stack(sharp, depth, 5, breathing=0.04, shake=0.6, max_blur=4.0, layers=6, dtype=np.uint8, seed=1)
    _write_stack_folder(data / "a", sim.frames, sim.sharp)
    write_image(data / "a" / "depth.tif", sim.depth)  # as `focusdeep simulate` writes: not a frame
    f2, g2 = _sim_stack(64, 4, seed=2)
    write_image(data / "b.tif", f2)  # a multi-frame TIFF with its ground truth beside it
    write_image(data / "b_gt.png", (g2 * 255).round().astype(np.uint8))
    got = load_training_folder(data)
    assert got.names == ["a", "b"] and got.pseudo == [False, False]
    a, ta = got.stacks[0], got.targets[0]
    assert a.shape[0] == 5 and a.dtype == np.uint8 and a.shape[1:] == ta.shape
    # breathing shrinks the region every registered frame covers; the reference (middle) frame
    # is not warped, so it still matches the raw frame where the crop puts it
    assert a.shape[1] < 72 and a.shape[2] < 80
    raw_ref = sim.frames[2].astype(float)
    h, w = a.shape[1:3]
    offsets = [(y, x) for y in range(72 - h + 1) for x in range(80 - w + 1)]
    errs = [np.abs(raw_ref[y : y + h, x : x + w] - a[2]).mean() for y, x in offsets]
    assert min(errs) < 0.5
    y, x = offsets[int(np.argmin(errs))]
    assert np.allclose(ta, sim.sharp[y : y + h, x : x + w])
    assert got.stacks[1].shape[0] == 4 and got.stacks[1].shape[1:] == got.targets[1].shape


def test_stacks_without_ground_truth_need_pseudo_gt(tmp_path):
    data = tmp_path / "data"
    f, g = _sim_stack(64, 4, seed=3)
    _write_stack_folder(data / "with", f, g, gt_name="gt.tif")
    _write_stack_folder(data / "without", f, None)
    with pytest.raises(ValueError, match="--pseudo-gt pyramid"):
        load_training_folder(data, register=False)
    got = load_training_folder(data, pseudo_gt="pyramid", register=False)
    assert got.pseudo == [False, True]
    assert np.allclose(got.targets[1], make_pseudo_gt(f), atol=1e-6)
    with pytest.raises(FileNotFoundError):
        load_training_folder(tmp_path / "missing")


def test_make_pseudo_gt_is_our_pyramid_fuse():
    from napari_focusdeep.fusion import fuse

    f, g = _sim_stack(64, 5, seed=4)
    pgt = make_pseudo_gt(f)
    assert pgt.dtype == np.float32 and pgt.shape == g.shape and 0 <= pgt.min() and pgt.max() <= 1
    ref = fuse(f, method="pyramid", register=False).image.astype(np.float32) / 255
    assert np.allclose(pgt, ref, atol=1e-6)
    # a pseudo ground truth is far closer to the truth than any single frame
    assert psnr(pgt, g) > max(psnr(fr.astype(np.float32) / 255, g) for fr in f) + 3
    with pytest.raises(ValueError, match="pseudo ground truth"):
        make_pseudo_gt(f, method="focusdeep")


def test_stack_crops_shapes_determinism_and_split():
    rng = np.random.default_rng(0)
    gray = (rng.random((6, 70, 90)) * 65535).astype(np.uint16)
    crops = StackCrops([gray], [gray[3]], crop=48, noise=False, frames=4)
    b, t = crops.batch(0, 3)
    assert b.shape == (3, 4, 3, 48, 48) and t.shape == (3, 3, 48, 48)
    assert b.dtype == t.dtype == np.float32 and 0 <= b.min() and b.max() <= 1
    assert np.array_equal(b, crops.batch(0, 3)[0]) and not np.array_equal(b, crops.batch(1, 3)[0])
    assert np.array_equal(next(crops.batches(3, start=1))[0], crops.batch(1, 3)[0])
    # without noise or flips the target is the ground truth at the crop: frame 3 is the target here
    plain = StackCrops([gray], [gray[3]], crop=48, noise=False, augment=False, channels=None)
    b1, t1 = plain.batch(2, 1)
    assert b1.shape == (1, 6, 1, 48, 48) and np.array_equal(b1[0, 3], t1[0])
    # noise is injected on the fly
    noisy = StackCrops([gray], [gray[3]], crop=48, noise="high", augment=False, channels=None)
    bn, tn = noisy.batch(2, 1)
    assert np.array_equal(tn, t1) and np.abs(bn - b1).mean() > 0.01
    # one stack: a strip is held out for validation, disjoint from the training region
    wide = np.concatenate([gray, gray[:, :, :40]], axis=2)  # 70 x 130
    train_part, val, how = StackCrops([wide], [wide[3]], crop=48).split(0.2, count=4)
    assert "held-out strip" in how and len(val) == 2
    assert train_part.regions == [(0, 70, 0, 130 - 48)]
    # too small for a strip: validation overlaps training, and the log says so
    _, _, how = crops.split(0.2, count=4)
    assert "optimistic" in how
    with pytest.raises(ValueError, match="do not match"):
        StackCrops([gray], [gray[0, :60]], crop=48)
    with pytest.raises(ValueError, match="smaller crop"):
        StackCrops([gray], [gray[0]], crop=96)


# -- fine-tuning -----------------------------------------------------------------------
def test_donut_psf_is_an_annulus():
    k = psf_kernel(6.0, "donut")
    assert abs(k.sum() - 1) < 1e-5
    c = k.shape[0] // 2
    assert k[c, c] == 0 and k[c, c + 2] == 0  # the central obstruction (inside half the radius)
    assert k[c, c + 5] > 0 and k[c, c + 7] == 0  # the ring, and nothing beyond the rim
    disk = psf_kernel(6.0, "disk")
    assert k.max() > disk.max()  # the same energy on a smaller area
    sharp, depth = synthetic_scene((48, 48), seed=0)
    sim = simulate_stack(sharp, depth, 3, psf="donut", seed=0)
    assert sim.frames.shape == (3, 48, 48, 3)


def test_thin_annulus_falls_back_to_a_disc(monkeypatch):
    import napari_focusdeep.training.simulate as simulate

    monkeypatch.setattr(simulate, "DONUT_OBSTRUCTION", 0.8)
    for r in (0.5, 0.6, 1.0, 1.5):
        k = psf_kernel(r, "donut")
        assert np.isfinite(k).all() and abs(k.sum() - 1) < 1e-5


def test_finetune_starts_from_the_shipped_weights_and_never_writes_worse(tmp_path):
    """The benchmark's path at small scale: a lab folder rendered with the unseen donut PSF."""
    import importlib.util

    from napari_focusdeep.models.weights import default_weights, load_state

    spec = importlib.util.spec_from_file_location("finetune_bench", Path(__file__).parents[1] / "benchmarks" / "finetune.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.write_lab_folder(tmp_path / "data", range(3), psf="donut", size=96, frames=4)
    lines = []
    cfg = TrainConfig(
        architecture="focusdeep-any", steps=4, batch_size=2, crop=48, lr=1e-4, val_every=2, val_count=3,
        device="cpu", data=str(tmp_path / "data"), freeze=("extract",),
    )
    res = train(cfg, tmp_path / "run", log=lines.append)
    text = "\n".join(lines)
    assert "fine-tuning from the shipped weights focusdeep-any.safetensors" in text
    assert "validation on 1 held-out stack (stack_002)" in text
    meta = json.loads(res.weights.with_suffix(".json").read_text())
    assert meta["training"]["init"] == "focusdeep-any.safetensors" and meta["kwargs"]["features"] == 32
    assert [h["step"] for h in res.history] == [0, 2, 4] and "val_psnr" in res.history[0]
    # frozen parts are the shipped ones bit for bit; the rest moved
    shipped = load_state(default_weights("focusdeep-any"))
    ck = checkpoint_model(tmp_path / "run")
    assert all(torch.equal(shipped[k[6:]], ck[k]) for k in ck if k.startswith("model.extract."))
    assert any(not torch.equal(shipped[k[6:]], ck[k]) for k in ck if k.startswith("model.score."))

    # a fine-tune that only does harm (a wild learning rate) writes the starting weights back
    lines.clear()
    wild = TrainConfig(**{**cfg.__dict__, "lr": 0.5, "min_lr": 0.5, "steps": 2, "val_every": 1})
    res = train(wild, tmp_path / "wild", log=lines.append)
    assert all(h["val_psnr"] < res.history[0]["val_psnr"] for h in res.history[1:])
    assert "the written weights are the starting ones" in "\n".join(lines)
    written = load_state(res.weights)
    assert all(torch.equal(shipped[k], written[k]) for k in shipped)

    # --init none trains from scratch, at the size given
    lines.clear()
    scratch = TrainConfig(**{**cfg.__dict__, "steps": 1, "init_weights": "none", "model": dict(TINY), "freeze": ()})
    res = train(scratch, tmp_path / "scratch", log=lines.append)
    assert "shipped" not in "\n".join(lines)
    assert json.loads(res.weights.with_suffix(".json").read_text())["kwargs"]["features"] == 8


def test_simulated_pairs_include_gray_and_8bit_bursts():
    gray = SimConfig(crop=32, gray_fraction=1.0, uint8_fraction=0.0)
    burst, target = simulated_pair(np.random.default_rng(0), gray, 3)
    # a gray stack as it reaches the RGB network: one image in all channels, noise included
    assert np.array_equal(burst[:, 0], burst[:, 2]) and np.array_equal(target[0], target[1])
    q = SimConfig(crop=32, gray_fraction=0.0, uint8_fraction=1.0)
    burst, target = simulated_pair(np.random.default_rng(0), q, 3)
    assert np.allclose(burst * 255, np.rint(burst * 255), atol=1e-4) and not np.array_equal(burst[:, 0], burst[:, 2])
    assert not np.allclose(target * 255, np.rint(target * 255), atol=1e-4)  # the target stays exact


def test_resuming_with_other_simulated_data_is_refused(tmp_path):
    """Another data mix means another validation set: its best score would not compare."""
    train(tiny_cfg(steps=1), tmp_path, val=sim_val(1), log=lambda s: None)
    with pytest.raises(ValueError, match="dark_fraction was 0.25"):
        train(tiny_cfg(steps=2, dark_fraction=0.0), tmp_path, val=sim_val(1), log=lambda s: None)
    # a checkpoint from before the mix was recorded holds the old mix
    meta_path = tmp_path / "checkpoint.json"
    meta = json.loads(meta_path.read_text())
    for key in ("photos", "scenes", "dark_fraction"):
        del meta["config"][key]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="photos was"):
        train(tiny_cfg(steps=2), tmp_path, val=sim_val(1), log=lambda s: None)
    res = train(tiny_cfg(steps=2, **MIX_2026_11_27), tmp_path, val=sim_val(1), log=lambda s: None)
    assert res.step == 2
    record = json.loads(res.weights.with_suffix(".json").read_text())["training"]
    assert record["dark_fraction"] == 0.0 and record["scenes"] == list(MIX_2026_11_27["scenes"])


def test_data_mix_options_on_the_command_line():
    args = build_parser().parse_args(["-o", "x", "--photos", "moon, coins", "--scenes", "leaves", "--dark-fraction", "0"])
    cfg = config_from_args(args)
    assert cfg.photos == ("moon", "coins") and cfg.scenes == ("leaves",) and cfg.dark_fraction == 0.0
    default = config_from_args(build_parser().parse_args(["-o", "x"]))
    assert default.photos == TrainConfig().photos and default.dark_fraction == 0.25


@pytest.mark.parametrize("bad, match", [
    (dict(dark_fraction=1.5), "dark_fraction"),
    (dict(min_exposure=0.0), "min_exposure"),
    (dict(scenes=("bubbles",)), "bubbles"),
    (dict(scenes=()), "scene kinds"),
])
def test_sim_config_refuses_bad_options(bad, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**bad)


def test_pictures_smaller_than_the_crop_are_enlarged():
    cfg = SimConfig(crop=200, frames=(3, 3), photos=("page",), photo_fraction=1.0, noise=False)
    burst, target = simulated_pair(np.random.default_rng(0), cfg)
    assert burst.shape == (3, 3, 200, 200) and target.shape == (3, 200, 200)


def test_dim_scales_linear_light():
    from napari_focusdeep.training.data import dim

    x = np.linspace(0, 1, 11, dtype=np.float32)
    np.testing.assert_allclose(dim(x, 0.1) ** 2.2, 0.1 * x**2.2, rtol=1e-5, atol=1e-7)


def test_dark_fraction_dims_scenes_in_linear_light():
    def means(**kw):
        cfg = SimConfig(crop=32, frames=(3, 3), noise=False, gray_fraction=0.0, uint8_fraction=0.0, **kw)
        rng = np.random.default_rng(3)
        return np.array([simulated_pair(rng, cfg)[1].mean() for _ in range(12)])

    bright, dark = means(dark_fraction=0.0), means(dark_fraction=1.0, min_exposure=0.01)
    # exposure 1 down to 0.01 in linear light: a gamma-encoded factor 1 down to 0.12, median 0.35
    assert np.median(dark) < 0.6 * np.median(bright)


def test_read_noise_scale_raises_only_the_read_noise(tmp_path):
    from napari_focusdeep.training.data import draw_noise

    plain = SimConfig(noise_free_fraction=0.0)
    scaled = SimConfig(noise_free_fraction=0.0, read_noise_scale=8.0)
    for seed in range(20):
        a, b = draw_noise(np.random.default_rng(seed), plain), draw_noise(np.random.default_rng(seed), scaled)
        assert a.shot == b.shot and a.read <= b.read <= 8 * a.read
    ratios = [draw_noise(np.random.default_rng(s), scaled).read / draw_noise(np.random.default_rng(s), plain).read
              for s in range(50)]
    assert 2 < np.median(ratios) < 4  # log-uniform on [1, 8]: median sqrt(8)
    assert draw_noise(np.random.default_rng(0), SimConfig(noise=False)) is None
    with pytest.raises(ValueError, match="read_noise_scale"):
        train(tiny_cfg(read_noise_scale=0.5), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_validation_caps_a_flawless_crop():
    from napari_focusdeep.training.train import VAL_PSNR_CAP, _validate, classical_baseline

    rng = np.random.default_rng(0)
    flat = np.full((3, 24, 24), 0.4, np.float32)
    busy = rng.random((3, 24, 24), dtype=np.float32)
    val = [(np.stack([flat] * 3), flat), (np.stack([busy] * 3), busy * 0.9)]
    # an exact fusion of the flat crop counts 60 dB, not infinity, beside the other crop's score
    base = classical_baseline(val)
    other = 10 * np.log10(1 / np.mean((busy[:, 4:-4, 4:-4] * 0.1) ** 2))
    assert np.isfinite(base) and abs(base - (VAL_PSNR_CAP + other) / 2) < 0.5

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=1)

    score = _validate(Mean(), val, torch.device("cpu"), False, 4)
    assert np.isfinite(score) and abs(score - (VAL_PSNR_CAP + other) / 2) < 0.01
