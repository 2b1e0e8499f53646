"""FocusDeep: the paper's fixed-length burst fusion network.

Per frame: input stem, front WARBs and a 3-level feature pyramid
(:class:`~napari_focusdeep.models.blocks.FeaturePyramid`). Every frame's
features are aligned to the PREVIOUS frame's (unaligned) features with PCD
deformable alignment (the first frame to itself): neighbouring frames are
similarly blurred, first and last are not. Because the reference is the
previous frame's own features, not its aligned result, the receptive field does
not grow with the burst length. The ``N`` aligned feature maps are fused by one
convolution over ``N * nf`` channels (the paper's replacement for EBSR's
non-local fusion, which biased the result towards the reference frame), then
reconstructed by an LRCN, and the output adds a convolutional skip path from the
first frame (``skip="first"``, as in the paper) or the frames' mean.

A convolution over concatenated channels is a sum of per-frame convolutions, so
inference streams (:meth:`FocusDeep.stream`): only the previous frame's pyramid
and one fused feature map are held, whatever ``n_frames``.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .base import BurstModel, Stream, check_frame, resample_frames
from .blocks import LRCN, FeaturePyramid, OutputHead, PCDAlign, pad_to_multiple, stem_scale, wn_conv

__all__ = ["FocusDeep", "resample_frames", "previous_index"]


def previous_index(n: int) -> list[int]:
    """The reference frame of each frame: the one before it (the first: itself)."""
    return [max(i - 1, 0) for i in range(n)]


class FocusDeep(BurstModel):
    """The FocusDeep network (fixed burst length).

    Parameters
    ----------
    n_frames : int
        Burst length the network is built for (the fusion convolution has
        ``n_frames * features`` inputs). Resample other lengths with
        :func:`resample_frames`.
    in_channels, out_channels : int
        3 and 3 for RGB; the ``"raw"`` stem takes 4 (packed RGGB).
    features : int
        Feature channels ``nf`` (a multiple of ``offset_groups``).
    front_blocks : int
        WARBs in the per-frame feature extractor.
    groups, blocks_per_group : int
        LRCN reconstruction size.
    offset_groups : int
        Deformable-convolution offset groups in the alignment.
    max_offset : float
        Bound on each learned displacement, in pixels of its pyramid level.
    stem : {"rgb", "raw"}
        ``"raw"``: input is packed RGGB at half resolution, the output is upsampled
        2x by a pixel shuffle.
    skip : {"first", "mean"}
        Source of the skip path.
    fusion_kernel : int
        Kernel size of the fusion convolution (1 as in EBSR).
    """

    architecture = "focusdeep"
    multiple = 4

    def __init__(
        self,
        n_frames: int = 30,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 64,
        front_blocks: int = 5,
        groups: int = 5,
        blocks_per_group: int = 4,
        offset_groups: int = 8,
        max_offset: float = 4.0,
        stem: str = "rgb",
        skip: str = "first",
        fusion_kernel: int = 1,
    ) -> None:
        super().__init__()
        if n_frames < 1:
            raise ValueError("n_frames must be at least 1")
        if skip not in ("first", "mean"):
            raise ValueError(f"skip must be 'first' or 'mean', got {skip!r}")
        stem_scale(stem)
        self.config = dict(
            n_frames=int(n_frames), in_channels=int(in_channels), out_channels=int(out_channels),
            features=int(features), front_blocks=int(front_blocks), groups=int(groups),
            blocks_per_group=int(blocks_per_group), offset_groups=int(offset_groups),
            max_offset=float(max_offset), stem=stem, skip=skip, fusion_kernel=int(fusion_kernel),
        )
        nf = features
        self.extract = FeaturePyramid(in_channels, nf, front_blocks)
        self.align = PCDAlign(nf, offset_groups, max_offset)
        self.fusion = wn_conv(n_frames * nf, nf, fusion_kernel)
        self.recon = LRCN(nf, groups, blocks_per_group)
        self.head = OutputHead(nf, in_channels, out_channels, stem)

    def offset_reach(self) -> float:
        return self.align.offset_reach()

    def _skip_source(self, x: Tensor) -> Tensor:
        return x[:, 0] if self.config["skip"] == "first" else x.mean(dim=1)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)`` with ``N == n_frames`` -> ``(B, C_out, H*s, W*s)``."""
        b, n, c, h, w = x.shape
        if n != self.n_frames:
            raise ValueError(
                f"this FocusDeep takes {self.n_frames} frames, got {n}; "
                "resample the burst with resample_frames(n_in, n_frames)"
            )
        x, _ = pad_to_multiple(x, self.multiple)
        hp, wp = x.shape[-2:]
        feats = self.extract(x.reshape(b * n, c, hp, wp))
        feats = [f.reshape(b, n, *f.shape[1:]) for f in feats]
        prev = previous_index(n)
        cur = [f.reshape(b * n, *f.shape[2:]) for f in feats]
        ref = [f[:, prev].reshape(b * n, *f.shape[2:]) for f in feats]
        aligned = self.align(cur, ref).reshape(b, n * self.config["features"], hp, wp)
        fea = F.relu(self.fusion(aligned))
        out = self.head(self.recon(fea), self._skip_source(x))
        s = stem_scale(self.config["stem"])
        return out[..., : h * s, : w * s]

    def stream(self, shape: tuple[int, int, int, int]) -> Stream:
        return _FocusDeepStream(self, shape)


class _FocusDeepStream(Stream):
    def __init__(self, model: FocusDeep, shape: tuple[int, int, int, int]) -> None:
        self.model = model
        self.shape = shape
        self.slot = 0
        self.prev: list[Tensor] | None = None
        self.acc: Tensor | None = None
        self.src: Tensor | None = None

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        m = self.model
        check_frame(frame, self.shape)
        n, nf = m.config["n_frames"], m.config["features"]
        if self.slot + repeat > n:
            raise ValueError(f"this FocusDeep takes {n} frames; got more")
        if repeat < 1:
            return
        x, _ = pad_to_multiple(frame, m.multiple)
        feats = m.extract(x)
        weight = m.fusion.weight  # computed once (weight norm) for all slots of this frame
        k = m.config["fusion_kernel"]
        self_aligned = None  # a repeated slot's reference is the same frame: align once
        for r in range(repeat):
            if r == 0 and self.prev is not None:
                aligned = m.align(feats, self.prev)
            else:
                if self_aligned is None:
                    self_aligned = m.align(feats, feats)
                aligned = self_aligned
            w = weight[:, self.slot * nf : (self.slot + 1) * nf]
            part = F.conv2d(aligned, w.to(aligned.dtype), padding=k // 2).float()  # sum in fp32
            self.acc = part if self.acc is None else self.acc + part
            self.slot += 1
        self.prev = feats
        if m.config["skip"] == "first":
            if self.src is None:
                self.src = x
        else:
            self.src = x * repeat if self.src is None else self.src + x * repeat

    def finish(self) -> Tensor:
        m = self.model
        n = m.config["n_frames"]
        if self.slot != n:
            raise ValueError(f"this FocusDeep takes {n} frames, {self.slot} were pushed")
        bias = m.fusion.bias
        fea = F.relu(self.acc + bias.to(self.acc.dtype).view(1, -1, 1, 1))
        src = self.src if m.config["skip"] == "first" else self.src / n
        out = m.head(m.recon(fea), src)
        s = stem_scale(m.config["stem"])
        h, w = self.shape[-2:]
        return out[..., : h * s, : w * s]
