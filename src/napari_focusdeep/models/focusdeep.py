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

``base="pyramid"`` (not in the paper) adds the network's output to the classical
noise-aware ``pyramid`` fusion of the burst instead, as
:class:`~napari_focusdeep.models.focusdeep_any.FocusDeepAny` can: the network then
predicts a correction of the classical result and, since its output layers start
near zero, starts from it. Trained end to end from the first frame, this network
stays far below the classical methods after a GPU-budget run (see
docs/model-card.md); on the base it cannot end below them. When a stack is longer
than ``n_frames``, the frames the network's slots skip still go into the base, so
no focus slice is lost. ``noise_input=True`` also gives the fusion the stack's
measured noise level as one more plane.

A convolution over concatenated channels is a sum of per-frame convolutions, so
inference streams (:meth:`FocusDeep.stream`): only the previous frame's pyramid
and one fused feature map are held, whatever ``n_frames``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import BurstModel, Stream, check_frame, resample_frames
from .blocks import LRCN, FeaturePyramid, OutputHead, PCDAlign, pad_to_multiple, start_at_base, stem_scale, wn_conv

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
        Source of the skip path (without a base).
    fusion_kernel : int
        Kernel size of the fusion convolution (1 as in EBSR).
    base : {None, "pyramid"}
        ``"pyramid"``: the output corrects the classical pyramid fusion of the
        burst (:func:`~napari_focusdeep.models.focusdeep_any.pyramid_base`) instead
        of adding a skip path from ``skip``'s frames. Needs the rgb stem.
    base_levels : int
        Detail levels of the pyramid base.
    noise_input : bool
        Feed the base's noise level (:func:`~napari_focusdeep.models.focusdeep_any.noise_plane`)
        to the fusion convolution as one more plane (needs ``base="pyramid"``).
        Its weights start at zero.
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
        base: str | None = None,
        base_levels: int = 3,
        noise_input: bool = False,
    ) -> None:
        super().__init__()
        if n_frames < 1:
            raise ValueError("n_frames must be at least 1")
        if skip not in ("first", "mean"):
            raise ValueError(f"skip must be 'first' or 'mean', got {skip!r}")
        stem_scale(stem)
        if base not in (None, "pyramid"):
            raise ValueError(f"base must be None or 'pyramid', got {base!r}")
        if base == "pyramid" and (stem != "rgb" or in_channels != out_channels):
            raise ValueError("the pyramid base needs the rgb stem and as many output as input channels")
        if int(base_levels) < 1:
            raise ValueError(f"base_levels must be >= 1, got {base_levels!r}")
        if noise_input and base != "pyramid":
            raise ValueError("noise_input needs base='pyramid', whose noise level it is")
        self.config = dict(
            n_frames=int(n_frames), in_channels=int(in_channels), out_channels=int(out_channels),
            features=int(features), front_blocks=int(front_blocks), groups=int(groups),
            blocks_per_group=int(blocks_per_group), offset_groups=int(offset_groups),
            max_offset=float(max_offset), stem=stem, skip=skip, fusion_kernel=int(fusion_kernel),
        )
        if base is not None:  # older weights' configs stay as they were
            self.config.update(base=base, base_levels=int(base_levels))
        if noise_input:
            self.config.update(noise_input=True)
        self.base, self.base_levels, self.noise_input = base, int(base_levels), bool(noise_input)
        if base == "pyramid":
            from .focusdeep_any import grid_multiple

            self.multiple = grid_multiple(1, base, self.base_levels)
        nf = features
        self.extract = FeaturePyramid(in_channels, nf, front_blocks)
        self.align = PCDAlign(nf, offset_groups, max_offset)
        self.fusion = wn_conv(n_frames * nf + self.noise_input, nf, fusion_kernel)
        if self.noise_input:
            with torch.no_grad():  # the noise plane starts unused: weights trained without it still fit
                self.fusion.parametrizations.weight.original1[:, n_frames * nf :].zero_()
        self.recon = LRCN(nf, groups, blocks_per_group)
        self.head = OutputHead(nf, in_channels, out_channels, stem, residual=base == "pyramid")
        if base == "pyramid":
            start_at_base(self.head)

    def offset_reach(self) -> float:
        return self.align.offset_reach()

    def _skip_source(self, x: Tensor) -> Tensor:
        return x[:, 0] if self.config["skip"] == "first" else x.mean(dim=1)

    def _fused(self, acc: Tensor, noise: Sequence[float]) -> Tensor:
        """ReLU of the fusion convolution, given its frames' part ``acc`` (no bias)."""
        if self.noise_input:
            from .focusdeep_any import noise_plane

            k = self.config["fusion_kernel"]
            w = self.fusion.weight[:, -1:]
            plane = noise_plane(noise, acc[:, :1]).to(w.dtype)
            acc = acc + F.conv2d(plane, w, padding=k // 2).float()
        return F.relu(acc + self.fusion.bias.to(acc.dtype).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)`` with ``N == n_frames`` -> ``(B, C_out, H*s, W*s)``."""
        b, n, c, h, w = x.shape
        if n != self.n_frames:
            raise ValueError(
                f"this FocusDeep takes {self.n_frames} frames, got {n}; "
                "resample the burst with resample_frames(n_in, n_frames)"
            )
        if self.base == "pyramid":
            from .focusdeep_any import burst_noise, pyramid_base

            noise = burst_noise(x)
            src, _ = pad_to_multiple(pyramid_base(x, self.base_levels, noise).to(x.device), self.multiple)
        x, _ = pad_to_multiple(x, self.multiple)
        hp, wp = x.shape[-2:]
        feats = self.extract(x.reshape(b * n, c, hp, wp))
        feats = [f.reshape(b, n, *f.shape[1:]) for f in feats]
        prev = previous_index(n)
        cur = [f.reshape(b * n, *f.shape[2:]) for f in feats]
        ref = [f[:, prev].reshape(b * n, *f.shape[2:]) for f in feats]
        aligned = self.align(cur, ref).reshape(b, n * self.config["features"], hp, wp)
        if self.noise_input:
            k = self.config["fusion_kernel"]
            fea = self._fused(F.conv2d(aligned, self.fusion.weight[:, :-1], padding=k // 2).float(), noise)
        else:
            fea = F.relu(self.fusion(aligned))
        if self.base != "pyramid":
            src = self._skip_source(x)
        out = self.head(self.recon(fea.to(self.fusion.weight.dtype)), src.to(self.fusion.weight.dtype))
        s = stem_scale(self.config["stem"])
        return out[..., : h * s, : w * s]

    def stream(self, shape: tuple[int, int, int, int], noise: float | Sequence[float] | None = None) -> Stream:
        """Stream a burst of frames of ``shape = (B, C, H, W)``.

        ``noise`` is the stack's noise level for the pyramid base, as for
        :meth:`FocusDeepAny.stream <napari_focusdeep.models.focusdeep_any.FocusDeepAny.stream>`.
        A frame pushed with ``repeat=0`` (one the resampling to ``n_frames`` skips)
        goes into the pyramid base only.
        """
        return _FocusDeepStream(self, shape, noise)


class _FocusDeepStream(Stream):
    def __init__(self, model: FocusDeep, shape: tuple[int, int, int, int], noise: float | Sequence[float] | None = None) -> None:
        from .focusdeep_any import StreamedBase

        self.model = model
        self.shape = shape
        self.slot = 0
        self.prev: list[Tensor] | None = None
        self.acc: Tensor | None = None
        self.src: Tensor | None = None
        self.base = StreamedBase(shape, model.base_levels, noise) if model.base == "pyramid" else None
        self.finished = False

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        if self.finished:
            raise RuntimeError("this burst is finished; start another stream")
        m = self.model
        check_frame(frame, self.shape)
        n, nf = m.config["n_frames"], m.config["features"]
        if self.slot + repeat > n:
            raise ValueError(f"this FocusDeep takes {n} frames; got more")
        if self.base is not None:  # as forward sees it: a repeated slot twice, a skipped frame once
            self.base.add(frame, max(1, int(repeat)))
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
        if self.base is not None:
            return
        if m.config["skip"] == "first":
            if self.src is None:
                self.src = x
        else:
            self.src = x * repeat if self.src is None else self.src + x * repeat

    def finish(self) -> Tensor:
        m = self.model
        n = m.config["n_frames"]
        if self.finished:
            raise RuntimeError("this burst is finished; start another stream")
        if self.slot != n:
            raise ValueError(f"this FocusDeep takes {n} frames, {self.slot} were pushed")
        self.finished = True
        noise: list[float] = []
        if self.base is not None:
            src, noise = self.base.finish(self.acc.device, m.multiple)
        else:
            src = self.src if m.config["skip"] == "first" else self.src / n
        fea = m._fused(self.acc, noise)
        dtype = m.fusion.weight.dtype
        out = m.head(m.recon(fea.to(dtype)), src.to(dtype))
        s = stem_scale(m.config["stem"])
        h, w = self.shape[-2:]
        return out[..., : h * s, : w * s]
