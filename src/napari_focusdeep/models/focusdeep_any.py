"""FocusDeep-Any: FocusDeep's blocks with a fusion that takes any number of frames.

The paper names fixed burst length and frame-order dependence as limits. Here
the fusion is a symmetric pooling over frames that streams with memory
independent of the burst length:

* every frame's features are aligned to the previous frame's (by Z index, as in
  FocusDeep; ``align=False`` skips alignment and makes the network exactly
  invariant to frame order);
* a small head scores each aligned feature map from that frame's own features
  (``nf`` per-channel logits plus one image logit per pixel); a focused pixel is
  recognisable locally, and the softmax over frames makes the scores relative;
* pooled over frames: per-pixel, per-channel softmax attention of the features,
  running maximum and running mean; a 1x1 convolution fuses the three;
* the LRCN reconstructs, and the skip path (plus an identity residual for RGB) is
  the softmax(image logit)-weighted average of the input frames, a learned soft
  selection of the sharpest frame per pixel, itself order-invariant.

``base="pyramid"`` replaces the learned soft selection by the classical
``pyramid`` fusion of the same frames (:mod:`napari_focusdeep.fusion.pyramid`,
noise-aware, ``base_levels`` levels): the network then predicts a correction of
the classical result, mostly denoising, and starts from it (its output layers
are initialised near zero), so a short training run cannot end below the
classical method. ``scale=2`` runs the per-frame features and the
reconstruction at half resolution on pixel-unshuffled frames (12 planes for
RGB), a quarter of the cost per frame, and so does the output head, which
predicts the four sub-pixel phases of the correction (:class:`UnshuffledHead`). The two together are the CPU configuration (see docs/models.md).
``noise_input=True`` also gives the reconstruction the stack's measured noise level
(the one the pyramid base uses) as one more input plane, so that fine texture on a
clean stack and noise on a noisy one, which look alike locally, can be told apart.

Streaming uses the numerically stable online softmax: a running maximum logit
``m``, sum ``s = sum exp(l - m)`` and weighted sum ``a = sum exp(l - m) v``, all
rescaled by ``exp(m_old - m_new)`` when the maximum grows; ``a / s`` at the end
is exactly the softmax average. ``forward`` (training) computes the same with a
softmax over the frame axis.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BurstModel, Stream, check_frame
from .blocks import LRCN, FeaturePyramid, OutputHead, PCDAlign, UnshuffledHead, pad_to_multiple, start_at_base, stem_scale, wn_conv
from .focusdeep import previous_index

__all__ = ["FocusDeepAny", "BASES", "StreamedBase", "grid_multiple", "pyramid_base", "burst_noise", "noise_plane", "add_noise_input"]

#: What the skip path adds the network's correction to.
BASES = ("select", "pyramid")


def grid_multiple(scale: int = 1, base: str = "select", base_levels: int = 3) -> int:
    """Tile origins must be multiples of this many input pixels: the feature pyramid's
    strided levels (4 feature pixels, ``scale`` input pixels each) and, for the pyramid
    base, its coarsest grid (``2**base_levels``)."""
    return int(np.lcm(4 * int(scale), 2 ** int(base_levels) if base == "pyramid" else 1))


class FocusDeepAny(BurstModel):
    """Length- and (with ``align=False``) order-invariant FocusDeep.

    Parameters
    ----------
    in_channels, out_channels, features, front_blocks, groups, blocks_per_group,
    offset_groups, max_offset, stem
        As for :class:`~napari_focusdeep.models.focusdeep.FocusDeep`.
    align : bool
        Align each frame's features to the previous frame's (PCD). Without it the
        output does not depend on the order of the frames.
    residual : bool
        Add the skip image (soft selection or pyramid base) to the output (RGB stem only).
    base : {"select", "pyramid"}
        The skip image: the learned per-pixel soft selection of input frames, or
        the classical noise-aware pyramid fusion (:func:`pyramid_base`).
    scale : {1, 2}
        Work at ``1/scale`` resolution on pixel-unshuffled frames (``scale=2``
        needs ``base="pyramid"``, whose image carries the full-resolution detail).
    base_levels : int
        Detail levels of the pyramid base.
    noise_input : bool
        Feed the noise level of the pyramid base (:func:`noise_plane`) to the fusion
        layer as one more plane (needs ``base="pyramid"``). Its weights start at zero.
    """

    architecture = "focusdeep-any"

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        front_blocks: int = 5,
        groups: int = 5,
        blocks_per_group: int = 4,
        offset_groups: int = 8,
        max_offset: float = 4.0,
        stem: str = "rgb",
        align: bool = True,
        residual: bool = True,
        base: str = "select",
        scale: int = 1,
        base_levels: int = 3,
        noise_input: bool = False,
    ) -> None:
        super().__init__()
        stem_scale(stem)
        if base not in BASES:
            raise ValueError(f"unknown base {base!r}; choose one of {BASES}")
        if int(scale) not in (1, 2):
            raise ValueError(f"scale must be 1 or 2, got {scale!r}")
        if base == "pyramid" and (stem != "rgb" or not residual):
            raise ValueError("the pyramid base needs the rgb stem and residual=True (the network corrects it)")
        if int(base_levels) < 1:
            raise ValueError(f"base_levels must be >= 1, got {base_levels!r}")
        if int(scale) != 1 and base != "pyramid":
            raise ValueError("scale=2 needs base='pyramid' (the skip image must be at full resolution)")
        if noise_input and base != "pyramid":
            raise ValueError("noise_input needs base='pyramid', whose noise level it is")
        self.config = dict(
            n_frames=None, in_channels=int(in_channels), out_channels=int(out_channels),
            features=int(features), front_blocks=int(front_blocks), groups=int(groups),
            blocks_per_group=int(blocks_per_group), offset_groups=int(offset_groups),
            max_offset=float(max_offset), stem=stem, align=bool(align), residual=bool(residual),
        )
        if base != "select" or scale != 1:  # older weights' configs stay as they were
            self.config.update(base=base, scale=int(scale), base_levels=int(base_levels))
        if noise_input:
            self.config.update(noise_input=True)
        self.base, self.scale, self.base_levels = base, int(scale), int(base_levels)
        self.noise_input = bool(noise_input)
        self.multiple = grid_multiple(self.scale, base, self.base_levels)
        nf = features
        cin = in_channels * self.scale**2
        self.extract = FeaturePyramid(cin, nf, front_blocks)
        self.align = PCDAlign(nf, offset_groups, max_offset) if align else None
        self.score = nn.Sequential(
            wn_conv(nf, nf, 3), nn.LeakyReLU(0.1, inplace=True), wn_conv(nf, nf + (base == "select"), 3)
        )
        self.fusion = wn_conv(3 * nf + self.noise_input, nf, 1)
        if self.noise_input:
            with torch.no_grad():  # the noise plane starts unused: weights trained without it still fit
                self.fusion.parametrizations.weight.original1[:, 3 * nf :].zero_()
        self.recon = LRCN(nf, groups, blocks_per_group)
        if self.scale > 1:
            if out_channels != in_channels:
                raise ValueError("scale=2 needs as many output as input channels")
            self.head = UnshuffledHead(nf, in_channels, self.scale)
        else:
            self.head = OutputHead(nf, cin, out_channels, stem, residual=residual)
        if base == "pyramid":
            start_at_base(self.head)  # start at the pyramid's result

    def offset_reach(self) -> float:
        # alignment works on features, ``scale`` input pixels apart
        return 0.0 if self.align is None else self.align.offset_reach() * self.scale

    def _aligned(self, cur: list[Tensor], ref: list[Tensor]) -> Tensor:
        return cur[0] if self.align is None else self.align(cur, ref)

    def _features(self, x: Tensor) -> list[Tensor]:
        """Feature pyramid of padded frames ``(B, C, H, W)`` (unshuffled first for ``scale > 1``)."""
        return self.extract(F.pixel_unshuffle(x, self.scale) if self.scale > 1 else x)

    def _fuse_pooled(
        self, attn: Tensor, fmax: Tensor, fmean: Tensor, src: Tensor, hw: tuple[int, int], noise: Sequence[float] = ()
    ) -> Tensor:
        dtype = self.fusion.weight.dtype
        planes = [attn, fmax, fmean]
        if self.noise_input:
            planes.append(noise_plane(noise, attn))
        pooled = torch.cat(planes, dim=1).to(dtype)
        fea = F.relu(self.fusion(pooled))
        out = self.head(self.recon(fea), src.to(dtype))
        s = stem_scale(self.config["stem"])
        return out[..., : hw[0] * s, : hw[1] * s]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)``, any ``N >= 1`` -> ``(B, C_out, H*s, W*s)``."""
        b, n, c, h, w = x.shape
        nf = self.config["features"]
        noise = burst_noise(x) if self.base == "pyramid" else []
        base = pyramid_base(x, self.base_levels, noise) if self.base == "pyramid" else None
        x, _ = pad_to_multiple(x, self.multiple)
        hp, wp = x.shape[-2:]
        feats = self._features(x.reshape(b * n, c, hp, wp))
        hf, wf = feats[0].shape[-2:]
        if self.align is None:
            aligned = feats[0]
        else:
            prev = previous_index(n)
            ref = [f.reshape(b, n, *f.shape[1:])[:, prev].reshape(b * n, *f.shape[1:]) for f in feats]
            aligned = self.align(feats, ref)
        logits = self.score(aligned).float().reshape(b, n, -1, hf, wf)
        a = aligned.float().reshape(b, n, nf, hf, wf)
        attn = (torch.softmax(logits[:, :, :nf], dim=1) * a).sum(dim=1)
        if base is None:
            sel = torch.softmax(logits[:, :, nf:], dim=1)
            src = (sel * x.float()).sum(dim=1)
        else:
            src, _ = pad_to_multiple(base.to(x.device), self.multiple)
        return self._fuse_pooled(attn, a.amax(dim=1), a.mean(dim=1), src, (h, w), noise)

    def stream(self, shape: tuple[int, int, int, int], noise: float | Sequence[float] | None = None) -> Stream:
        """Stream a burst of frames of ``shape = (B, C, H, W)``.

        ``noise`` is the stack's noise level for the pyramid base, one for all ``B``
        bursts or one each. Give it when the burst is fused in tiles, so every tile
        uses the same (the fusion methods measure it once per stack). ``None``
        measures it on each burst's first frame, which is what a tile sees, where
        ``forward`` measures the whole burst as
        :func:`~napari_focusdeep.fusion.pyramid.estimate_noise` does.
        """
        return _AnyStream(self, shape, noise)


def add_noise_input(state: dict[str, Tensor], model: FocusDeepAny) -> dict[str, Tensor]:
    """Weights of a network without ``noise_input``, fitted to ``model`` which has it:
    the fusion layer gains a zero input column, so the network computes what it did."""
    key = "fusion.parametrizations.weight.original1"
    v = state[key]
    want = model.state_dict()[key].shape
    if v.shape[1] + 1 != want[1] or v.shape[0] != want[0]:
        raise ValueError(f"fusion weights of shape {tuple(v.shape)} do not fit {tuple(want)} less the noise plane")
    return {**state, key: torch.cat([v, v.new_zeros(v.shape[0], 1, *v.shape[2:])], dim=1)}


def _base_fusion(shape: tuple[int, int, int], levels: int, noise: float | None) -> Any:
    from ..fusion.pyramid import PyramidFusion

    return PyramidFusion(0, shape, levels=levels, noise="auto" if noise is None else float(noise), track_depth=False)


def _add_base_frame(acc: Any, frame: np.ndarray) -> None:
    from ..fusion.core import selection_image

    acc.add(frame, selection_image(frame))


class StreamedBase:
    """The pyramid base of a streamed batch of bursts: one classical accumulator per
    burst of ``shape = (B, C, H, W)``, fed the same frames as the network.

    ``noise`` is one level for all bursts or one each (``None``: each measured on its
    first frame), as for :func:`pyramid_base`.
    """

    def __init__(self, shape: tuple[int, int, int, int], levels: int, noise: float | Sequence[float] | None) -> None:
        b, c, h, w = shape
        self.accs = [_base_fusion((h, w, c), levels, n) for n in _per_burst(noise, b)]

    def add(self, frame: Tensor, times: int = 1) -> None:
        """Fold ``frame`` ``(B, C, H, W)`` in ``times`` times (a repeated frame counts as copies)."""
        planes = frame.float().permute(0, 2, 3, 1).cpu().numpy()
        for _ in range(times):
            for acc, plane in zip(self.accs, planes):
                _add_base_frame(acc, np.ascontiguousarray(plane))

    def finish(self, device: Any, multiple: int) -> tuple[Tensor, list[float]]:
        """The base images ``(B, C, H', W')``, padded to ``multiple``, on ``device``, and
        the noise level each burst used; the accumulators are released."""
        base = np.stack([acc.finish()[0] for acc in self.accs]).transpose(0, 3, 1, 2)
        noise = [acc.noise for acc in self.accs]  # as given, or measured on the first frame
        self.accs = []
        src, _ = pad_to_multiple(torch.from_numpy(base.copy()).to(device), multiple)
        return src, noise


def _bursts(x: Tensor) -> np.ndarray:
    return x.detach().float().cpu().numpy().transpose(0, 1, 3, 4, 2)  # (B, N, H, W, C)


def burst_noise(x: Tensor) -> list[float]:
    """Each burst's noise level in ``x`` ``(B, N, C, H, W)``, measured as
    :func:`~napari_focusdeep.fusion.pyramid.estimate_noise` measures a stack."""
    from ..fusion.pyramid import estimate_noise

    return [estimate_noise(burst) for burst in _bursts(x)]


def noise_plane(noise: Sequence[float], like: Tensor) -> Tensor:
    """The noise-level input plane, ``(B, 1, H, W)`` like ``like``.

    ``log10`` of the level (floored at 1e-4, below 16-bit quantisation) plus 2, so
    the range met in practice, 1e-3 (clean) to 0.1 (very high ISO), maps to -1..1.
    """
    b, _, h, w = like.shape
    if len(noise) != b:
        raise ValueError(f"{len(noise)} noise levels for {b} bursts")
    level = torch.tensor([np.log10(max(float(v), 1e-4)) + 2.0 for v in noise], dtype=like.dtype, device=like.device)
    return level.view(b, 1, 1, 1).expand(b, 1, h, w)


def _per_burst(noise: Any, b: int) -> list:
    """``noise`` as one level per burst: a single value (or ``None``) for all, or one each."""
    levels = list(np.ravel(noise)) if np.ndim(noise) else [noise] * b
    if len(levels) != b:
        raise ValueError(f"{len(levels)} noise levels for {b} bursts")
    return levels


def pyramid_base(x: Tensor, levels: int = 3, noise: float | Sequence[float] | None = None) -> Tensor:
    """The classical ``pyramid`` fusion of each burst in ``x`` ``(B, N, C, H, W)``.

    Computed with :class:`~napari_focusdeep.fusion.pyramid.PyramidFusion` on the
    CPU (no gradient flows through it), with the noise level measured per burst
    as :func:`~napari_focusdeep.fusion.pyramid.estimate_noise` measures a stack,
    unless ``noise`` (one for all bursts, or one each) is given. Returns
    ``(B, C, H, W)`` float32 on ``x``'s device.
    """
    frames = _bursts(x)
    out = []
    for burst, level in zip(frames, _per_burst(burst_noise(x) if noise is None else noise, len(frames))):
        acc = _base_fusion(burst.shape[1:], levels, level)
        for frame in burst:
            _add_base_frame(acc, np.ascontiguousarray(frame))
        out.append(acc.finish()[0])
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy()).to(x.device)


def _online_softmax(state: list[Tensor] | None, logit: Tensor, value: Tensor) -> list[Tensor]:
    """Fold one frame into ``[running max logit, sum of exp, weighted sum]``."""
    if state is None:
        return [logit, torch.ones_like(logit), value.clone()]
    m, s, acc = state
    m_new = torch.maximum(m, logit)
    keep = torch.exp(m - m_new)
    w = torch.exp(logit - m_new)
    return [m_new, s * keep + w, acc * keep + value * w]


class _AnyStream(Stream):
    """Per burst: previous pyramid, two online softmaxes, running max and sum."""

    def __init__(self, model: FocusDeepAny, shape: tuple[int, int, int, int], noise: float | None = None) -> None:
        self.model = model
        self.shape = shape
        self.base = StreamedBase(shape, model.base_levels, noise) if model.base == "pyramid" else None
        self.finished = False
        self.count = 0
        self.prev: list[Tensor] | None = None
        self.feat_sm: list[Tensor] | None = None
        self.img_sm: list[Tensor] | None = None
        self.fmax: Tensor | None = None
        self.fsum: Tensor | None = None

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        if self.finished:
            raise RuntimeError("this burst is finished; start another stream")
        check_frame(frame, self.shape)
        m = self.model
        nf = m.config["features"]
        x, _ = pad_to_multiple(frame, m.multiple)
        feats = m._features(x)
        aligned = m._aligned(feats, self.prev if self.prev is not None else feats)
        self.prev = feats if m.align is not None else None
        logits = m.score(aligned).float()
        a = aligned.float()
        if self.base is not None:
            self.base.add(frame, max(0, int(repeat)))
        for _ in range(max(0, int(repeat))):  # a repeated frame counts like N copies of it
            self.feat_sm = _online_softmax(self.feat_sm, logits[:, :nf], a)
            if self.base is None:
                self.img_sm = _online_softmax(self.img_sm, logits[:, nf:], x.float())
            self.fmax = a if self.fmax is None else torch.maximum(self.fmax, a)
            self.fsum = a.clone() if self.fsum is None else self.fsum + a
            self.count += 1

    def state_nbytes(self) -> int:
        """Bytes held between frames (constant in the number of frames)."""
        tensors = list(self.prev or []) + list(self.feat_sm or []) + list(self.img_sm or [])
        tensors += [t for t in (self.fmax, self.fsum) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def finish(self) -> Tensor:
        if self.finished:
            raise RuntimeError("this burst is finished; start another stream")
        if self.count == 0:
            raise ValueError("no frames were pushed")
        self.finished = True
        _, s, acc = self.feat_sm
        h, w = self.shape[-2:]
        noise: list[float] = []
        if self.base is None:
            _, si, acci = self.img_sm
            src = acci / si
        else:
            src, noise = self.base.finish(acc.device, self.model.multiple)
        return self.model._fuse_pooled(acc / s, self.fmax, self.fsum / self.count, src, (h, w), noise)
