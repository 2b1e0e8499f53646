"""Raw training: the simulated raw data mode, the raw head's demosaic residual, starting
a raw network from RGB weights, the trainer's raw mode, and which weights fuse_raw picks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from napari_focusdeep.models import build_model  # noqa: E402
from napari_focusdeep.models.blocks import bilinear_demosaic  # noqa: E402
from napari_focusdeep.training.data import SimConfig, simulated_raw_pair, validation_set  # noqa: E402

TINY = dict(features=8, front_blocks=1, groups=1, blocks_per_group=1, offset_groups=2)


# every test runs torch on one thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- data ------------------------------------------------------------------------------------
def test_raw_pairs_have_packed_input_and_linear_colour_target() -> None:
    cfg = SimConfig(crop=48, frames=(3, 5))
    for seed in range(3):
        burst, target = simulated_raw_pair(np.random.default_rng(seed), cfg)
        assert burst.dtype == target.dtype == np.float32
        assert burst.ndim == 4 and burst.shape[1:] == (4, 24, 24) and 3 <= burst.shape[0] <= 5
        assert target.shape == (3, 48, 48)
        assert burst.min() >= 0 and burst.max() <= 1 and target.min() >= 0 and target.max() <= 1
        # linear and not white balanced: darker than the sRGB scenes, red and blue held back
        assert target.mean() < 0.35
    with pytest.raises(ValueError, match="even crop"):
        simulated_raw_pair(np.random.default_rng(0), SimConfig(crop=47))


def test_raw_noise_is_shot_plus_read_on_the_clean_burst() -> None:
    """A noisy pair is the clean pair of the same seed plus noise of variance shot * x + read."""
    from napari_focusdeep.training.simulate import sample_noise

    cfg = SimConfig(crop=64, frames=(6, 6), noise_free_fraction=0.0)
    clean, t_clean = simulated_raw_pair(np.random.default_rng(5), SimConfig(crop=64, frames=(6, 6), noise=False))
    noisy, t_noisy = simulated_raw_pair(np.random.default_rng(5), cfg)
    np.testing.assert_array_equal(t_clean, t_noisy)
    # the level the noisy run drew: replay its generator up to the noise draw
    rng = np.random.default_rng(5)
    from napari_focusdeep.training.data import simulated_pair
    from napari_focusdeep.training.unprocess import random_camera

    simulated_pair(rng, SimConfig(crop=64, frames=(6, 6), noise=False, gray_fraction=0.0, uint8_fraction=0.0), None)
    random_camera(rng)
    rng.random()
    level = sample_noise(rng)
    inside = (clean > 0.02) & (clean < 0.9)  # away from the clipped ends
    resid = (noisy - clean)[inside]
    predicted = level.shot * clean[inside] + level.read
    ratio = float(np.mean(resid**2) / np.mean(predicted))
    assert 0.85 < ratio < 1.15, ratio
    frames_corr = np.corrcoef((noisy - clean)[0].ravel(), (noisy - clean)[1].ravel())[0, 1]
    assert abs(frames_corr) < 0.05  # drawn per frame


def test_raw_validation_set_is_reproducible() -> None:
    a = validation_set(2, SimConfig(crop=32, frames=(2, 3)), raw=True)
    b = validation_set(2, SimConfig(crop=32, frames=(2, 3)), raw=True)
    assert all(np.array_equal(x[0], y[0]) and np.array_equal(x[1], y[1]) for x, y in zip(a, b))
    assert a[0][0].shape[1] == 4 and a[0][1].shape[0] == 3


# -- the raw head and starting from RGB --------------------------------------------------------
def test_bilinear_demosaic_is_exact_on_ramps_and_keeps_samples() -> None:
    from napari_focusdeep.io.bayer import mosaic

    yy, xx = np.mgrid[0:20, 0:24].astype(np.float32)
    rgb = np.stack([0.1 + 0.01 * xx, 0.2 + 0.02 * yy, 0.3 + 0.005 * (xx + yy)], -1)
    packed = torch.from_numpy(mosaic(rgb)).permute(2, 0, 1)[None]
    out = bilinear_demosaic(packed)[0].permute(1, 2, 0).numpy()
    assert np.abs(out - rgb)[2:-2, 2:-2].max() < 1e-5
    # measured samples come through unchanged on any image
    noise = np.random.default_rng(0).uniform(0, 1, (16, 16, 3)).astype(np.float32)
    p = torch.from_numpy(mosaic(noise)).permute(2, 0, 1)[None]
    back = torch.from_numpy(mosaic(bilinear_demosaic(p)[0].permute(1, 2, 0).numpy())).permute(2, 0, 1)[None]
    assert torch.allclose(back, p, atol=1e-6)


def test_raw_network_starts_as_a_demosaic_of_the_selected_frame() -> None:
    """With its trunk's output zeroed, a raw focusdeep-any outputs the bilinear demosaic
    of its soft-selected frame: identical frames give back that frame, demosaicked."""
    torch.manual_seed(0)
    model = build_model("focusdeep-any", stem="raw", in_channels=4, **TINY).eval()
    with torch.no_grad():
        for conv in (model.head.last, model.head.skip_last):
            conv.parametrizations.weight.original0.zero_()  # weight norm's magnitude
            conv.bias.zero_()
        frame = torch.rand(1, 4, 12, 16)
        out = model(frame[:, None].repeat(1, 3, 1, 1, 1))
    assert out.shape == (1, 3, 24, 32)
    assert torch.allclose(out, bilinear_demosaic(frame), atol=1e-5)


def test_init_raw_from_rgb_copies_the_body_and_derives_the_stem() -> None:
    import torch.nn.functional as F

    from napari_focusdeep.models.raw_init import init_raw_from_rgb

    torch.manual_seed(1)
    rgb = build_model("focusdeep-any", **TINY)
    with torch.no_grad():
        for p in rgb.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not the default initialisation
    raw = build_model("focusdeep-any", stem="raw", in_channels=4, **TINY)
    done = init_raw_from_rgb(raw, rgb)
    assert set(done["derived"]) == {"extract.conv_first", "head.skip_up", "head.up"}
    rs, ws = rgb.state_dict(), raw.state_dict()
    for name in ("recon.tail.parametrizations.weight.original1", "align.l1_dcn.dcn.weight", "head.last.bias"):
        assert torch.equal(rs[name], ws[name])
    packed = torch.rand(2, 4, 12, 12)
    with torch.no_grad():
        # the stem sees the packed planes as a half-resolution RGB image
        half = torch.stack([packed[:, 0], (packed[:, 1] + packed[:, 2]) / 2, packed[:, 3]], 1)
        for a, b in zip(raw.extract(packed), rgb.extract(half)):
            assert torch.allclose(a, b, atol=1e-5)
        # the skip path equals the RGB network's on the demosaicked image (interior: edges replicate differently)
        a = raw.head.shuffle(raw.head.skip_up(packed))
        b = rgb.head.skip_up(bilinear_demosaic(packed))
        assert torch.allclose(a[..., 4:-4, 4:-4], b[..., 4:-4, 4:-4], atol=1e-5)
        fea = torch.rand(2, 8, 6, 6)
        up = raw.head.shuffle(raw.head.up(fea))
        assert torch.allclose(up, F.interpolate(rgb.head.up(fea), scale_factor=2, mode="nearest"), atol=1e-5)
    with pytest.raises(ValueError, match="another size"):
        init_raw_from_rgb(build_model("focusdeep-any", stem="raw", in_channels=4, **{**TINY, "features": 12}), rgb)


# -- the trainer -------------------------------------------------------------------------------
def test_raw_training_steps_reduce_the_loss(tmp_path: Path) -> None:
    from napari_focusdeep.models.weights import load_model
    from napari_focusdeep.training.train import TrainConfig, train

    rng = np.random.default_rng(3)
    cfg_sim = SimConfig(crop=32, frames=(3, 3))
    pairs = [simulated_raw_pair(rng, cfg_sim) for _ in range(2)]
    batch = (np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]))
    losses: list[float] = []
    cfg = TrainConfig(raw=True, model=TINY, steps=25, batch_size=2, crop=32, frames=(3, 3), lr=2e-3,
                      val_every=25, init_weights="none", clip=0.0)
    result = train(cfg, tmp_path / "run", batches=iter([batch] * 25), val=pairs[:1],
                   progress=lambda p: losses.append(p.step_loss), log=lambda s: None)
    assert result.step == 25 and len(losses) == 25
    assert np.mean(losses[-5:]) < 0.8 * losses[0], losses
    cfg_json = json.loads(result.weights.with_suffix(".json").read_text())
    assert cfg_json["input"] == "raw" and cfg_json["kwargs"]["stem"] == "raw"
    model = load_model(result.weights)
    with torch.no_grad():
        assert model(torch.from_numpy(pairs[0][0])[None]).shape == (1, 3, 32, 32)


def test_raw_run_starts_from_the_shipped_rgb_weights(tmp_path: Path) -> None:
    from napari_focusdeep.models.raw_init import rgb_start_weights
    from napari_focusdeep.models.weights import load_state
    from napari_focusdeep.training.train import TrainConfig, train

    said: list[str] = []
    cfg = TrainConfig(raw=True, steps=0, batch_size=1, crop=32, frames=(2, 2), val_count=1)
    result = train(cfg, tmp_path / "run", log=said.append)
    assert any("shipped RGB weights" in s for s in said) and any("derived" in s for s in said)
    rgb = load_state(rgb_start_weights("focusdeep-any"))
    raw = load_state(result.weights)
    assert torch.equal(rgb["recon.tail.bias"], raw["recon.tail.bias"])
    assert raw["extract.conv_first.parametrizations.weight.original1"].shape[1] == 4
    assert result.history[0]["val_psnr"] is not None  # the starting point is scored


def test_raw_start_skips_rgb_weights_built_on_the_pyramid(tmp_path: Path) -> None:
    from napari_focusdeep.models import weights as W
    from napari_focusdeep.models.raw_init import rgb_start_weights

    based = build_model("focusdeep-any", align=False, base="pyramid", scale=2, **TINY)
    W.save_weights(based, tmp_path / "focusdeep-any.safetensors")
    with pytest.raises(W.WeightsNotFoundError, match="without a pyramid base"):
        rgb_start_weights("focusdeep-any", tmp_path)
    W.save_weights(build_model("focusdeep-any", **TINY), tmp_path / "focusdeep-any-select.safetensors")
    assert rgb_start_weights("focusdeep-any", tmp_path).name == "focusdeep-any-select.safetensors"
    assert W.default_weights("focusdeep-any", tmp_path).name == "focusdeep-any.safetensors"


def test_raw_mode_refuses_what_it_cannot_train(tmp_path: Path) -> None:
    from napari_focusdeep.training.train import TrainConfig, train

    with pytest.raises(ValueError, match="--data"):
        train(TrainConfig(raw=True, data=str(tmp_path)), tmp_path / "a")
    with pytest.raises(ValueError, match="even crop"):
        train(TrainConfig(raw=True, crop=33), tmp_path / "b")
    with pytest.raises(ValueError, match="no raw input stem"):
        train(TrainConfig(raw=True, architecture="unet"), tmp_path / "c")


def test_train_cli_raw_flag() -> None:
    from napari_focusdeep.training.train import RAW_FROM_RGB_LR, PRETRAIN_LR, build_parser, config_from_args

    cfg = config_from_args(build_parser().parse_args(["-o", "x", "--raw"]))
    assert cfg.raw and cfg.lr == RAW_FROM_RGB_LR
    cfg = config_from_args(build_parser().parse_args(["-o", "x", "--raw", "--init", "none"]))
    assert cfg.lr == PRETRAIN_LR and cfg.init_weights == "none"
    assert not config_from_args(build_parser().parse_args(["-o", "x"])).raw


# -- the shipped raw weights ---------------------------------------------------------------------
def test_shipped_raw_weights_are_found_only_on_the_raw_path(capsys: pytest.CaptureFixture) -> None:
    from napari_focusdeep.cli import main
    from napari_focusdeep.models.weights import default_weights, load_model, read_config
    from napari_focusdeep.raw_fusion import _choose_path, raw_weights

    path = raw_weights("focusdeep-any")
    assert path.name == "focusdeep-any-raw.safetensors"
    cfg = read_config(path)
    assert cfg["input"] == "raw" and cfg["kwargs"]["stem"] == "raw" and cfg["params"] < 1_000_000
    assert cfg["training"]["steps"] > 0 and "cpu" in cfg["training"]["device"]
    model = load_model(path)  # verifies the checksum
    assert model.config["in_channels"] == 4
    # --raw (path="bayer") uses it by default; "auto" without weights keeps the RGB network
    which, found = _choose_path("bayer", "focusdeep-any", {})
    assert which == "bayer" and found[0] == path
    assert _choose_path("auto", "focusdeep-any", {}) == ("rgb", None)
    assert _choose_path("auto", "focusdeep-any", {"weights": str(path)})[0] == "bayer"
    # an RGB stack's default stays the RGB network
    assert default_weights("focusdeep-any").name == "focusdeep-any.safetensors"
    assert main(["models"]) == 0
    assert "focusdeep-any-raw" in capsys.readouterr().out


def test_cli_raw_fuses_with_the_shipped_raw_network(tmp_path: Path) -> None:
    pytest.importorskip("rawpy")
    pytest.importorskip("pidng")
    import tifffile
    from test_raw import _raw_burst  # noqa: E402  (tests/ is on sys.path)

    from napari_focusdeep.cli import main
    from napari_focusdeep.raw_fusion import fuse_raw

    _, folder = _raw_burst(tmp_path / "burst", n=3, shape=(48, 64))
    out = tmp_path / "raw.tif"
    assert main(["fuse", str(folder), "-o", str(out), "--raw", "--method", "focusdeep-any", "--device", "cpu"]) == 0
    image = tifffile.imread(out)
    assert image.shape == (46, 64, 3) and image.dtype == np.uint16
    expected = fuse_raw(folder, method="focusdeep-any", path="bayer", device="cpu")
    assert expected.path == "bayer"
    assert np.abs(image.astype(int) - expected.image.astype(int)).max() <= 2
