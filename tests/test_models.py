"""Deep models: deformable convolution, networks, streaming, weights, fusion methods.

Every network here is tiny (8-16 channels, one block per stage) so the file runs
in well under a minute on two CPU cores; the maths is the same at full size.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from napari_focusdeep.fusion import fuse, fuse_iter, get_method, list_methods  # noqa: E402
from napari_focusdeep.fusion.registry import Method, TileOutOfMemory, register_method  # noqa: E402
from napari_focusdeep.models import build_model, count_parameters, resample_frames  # noqa: E402
from napari_focusdeep.models import weights as W  # noqa: E402
from napari_focusdeep.models.deform import DeformConvPack, deform_conv2d  # noqa: E402
from napari_focusdeep.models.device import pick_device  # noqa: E402

TINY = dict(features=8, front_blocks=1, groups=1, blocks_per_group=1)
TINY_UNET = dict(features=4, depth=2, convs_per_block=2)


def _tiny(arch: str, n_frames: int = 4, **kw):
    torch.manual_seed(0)
    if arch == "unet":
        return build_model(arch, n_frames=n_frames, **{**TINY_UNET, **kw})
    return build_model(arch, n_frames=n_frames, **{**TINY, **kw})


def _shake_offsets(model, scale: float = 0.3) -> None:
    """Random (not zero-initialised) offset predictors, so alignment really deforms."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DeformConvPack):
                w = m.conv_offset_mask.weight
                w.copy_(torch.randn(w.shape, generator=g) * scale)
                m.conv_offset_mask.bias.copy_(torch.randn(m.conv_offset_mask.bias.shape, generator=g))


def _burst(b: int, n: int, h: int, w: int, c: int = 3, seed: int = 0):
    return torch.rand(b, n, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- deformable convolution ---------------------------------------------------------------
def test_deform_zero_offsets_equal_conv2d():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 16, 13, 17, generator=g, dtype=torch.float64)
    w = torch.randn(24, 16, 3, 3, generator=g, dtype=torch.float64)
    b = torch.randn(24, generator=g, dtype=torch.float64)
    off = torch.zeros(2, 2 * 9 * 4, 13, 17, dtype=torch.float64)
    out = deform_conv2d(x, off, w, b, padding=1)
    assert torch.allclose(out, F.conv2d(x, w, b, padding=1), atol=1e-10)
    # mask of ones changes nothing; stride, dilation and weight groups
    mask = torch.ones(2, 9 * 4, 13, 17, dtype=torch.float64)
    assert torch.allclose(deform_conv2d(x, off, w, b, padding=1, mask=mask), out, atol=1e-10)
    w2 = torch.randn(24, 8, 3, 3, generator=g, dtype=torch.float64)
    off2 = torch.zeros(2, 2 * 9 * 2, 6, 8, dtype=torch.float64)
    ref = F.conv2d(x, w2, None, stride=2, padding=1, dilation=2, groups=2)
    assert torch.allclose(deform_conv2d(x, off2, w2, None, stride=2, padding=1, dilation=2), ref, atol=1e-10)


def test_deform_integer_and_half_offsets():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 8, 11, 12, generator=g, dtype=torch.float64)
    w = torch.randn(4, 8, 3, 3, generator=g, dtype=torch.float64)
    off = torch.zeros(1, 2, 9, 2, 11, 12, dtype=torch.float64)
    off[:, :, :, 0] = 1.0  # every tap one row down, two columns left
    off[:, :, :, 1] = -2.0
    shifted = F.pad(x, (2, 0, 0, 1))[:, :, 1:, :12]
    got = deform_conv2d(x, off.view(1, -1, 11, 12), w, None, padding=1)
    assert torch.allclose(got[..., 1:-1, 1:-1], F.conv2d(shifted, w, padding=1)[..., 1:-1, 1:-1], atol=1e-10)
    off.zero_()
    off[:, :, :, 1] = 0.5  # bilinear: the mean of two neighbours
    half = 0.5 * (x + F.pad(x, (0, 1))[..., 1:])
    got = deform_conv2d(x, off.view(1, -1, 11, 12), w, None, padding=1)
    assert torch.allclose(got[..., 1:-1, 1:-1], F.conv2d(half, w, padding=1)[..., 1:-1, 1:-1], atol=1e-10)


def test_deform_matches_torchvision():
    tv = pytest.importorskip("torchvision.ops")
    g = torch.Generator().manual_seed(2)
    for stride, pad, dil, groups, og in [(1, 1, 1, 1, 4), (2, 1, 1, 2, 2), (1, 2, 2, 1, 1), (1, 0, 1, 4, 8)]:
        x = torch.randn(2, 8, 15, 14, generator=g, dtype=torch.float64, requires_grad=True)
        w = torch.randn(12, 8 // groups, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
        b = torch.randn(12, generator=g, dtype=torch.float64)
        ho = (15 + 2 * pad - dil * 2 - 1) // stride + 1
        wo = (14 + 2 * pad - dil * 2 - 1) // stride + 1
        off = (torch.randn(2, 2 * og * 9, ho, wo, generator=g, dtype=torch.float64) * 3).requires_grad_()
        mask = torch.rand(2, og * 9, ho, wo, generator=g, dtype=torch.float64, requires_grad=True)
        ours = deform_conv2d(x, off, w, b, stride, pad, dil, mask)
        ref = tv.deform_conv2d(x, off, w, b, stride=stride, padding=pad, dilation=dil, mask=mask)
        assert torch.allclose(ours, ref, atol=1e-8), (stride, pad, dil, groups, og)
        go = torch.randn(ours.shape, generator=g, dtype=torch.float64)
        g1 = torch.autograd.grad(ours, (x, off, w, mask), go)
        g2 = torch.autograd.grad(ref, (x, off, w, mask), go)
        for a, r in zip(g1, g2):
            assert torch.allclose(a, r, atol=1e-6)


def test_deform_gradcheck():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    off = (torch.randn(1, 2 * 9 * 2, 4, 5, generator=g, dtype=torch.float64) * 0.7).requires_grad_()
    mask = torch.rand(1, 9 * 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, o, m, ww: deform_conv2d(a, o, ww, None, padding=1, mask=m)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, off, mask, w), fast_mode=True)


# -- networks -----------------------------------------------------------------------------
def test_resample_frames():
    assert resample_frames(5, 3).tolist() == [0, 2, 4]
    assert resample_frames(2, 4).tolist() == [0, 0, 1, 1]
    assert resample_frames(7, 1).tolist() == [0]
    for n_in, n in [(3, 30), (30, 30), (100, 30), (1, 5)]:
        idx = resample_frames(n_in, n)
        assert len(idx) == n and idx[0] == 0 and idx[-1] == n_in - 1 and np.all(np.diff(idx) >= 0)
        if n_in <= n:
            assert set(idx.tolist()) == set(range(n_in))


@pytest.mark.parametrize("arch", ["focusdeep", "focusdeep-any", "unet"])
@pytest.mark.parametrize("n,h,w", [(1, 9, 11), (3, 17, 23), (5, 32, 20)])
def test_shapes(arch, n, h, w):
    model = _tiny(arch, n_frames=n).eval()
    with torch.no_grad():
        out = model(_burst(2, n, h, w))
    assert out.shape == (2, 3, h, w) and torch.isfinite(out).all()


def test_focusdeep_any_takes_any_length():
    model = _tiny("focusdeep-any").eval()
    with torch.no_grad():
        for n in (1, 2, 7):
            assert model(_burst(1, n, 12, 13)).shape == (1, 3, 12, 13)
    with pytest.raises(ValueError, match="takes 4 frames"):
        _tiny("focusdeep", n_frames=4)(_burst(1, 3, 8, 8))


def test_raw_stem_doubles_resolution():
    model = build_model("focusdeep", n_frames=2, in_channels=4, stem="raw", **TINY).eval()
    with torch.no_grad():
        assert model(_burst(1, 2, 7, 10, c=4)).shape == (1, 3, 14, 20)


def test_paper_config_parameter_count():
    n = count_parameters(build_model("focusdeep", n_frames=30))
    assert 3.5e6 < n < 5e6  # the paper's network is about 4M parameters
    assert count_parameters(_tiny("focusdeep")) < 150_000


@pytest.mark.parametrize("arch", ["focusdeep", "focusdeep-any", "unet"])
def test_stream_equals_forward(arch):
    model = _tiny(arch, n_frames=5).eval()
    _shake_offsets(model)
    x = _burst(2, 5, 13, 18)
    with torch.no_grad():
        ref = model(x)
        model.start((2, 3, 13, 18))
        for i in range(5):
            model.push(x[:, i])
        out = model.finish()
    assert torch.allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize("arch", ["focusdeep", "unet"])
def test_stream_repeat_equals_resampled_forward(arch):
    model = _tiny(arch, n_frames=6).eval()
    x = _burst(1, 3, 12, 16)
    idx = resample_frames(3, 6)
    with torch.no_grad():
        ref = model(x[:, idx])
        stream = model.stream((1, 3, 12, 16))
        for z, k in enumerate(np.bincount(idx, minlength=3)):
            stream.push(x[:, z], repeat=int(k))
        out = stream.finish()
    assert torch.allclose(out, ref, atol=1e-4)


# -- focusdeep-any on the pyramid base (the CPU configuration) ---------------------------
BASED = dict(TINY, align=False, base="pyramid", scale=2)


def test_pyramid_base_network_starts_at_the_pyramid():
    from napari_focusdeep.fusion.pyramid import PyramidFusion
    from napari_focusdeep.models.focusdeep_any import pyramid_base

    model = _tiny("focusdeep-any", **BASED).eval()
    assert model.multiple == 8 and model.config["base"] == "pyramid"
    x = _burst(2, 4, 30, 26)
    with torch.no_grad():
        out, base = model(x), pyramid_base(x)
    # the correction layers start near zero, so a new network is the classical method
    assert out.shape == (2, 3, 30, 26) and (out - base).abs().max() < 0.02
    # and the base is pyramid fusion with a tiny pyramid, frame by frame
    frames = x[1].permute(0, 2, 3, 1).numpy()
    acc = PyramidFusion(4, (30, 26, 3), levels=3, noise=0.05)
    for f in frames:
        acc.add(f, f @ np.array([0.299, 0.587, 0.114], np.float32))
    ref = pyramid_base(x, noise=0.05)[1].permute(1, 2, 0).numpy()
    assert np.allclose(acc.finish()[0], ref, atol=1e-6)


def test_pyramid_base_network_learns_a_correction():
    from napari_focusdeep.models.focusdeep_any import pyramid_base

    model = _tiny("focusdeep-any", **BASED)
    x = _burst(2, 3, 24, 24)
    target = 0.7 * pyramid_base(x) + 0.2  # a correction of the base the network can express
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = (model(x) - target).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]


def test_pyramid_base_stream_equals_forward_at_the_same_noise():
    model = _tiny("focusdeep-any", **BASED).eval()
    x = _burst(1, 5, 21, 35)
    with torch.no_grad():
        from napari_focusdeep.fusion.pyramid import estimate_noise

        noise = estimate_noise(x[0].permute(0, 2, 3, 1).numpy())
        ref = model(x)
        stream = model.stream((1, 3, 21, 35), noise=noise)
        for i in range(5):
            stream.push(x[:, i])
        out = stream.finish()
        with pytest.raises(RuntimeError, match="finished"):
            stream.finish()
    assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("kw, match", [
    (dict(scale=2), "needs base='pyramid'"),
    (dict(scale=3, base="pyramid"), "scale must be 1 or 2"),
    (dict(base="median"), "unknown base"),
    (dict(base="pyramid", stem="raw", in_channels=4), "needs the rgb stem"),
    (dict(base="pyramid", residual=False), "residual=True"),
    (dict(base="pyramid", base_levels=0), "base_levels must be"),
])
def test_pyramid_base_options_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model("focusdeep-any", **{**TINY, **kw})


def test_pyramid_base_halo_adds_the_pyramid_context():
    from napari_focusdeep.fusion.pyramid import pyramid_halo
    from napari_focusdeep.models.receptive import model_halo, receptive_radius

    assert model_halo("focusdeep-any", **BASED) == receptive_radius("focusdeep-any", **BASED) + pyramid_halo(levels=3)
    # with alignment at half resolution the offsets reach twice as far in input pixels
    aligned = dict(BASED, align=True)
    reach = 2 * 4 * (4 + 1)
    assert model_halo("focusdeep-any", **aligned) == receptive_radius("focusdeep-any", **aligned) + reach + pyramid_halo(levels=3)


def test_pyramid_base_tiled_equals_whole(tmp_path):
    model = _tiny("focusdeep-any", **BASED)
    with torch.no_grad():  # a visible correction, so the network's part is tested too
        model.head.last.parametrizations.weight.original0.mul_(30)
    path = str(tmp_path / "based.safetensors")
    W.save_weights(model, path)
    stack = _stack(n=4, h=70, w=90) * 0.6 + np.random.default_rng(1).normal(0, 0.05, (4, 70, 90, 3)).astype(np.float32)
    whole = fuse(stack, method="focusdeep-any", weights=path, register=False, tile=4096, device="cpu")
    tiled = fuse(stack, method="focusdeep-any", weights=path, register=False, tile=24, ramp=4, device="cpu")
    assert whole.info["blocks"] == 1 and tiled.info["blocks"] > 1
    assert np.abs(whole.image - tiled.image).max() < 1e-3
    # the noise was measured once for the stack and is what every tile used
    assert whole.info["options"]["noise"] == tiled.info["options"]["noise"] > 0.02
    # channels fused as gray stacks of their own get a noise level each
    from napari_focusdeep.stack import Stack

    two = fuse(Stack.from_array(stack[..., :2], axes="ZYXC"), method="focusdeep-any", weights=path, register=False, device="cpu", tile=24, ramp=4)
    assert len(two.info["options"]["noise"]) == 2
    one = fuse(stack[..., 0], method="focusdeep-any", weights=path, register=False, device="cpu")
    assert np.abs(two.image[..., 0] - one.image).max() < 1e-3  # channel 0 as if fused alone
    fixed = fuse(stack, method="focusdeep-any", weights=path, register=False, device="cpu", noise=0)
    assert np.abs(fixed.image - whole.image).max() > 1e-3  # max selection: another base
    with pytest.raises(ValueError, match="noise must be"):
        fuse(stack, method="focusdeep-any", weights=path, register=False, device="cpu", noise=-1)


# -- the noise-level input ------------------------------------------------------------------
NOISY = dict(BASED, noise_input=True)


def test_noise_input_starts_unused_and_fits_weights_without_it(tmp_path):
    from napari_focusdeep.models.focusdeep_any import add_noise_input

    plain = _tiny("focusdeep-any", **BASED).eval()
    with torch.no_grad():
        plain.head.last.parametrizations.weight.original0.mul_(30)
    noisy = _tiny("focusdeep-any", **NOISY).eval()
    assert noisy.config["noise_input"] is True and "noise_input" not in plain.config
    noisy.load_state_dict(add_noise_input(plain.state_dict(), noisy), strict=True)
    x = _burst(2, 4, 24, 32)
    with torch.no_grad():
        assert torch.allclose(noisy(x), plain(x), atol=1e-6)
        with pytest.raises(ValueError, match="do not fit"):
            add_noise_input(noisy.state_dict(), noisy)
        # once its weights are not zero, the level changes the output
        noisy.fusion.parametrizations.weight.original1[:, -1:].fill_(1.0)
        s1, s2 = noisy.stream((1, 3, 24, 32), noise=0.002), noisy.stream((1, 3, 24, 32), noise=0.05)
        for i in range(4):
            s1.push(x[:1, i])
            s2.push(x[:1, i])
        assert (s1.finish() - s2.finish()).abs().max() > 1e-3
    with pytest.raises(ValueError, match="noise_input needs base='pyramid'"):
        build_model("focusdeep-any", **{**TINY, "noise_input": True})


def test_noise_input_stream_equals_forward_and_tiles_equal_whole(tmp_path):
    from napari_focusdeep.models.focusdeep_any import burst_noise

    model = _tiny("focusdeep-any", **NOISY).eval()
    with torch.no_grad():
        model.fusion.parametrizations.weight.original1[:, -1:].normal_(0, 1.0)
        model.head.last.parametrizations.weight.original0.mul_(30)
    x = _burst(2, 5, 21, 35)
    with torch.no_grad():
        ref = model(x)
        stream = model.stream((2, 3, 21, 35), noise=burst_noise(x))
        for i in range(5):
            stream.push(x[:, i])
        assert torch.allclose(stream.finish(), ref, atol=1e-5)
    _check_tiles_equal_whole(model, "focusdeep-any", tmp_path / "noisy.safetensors")


def _check_tiles_equal_whole(model, method, path):
    """Fuse a noisy stack with ``model`` saved at ``path``, whole and in 24-pixel tiles."""
    W.save_weights(model, path)
    stack = _stack(n=4, h=70, w=90) * 0.6 + np.random.default_rng(1).normal(0, 0.05, (4, 70, 90, 3)).astype(np.float32)
    whole = fuse(stack, method=method, weights=str(path), register=False, tile=4096, device="cpu")
    tiled = fuse(stack, method=method, weights=str(path), register=False, tile=24, ramp=4, device="cpu")
    assert tiled.info["blocks"] > 1 and np.abs(whole.image - tiled.image).max() < 1e-3


def test_training_widens_weights_without_noise_input(tmp_path):
    from napari_focusdeep.training.train import TrainConfig, train

    plain = _tiny("focusdeep-any", **BASED)
    start = tmp_path / "plain.safetensors"
    W.save_weights(plain, start)
    cfg = TrainConfig(architecture="focusdeep-any", model={"noise_input": True}, steps=2, batch_size=1, crop=32,
                      frames=(2, 3), init_weights=str(start), val_count=1, val_every=1, device="cpu", lr=1e-3)
    messages = []
    res = train(cfg, tmp_path / "run", log=messages.append)
    assert any("no noise input" in m for m in messages), messages
    assert res.step == 2 and (tmp_path / "run" / "checkpoint.safetensors").exists()
    assert W.read_config(res.weights)["kwargs"]["noise_input"] is True


# -- the paper's FocusDeep on the pyramid base ------------------------------------------------
FD_BASED = dict(TINY, base="pyramid", noise_input=True)


def _visible(model):
    """A network whose correction shows (the output layers start near zero)."""
    with torch.no_grad():
        model.head.last.parametrizations.weight.original0.mul_(100)
        model.fusion.parametrizations.weight.original1[:, -1:].normal_(0, 1.0)
    return model


def test_focusdeep_on_the_pyramid_base_starts_there_and_streams_as_forward():
    from napari_focusdeep.models.focusdeep_any import burst_noise, pyramid_base

    model = _tiny("focusdeep", n_frames=4, **FD_BASED).eval()
    assert model.multiple == 8 and model.config["base"] == "pyramid" and model.config["noise_input"] is True
    assert "base" not in _tiny("focusdeep", n_frames=4).config  # older weights' configs unchanged
    x = _burst(2, 4, 30, 26)
    with torch.no_grad():
        assert (model(x) - pyramid_base(x)).abs().max() < 0.02
        _visible(model)
        ref = model(x)
        assert (ref - pyramid_base(x)).abs().max() > 0.05
        stream = model.stream((2, 3, 30, 26), noise=burst_noise(x))
        stream.push(x[:, 0], repeat=2)  # a repeated slot goes into the base twice, as forward sees it
        stream.push(x[:, 2])
        stream.push(x[:, 3])
        rep = model(x[:, [0, 0, 2, 3]])
        assert torch.allclose(stream.finish(), rep, atol=1e-5)
        stream = model.stream((2, 3, 30, 26), noise=burst_noise(x))
        for i in range(4):
            stream.push(x[:, i])
        assert torch.allclose(stream.finish(), ref, atol=1e-5)
        with pytest.raises(RuntimeError, match="finished"):
            stream.finish()
        # a frame the slots skip (repeat=0) still goes into the base
        stream = model.stream((2, 3, 30, 26), noise=burst_noise(x))
        for i in range(4):
            stream.push(x[:, i])
        stream.push(_burst(2, 1, 30, 26, seed=5)[:, 0], repeat=0)
        assert (stream.finish() - ref).abs().max() > 1e-3


@pytest.mark.parametrize("kw, match", [
    (dict(base="median"), "base must be None or 'pyramid'"),
    (dict(base="pyramid", stem="raw", in_channels=4), "needs the rgb stem"),
    (dict(base="pyramid", base_levels=0), "base_levels must be"),
    (dict(noise_input=True), "noise_input needs base='pyramid'"),
])
def test_focusdeep_base_options_checked(kw, match):
    with pytest.raises(ValueError, match=match):
        build_model("focusdeep", n_frames=4, **{**TINY, **kw})


def test_focusdeep_base_halo_adds_the_pyramid_context():
    from napari_focusdeep.fusion.pyramid import pyramid_halo
    from napari_focusdeep.models.receptive import model_halo, receptive_radius

    plain = dict(TINY, n_frames=4)
    based = dict(plain, base="pyramid")
    assert receptive_radius("focusdeep", **based) == receptive_radius("focusdeep", **plain)
    assert model_halo("focusdeep", **based) == model_halo("focusdeep", **plain) + pyramid_halo(levels=3)


def test_focusdeep_base_tiles_equal_whole_and_sees_skipped_frames(tmp_path):
    path = str(tmp_path / "fd.safetensors")
    _check_tiles_equal_whole(_visible(_tiny("focusdeep", n_frames=4, **FD_BASED)), "focusdeep", path)
    # 9 frames on 4 slots: resampling skips frames 1, 2, 4, 6 and 7, which hold the only
    # detail; an untrained network is the pyramid of all 9 frames, not of the 4 slots'
    fresh = _tiny("focusdeep", n_frames=4, **FD_BASED)
    W.save_weights(fresh, path)
    rng = np.random.default_rng(2)
    long = np.full((9, 48, 48, 3), 0.5, np.float32) + rng.normal(0, 0.002, (9, 48, 48, 3)).astype(np.float32)
    long[[1, 2, 4, 6, 7]] += rng.uniform(-0.3, 0.3, (5, 48, 48, 1)).astype(np.float32)
    # (the classical methods clip to the stack's range; a network's output is not clipped so)
    deep = np.clip(fuse(long, method="focusdeep", weights=path, register=False, device="cpu").image, long.min(), long.max())
    every = fuse(long, method="pyramid", register=False, levels=3).image
    slots = fuse(long[[0, 3, 5, 8]], method="pyramid", register=False, levels=3).image
    assert np.abs(deep - every).max() < 0.03 < np.abs(deep - slots).max()


def test_training_puts_focusdeep_weights_on_the_pyramid_base(tmp_path):
    from napari_focusdeep.models.focusdeep_any import pyramid_base
    from napari_focusdeep.training.train import TrainConfig, train

    plain = _tiny("focusdeep", n_frames=3)
    start = tmp_path / "plain.safetensors"
    W.save_weights(plain, start)
    cfg = TrainConfig(architecture="focusdeep", model={"base": "pyramid", "noise_input": True}, steps=1, batch_size=1,
                      crop=32, fixed_frames=3, init_weights=str(start), val_count=1, val_every=1, device="cpu", lr=1e-6)
    messages = []
    res = train(cfg, tmp_path / "run", log=messages.append)
    assert any("no pyramid base" in m for m in messages) and any("no noise input" in m for m in messages), messages
    kw = W.read_config(res.weights)["kwargs"]
    assert kw["base"] == "pyramid" and kw["noise_input"] is True
    model = W.load_model(res.weights, device="cpu").eval()
    x = _burst(1, 3, 24, 24)
    with torch.no_grad():
        assert (model(x) - pyramid_base(x)).abs().max() < 0.05


def test_focusdeep_any_order_invariant_without_alignment():
    model = _tiny("focusdeep-any", align=False).eval()
    x = _burst(1, 6, 16, 20)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    with torch.no_grad():
        a, b = model(x), model(x[:, perm])
        stream = model.stream((1, 3, 16, 20))
        for i in reversed(range(6)):
            stream.push(x[:, i])
        c = stream.finish()
    assert (a - b).abs().max() < 1e-4
    assert (a - c).abs().max() < 1e-4


def test_online_softmax_is_stable_for_large_logits():
    from napari_focusdeep.models.focusdeep_any import _online_softmax

    logits = torch.tensor([[3.0], [900.0], [-50.0], [901.0]])
    values = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    state = None
    for lg, v in zip(logits, values):
        state = _online_softmax(state, lg, v)
    m, s, acc = state
    expected = (torch.softmax(logits, 0) * values).sum(0)
    assert torch.isfinite(acc / s).all() and torch.allclose(acc / s, expected)


def test_focusdeep_any_stream_state_is_constant_in_n():
    model = _tiny("focusdeep-any").eval()
    frame = torch.rand(1, 3, 16, 16)
    sizes = {}
    with torch.no_grad():
        for n in (3, 40):
            stream = model.stream((1, 3, 16, 16))
            for _ in range(n):
                stream.push(frame)
            sizes[n] = stream.state_nbytes()
            stream.finish()
    assert sizes[3] == sizes[40] > 0


_RSS_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np, torch
    torch.set_num_threads(1)
    from napari_focusdeep.models import build_model
    from napari_focusdeep.models.methods import DeepAccumulator
    from napari_focusdeep.models.weights import fold_weight_norm

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024

    torch.manual_seed(0)
    model = fold_weight_norm(build_model("focusdeep-any", features=8, front_blocks=1, groups=1,
                                         blocks_per_group=1, align=False).eval())
    h = w = 96
    frame = np.random.default_rng(0).random((h, w, 3), dtype=np.float32)
    focus = frame.mean(-1)

    def run(n):
        acc = DeepAccumulator(model, n, (h, w, 3), torch.device("cpu"))
        for _ in range(n):
            acc.add(frame, focus)
        acc.finish()

    run(3)  # warm up allocator and kernels
    gc.collect()
    base = status("VmRSS")
    out = {}
    for n in (10, 200):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak (VmHWM) to the current RSS
        run(n)
        gc.collect()
        out[n] = status("VmHWM") - base
    print(json.dumps(out))
    """
)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_focusdeep_any_peak_memory_does_not_grow_with_frames():
    # torch's CPU allocations are invisible to tracemalloc, so measure the process's
    # peak resident memory (VmHWM, reset between runs) in a fresh interpreter.
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    peaks = {int(k): v for k, v in json.loads(res.stdout.strip().splitlines()[-1]).items()}
    # If the frames' features were kept, N=200 would add ~200 x 300 KB = 60 MB.
    assert peaks[200] <= 1.2 * peaks[10] + 4 * 2**20, {n: f"{v / 2**20:.1f} MiB" for n, v in peaks.items()}


# -- weights ------------------------------------------------------------------------------
def test_weights_round_trip(tmp_path):
    model = _tiny("focusdeep-any")
    _shake_offsets(model)
    path = tmp_path / "mine.safetensors"
    cfg_path = W.save_weights(model, path, {"default": True}, description="tiny", training={"steps": 3})
    cfg = json.loads(cfg_path.read_text())
    assert cfg["architecture"] == "focusdeep-any" and cfg["n_frames"] is None and cfg["input"] == "rgb"
    assert cfg["kwargs"]["features"] == 8 and cfg["training"] == {"steps": 3}
    assert cfg["sha256"] == W.sha256_file(path) and cfg["params"] == count_parameters(model)
    loaded = W.load_model(path, "cpu")
    x = _burst(1, 3, 12, 12)
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), loaded(x), atol=1e-5)
    listed = W.list_models(tmp_path)
    assert [m["name"] for m in listed] == ["mine"]
    assert listed[0]["architecture"] == "focusdeep-any" and listed[0]["params"] == cfg["params"]
    assert W.default_weights("focusdeep-any", tmp_path) == path
    # into an existing (training) model, as the trainer does
    fresh = _tiny("focusdeep-any")
    W.load_model_weights(fresh, path)
    with torch.no_grad():
        assert torch.allclose(fresh.eval()(x), loaded(x), atol=1e-5)
    with pytest.raises(ValueError, match="not unet"):
        W.load_model_weights(_tiny("unet"), path)


def test_tampered_or_truncated_weights_refused(tmp_path):
    path = tmp_path / "m.safetensors"
    W.save_weights(_tiny("unet"), path)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        W.load_model(path)
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(ValueError, match="checksum"):
        W.load_model(path)
    path.with_suffix(".json").unlink()
    with pytest.raises(FileNotFoundError, match="no config"):
        W.load_model(path)


@pytest.mark.parametrize("name", ["model.pt", "model.pth", "model.ckpt", "model.bin"])
def test_pickled_checkpoints_refused(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x80\x04K\x01.")  # a pickle; must never be unpickled
    with pytest.raises(ValueError, match="only .safetensors weights are accepted; pickled checkpoints can run code"):
        W.load_model(path)
    with pytest.raises(ValueError, match="only .safetensors"):
        W.save_weights(_tiny("unet"), path)


def test_missing_weights_give_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    stack = np.zeros((2, 8, 8, 3), np.float32)
    with pytest.raises(FileNotFoundError, match="no weights installed for focusdeep-any; pass weights=PATH"):
        fuse(stack, method="focusdeep-any", register=False)
    with pytest.raises(FileNotFoundError, match="not found"):
        fuse(stack, method="focusdeep", register=False, weights=str(tmp_path / "nope.safetensors"))


def test_weights_of_another_architecture_refused(tmp_path):
    path = tmp_path / "u.safetensors"
    W.save_weights(_tiny("unet"), path)
    with pytest.raises(ValueError, match="holds a unet network"):
        fuse(np.zeros((2, 8, 8, 3), np.float32), method="focusdeep", register=False, weights=str(path))


# -- devices ------------------------------------------------------------------------------
def test_pick_device():
    auto = pick_device("auto")
    assert pick_device(None) == auto and pick_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert auto.type in ("cpu", "mps")
        with pytest.raises(ValueError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        pick_device("tpu")


# -- fusion methods -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny saved networks with random (deforming) offsets, one per architecture."""
    d = tmp_path_factory.mktemp("weights")
    paths = {}
    for arch in ("focusdeep", "focusdeep-any", "unet"):
        model = _tiny(arch, n_frames=3)
        _shake_offsets(model)
        paths[arch] = str(d / f"{arch}.safetensors")
        W.save_weights(model, paths[arch])
    return paths


def _stack(n=4, h=44, w=52, c=3, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w, c) if c else (n, h, w)
    return rng.random(shape, dtype=np.float32)


def test_methods_are_registered():
    names = {m.name: m for m in list_methods()}
    for arch in ("focusdeep", "focusdeep-any", "unet"):
        m = names[arch]
        assert m.kind == "deep" and m.blend and m.options["device"] == "auto" and m.options["weights"] is None


@pytest.mark.parametrize("arch", ["focusdeep-any", "focusdeep", "unet"])
def test_tiled_equals_whole(saved, arch):
    stack = _stack(n=4)
    whole = fuse(stack, method=arch, weights=saved[arch], register=False, tile=4096, device="cpu")
    tiled = fuse(stack, method=arch, weights=saved[arch], register=False, tile=24, ramp=4, device="cpu")
    assert whole.info["blocks"] == 1 and tiled.info["blocks"] > 1
    assert np.abs(whole.image - tiled.image).max() < 1e-3
    assert np.abs(whole.depth - tiled.depth).max() < 1e-3
    assert np.isfinite(whole.image).all() and whole.image.shape == stack.shape[1:]


def test_halo_covers_receptive_field():
    from napari_focusdeep.models.receptive import model_halo, receptive_radius

    r = receptive_radius("focusdeep-any", **TINY)
    assert model_halo("focusdeep-any", **TINY) == r + 20  # + max_offset 4 * (4 + 1)
    r = receptive_radius("focusdeep-any", align=False, **TINY)
    assert model_halo("focusdeep-any", align=False, **TINY) == r < 32
    # Changing the input farther than the radius from an output region changes nothing.
    model = _tiny("focusdeep-any", align=False).eval()
    x = _burst(1, 2, 64, 64)
    y = x.clone()
    y[..., :, 28 + 4 + r + 1 :] = 0.5
    y[..., :, : max(0, 28 - r - 1)] = 0.5
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[..., 28:32], b[..., 28:32], atol=1e-6)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_integer_dtypes_round_trip(saved, dtype):
    stack = (_stack(n=3, h=20, w=24) * np.iinfo(dtype).max).astype(dtype)
    res = fuse(stack, method="focusdeep-any", weights=saved["focusdeep-any"], register=False)
    assert res.image.dtype == dtype and res.image.shape == (20, 24, 3)
    assert res.depth.dtype == np.float32 and res.depth.shape == (20, 24)
    assert 0 <= res.depth.min() and res.depth.max() <= 2


def test_gray_and_multichannel_stacks(saved):
    gray = _stack(n=3, h=20, w=24, c=0)
    opts = dict(register=False, device="cpu")  # float32 everywhere, so results compare exactly
    res = fuse(gray, method="focusdeep", weights=saved["focusdeep"], **opts)
    assert res.image.shape == (20, 24)
    # gray = the RGB network on the replicated channel, averaged back
    rgb = fuse(np.repeat(gray[..., None], 3, -1), method="focusdeep", weights=saved["focusdeep"], **opts)
    assert np.allclose(res.image, rgb.image.mean(-1), atol=1e-5)
    from napari_focusdeep.stack import Stack

    two = Stack.from_array(_stack(n=3, h=20, w=24, c=2), axes="ZYXC")
    res2 = fuse(two, method="focusdeep-any", weights=saved["focusdeep-any"], **opts)
    assert res2.image.shape == (20, 24, 2)
    one = fuse(two.data[..., 1].compute(), method="focusdeep-any", weights=saved["focusdeep-any"], **opts)
    assert np.allclose(res2.image[..., 1], one.image, atol=1e-5)


def test_fixed_length_models_resample_other_lengths(saved):
    for n in (1, 2, 7):  # the saved networks take 3 frames
        res = fuse(_stack(n=n, h=16, w=16), method="unet", weights=saved["unet"], register=False)
        assert res.image.shape == (16, 16, 3)


def test_model_loaded_once_per_run(saved, monkeypatch):
    from napari_focusdeep.models import methods

    methods.clear_model_cache()
    loads = []
    real = W.load_model
    monkeypatch.setattr(W, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    fuse(_stack(n=2), method="focusdeep-any", weights=saved["focusdeep-any"], register=False, tile=24, ramp=4)
    assert len(loads) == 1


# -- out-of-memory retry (driver) ----------------------------------------------------------
class _Fussy:
    """Fails like a GPU would on tiles larger than ``limit`` pixels."""

    def __init__(self, shape, limit):
        if shape[0] * shape[1] > limit:
            raise TileOutOfMemory(f"out of memory fusing a {shape[0]}x{shape[1]} tile")
        self.sum = np.zeros(shape, np.float32)
        self.n = 0

    def add(self, frame, focus):
        self.sum += frame
        self.n += 1

    def finish(self):
        return self.sum / self.n, np.zeros(self.sum.shape[:2], np.float32)


def test_out_of_memory_retries_with_smaller_tiles():
    released = []
    register_method(
        Method("test-fussy", "test", make=lambda n, shape, **o: _Fussy(shape, o["limit"]),
               options={"limit": 40 * 40}, blend=True, release=lambda: released.append(1))
    )
    stack = _stack(n=3, h=100, w=90)
    gen = fuse_iter(stack, method="test-fussy", register=False, block_size=128, ramp=2)
    messages = []
    try:
        while True:
            messages.append(next(gen).message)
    except StopIteration as stop:
        res = stop.value
    retries = [m for m in messages if "retrying" in m]
    assert retries[0] == "out of memory with 128-pixel tiles; retrying with 64-pixel tiles"
    assert len(retries) == 2 and res.info["block_size"] == 32 and released
    assert np.allclose(res.image, stack.mean(0), atol=1e-6)
    register_method(
        Method("test-hopeless", "test", make=lambda n, shape, **o: _Fussy(shape, 0), blend=True)
    )
    with pytest.raises(TileOutOfMemory, match="even with 16-pixel blocks"):
        fuse(stack, method="test-hopeless", register=False, block_size=64)
    assert get_method("test-fussy").name == "test-fussy"
