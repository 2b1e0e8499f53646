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

Streaming uses the numerically stable online softmax: a running maximum logit
``m``, sum ``s = sum exp(l - m)`` and weighted sum ``a = sum exp(l - m) v``, all
rescaled by ``exp(m_old - m_new)`` when the maximum grows; ``a / s`` at the end
is exactly the softmax average. ``forward`` (training) computes the same with a
softmax over the frame axis.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BurstModel, Stream, check_frame
from .blocks import LRCN, FeaturePyramid, OutputHead, PCDAlign, pad_to_multiple, stem_scale, wn_conv
from .focusdeep import previous_index

__all__ = ["FocusDeepAny"]


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
        Add the soft-selected input image to the output (RGB stem only).
    """

    architecture = "focusdeep-any"
    multiple = 4

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
    ) -> None:
        super().__init__()
        stem_scale(stem)
        self.config = dict(
            n_frames=None, in_channels=int(in_channels), out_channels=int(out_channels),
            features=int(features), front_blocks=int(front_blocks), groups=int(groups),
            blocks_per_group=int(blocks_per_group), offset_groups=int(offset_groups),
            max_offset=float(max_offset), stem=stem, align=bool(align), residual=bool(residual),
        )
        nf = features
        self.extract = FeaturePyramid(in_channels, nf, front_blocks)
        self.align = PCDAlign(nf, offset_groups, max_offset) if align else None
        self.score = nn.Sequential(
            wn_conv(nf, nf, 3), nn.LeakyReLU(0.1, inplace=True), wn_conv(nf, nf + 1, 3)
        )
        self.fusion = wn_conv(3 * nf, nf, 1)
        self.recon = LRCN(nf, groups, blocks_per_group)
        self.head = OutputHead(nf, in_channels, out_channels, stem, residual=residual)

    def offset_reach(self) -> float:
        return 0.0 if self.align is None else self.align.offset_reach()

    def _aligned(self, cur: list[Tensor], ref: list[Tensor]) -> Tensor:
        return cur[0] if self.align is None else self.align(cur, ref)

    def _fuse_pooled(self, attn: Tensor, fmax: Tensor, fmean: Tensor, src: Tensor, hw: tuple[int, int]) -> Tensor:
        dtype = self.fusion.weight.dtype
        pooled = torch.cat([attn, fmax, fmean], dim=1).to(dtype)
        fea = F.relu(self.fusion(pooled))
        out = self.head(self.recon(fea), src.to(dtype))
        s = stem_scale(self.config["stem"])
        return out[..., : hw[0] * s, : hw[1] * s]

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)``, any ``N >= 1`` -> ``(B, C_out, H*s, W*s)``."""
        b, n, c, h, w = x.shape
        nf = self.config["features"]
        x, _ = pad_to_multiple(x, self.multiple)
        hp, wp = x.shape[-2:]
        feats = self.extract(x.reshape(b * n, c, hp, wp))
        if self.align is None:
            aligned = feats[0]
        else:
            prev = previous_index(n)
            ref = [f.reshape(b, n, *f.shape[1:])[:, prev].reshape(b * n, *f.shape[1:]) for f in feats]
            aligned = self.align(feats, ref)
        logits = self.score(aligned).float().reshape(b, n, nf + 1, hp, wp)
        a = aligned.float().reshape(b, n, nf, hp, wp)
        attn = (torch.softmax(logits[:, :, :nf], dim=1) * a).sum(dim=1)
        sel = torch.softmax(logits[:, :, nf:], dim=1)
        src = (sel * x.float()).sum(dim=1)
        return self._fuse_pooled(attn, a.amax(dim=1), a.mean(dim=1), src, (h, w))

    def stream(self, shape: tuple[int, int, int, int]) -> Stream:
        return _AnyStream(self, shape)


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

    def __init__(self, model: FocusDeepAny, shape: tuple[int, int, int, int]) -> None:
        self.model = model
        self.shape = shape
        self.count = 0
        self.prev: list[Tensor] | None = None
        self.feat_sm: list[Tensor] | None = None
        self.img_sm: list[Tensor] | None = None
        self.fmax: Tensor | None = None
        self.fsum: Tensor | None = None

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        check_frame(frame, self.shape)
        m = self.model
        nf = m.config["features"]
        x, _ = pad_to_multiple(frame, m.multiple)
        feats = m.extract(x)
        aligned = m._aligned(feats, self.prev if self.prev is not None else feats)
        self.prev = feats if m.align is not None else None
        logits = m.score(aligned).float()
        a = aligned.float()
        for _ in range(max(0, int(repeat))):  # a repeated frame counts like N copies of it
            self.feat_sm = _online_softmax(self.feat_sm, logits[:, :nf], a)
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
        if self.count == 0:
            raise ValueError("no frames were pushed")
        _, s, acc = self.feat_sm
        _, si, acci = self.img_sm
        h, w = self.shape[-2:]
        return self.model._fuse_pooled(acc / s, self.fmax, self.fsum / self.count, acci / si, (h, w))
