"""Building blocks shared by the FocusDeep networks (after EBSR, Luo et al. 2021).

* :class:`WARB`: wide-activation residual block (WDSR): weight-normalised 1x1
  expansion x6, ReLU, 1x1 reduction to 0.8x, 3x3 convolution, residual.
* :class:`LRCN`: long-range concatenation network: groups of WARB bodies whose
  outputs are concatenated (not added) onto everything before them, each group
  and the whole trunk squeezed back to ``nf`` channels by 1x1 convolutions.
* :class:`FeaturePyramid`: the input stem, front WARBs and a 3-level
  feature-enhanced pyramid (FPN top-down path), all levels ``nf`` channels.
* :class:`PCDAlign`: pyramid, cascading and deformable alignment (EDVR) with
  modulated deformable convolutions in ``offset_groups`` groups, aligning a
  frame's features to a reference frame's features (FocusDeep uses the previous
  frame as the reference, not the first).
* :class:`OutputHead`: final convolutions plus a convolutional skip path from an
  input image; the ``"raw"`` stem (packed RGGB at half resolution) ends in a
  pixel shuffle to full-resolution RGB.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from .deform import DeformConvPack

__all__ = [
    "wn_conv",
    "WARB",
    "LRCN",
    "FeaturePyramid",
    "PCDAlign",
    "OutputHead",
    "start_at_base",
    "STEMS",
    "stem_scale",
    "pad_to_multiple",
    "pcd_offset_reach",
    "bilinear_demosaic",
]

STEMS = ("rgb", "raw")


def stem_scale(stem: str) -> int:
    """Output pixels per input pixel along each axis: 1 for RGB, 2 for packed RGGB."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; choose one of {STEMS}")
    return 2 if stem == "raw" else 1


def wn_conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = True) -> nn.Module:
    """A weight-normalised ``k x k`` convolution with 'same' padding."""
    return weight_norm(nn.Conv2d(cin, cout, k, stride, k // 2, bias=bias))


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Replicate-pad the last two axes at the bottom/right up to a multiple.

    Padding at the far edges keeps the pixel grid of the top-left corner, so a
    tile whose origin is a multiple of ``multiple`` sees the same strided grid as
    the whole image. Returns the padded tensor and the original ``(H, W)``.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        shape = x.shape
        flat = x.reshape(-1, *shape[-3:]) if x.dim() > 4 else x
        flat = F.pad(flat, (0, pw, 0, ph), mode="replicate")
        x = flat.reshape(*shape[:-2], h + ph, w + pw)
    return x, (h, w)


def _warb_body(nf: int, expand: int = 6, linear: float = 0.8) -> nn.Sequential:
    mid = max(1, int(nf * linear))
    return nn.Sequential(
        wn_conv(nf, nf * expand, 1),
        nn.ReLU(inplace=True),
        wn_conv(nf * expand, mid, 1),
        wn_conv(mid, nf, 3),
    )


class WARB(nn.Module):
    """Wide-activation residual block: ``x + conv3(reduce(relu(expand(x))))``."""

    def __init__(self, nf: int, expand: int = 6, linear: float = 0.8) -> None:
        super().__init__()
        self.body = _warb_body(nf, expand, linear)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class _LRCBlock(nn.Module):
    """WARB body on a 1x1 squeeze of everything so far; output concatenated on."""

    def __init__(self, nf: int, idx: int) -> None:
        super().__init__()
        self.head = wn_conv(nf * (idx + 1), nf, 1) if idx > 0 else nn.Identity()
        self.body = _warb_body(nf)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.body(self.head(x)), x], dim=1)


class _LRCGroup(nn.Module):
    def __init__(self, nf: int, n_blocks: int, idx: int) -> None:
        super().__init__()
        self.head = wn_conv(nf * (idx + 1), nf, 1) if idx > 0 else nn.Identity()
        self.body = nn.Sequential(*[_LRCBlock(nf, i) for i in range(n_blocks)])
        self.tail = wn_conv(nf * (n_blocks + 1), nf, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.tail(self.body(self.head(x))), x], dim=1)


class LRCN(nn.Module):
    """Long-range concatenation network: ``groups`` groups of ``blocks`` WARB bodies."""

    def __init__(self, nf: int, groups: int = 5, blocks: int = 4) -> None:
        super().__init__()
        self.groups = nn.Sequential(*[_LRCGroup(nf, blocks, g) for g in range(groups)])
        self.tail = wn_conv(nf * (groups + 1), nf, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.tail(self.groups(x))


def _up2(x: Tensor) -> Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class FeaturePyramid(nn.Module):
    """Per-frame features at three scales (1, 1/2, 1/4), each ``nf`` channels.

    Input height and width must be multiples of 4 (the models pad).
    """

    levels = 3

    def __init__(self, in_channels: int, nf: int, front_blocks: int = 5) -> None:
        super().__init__()
        self.conv_first = wn_conv(in_channels, nf, 3)
        self.front = nn.Sequential(*[WARB(nf) for _ in range(front_blocks)])
        self.down2 = wn_conv(nf, nf * 2, 3, stride=2)
        self.down3 = wn_conv(nf * 2, nf * 4, 3, stride=2)
        self.top = wn_conv(nf * 4, nf, 1)
        self.lat2 = wn_conv(nf * 2, nf, 1)
        self.lat1 = wn_conv(nf, nf, 1)
        self.smooth2 = wn_conv(nf, nf, 3)
        self.smooth1 = wn_conv(nf, nf, 3)

    def forward(self, x: Tensor) -> list[Tensor]:
        l1 = self.front(F.relu(self.conv_first(x)))
        l2 = F.relu(self.down2(l1))
        l3 = F.relu(self.down3(l2))
        l3 = F.relu(self.top(l3))
        l2 = self.smooth2(_up2(l3) + self.lat2(l2))
        l1 = self.smooth1(_up2(l2) + self.lat1(l1))
        return [l1, l2, l3]


def pcd_offset_reach(max_offset: float | None) -> float:
    """Largest extra reach (level-1 pixels) that deformations bounded by ``max_offset``
    (in each level's own pixels) add to :class:`PCDAlign`'s receptive field.

    Every path through the module crosses at most two deformations in sequence:
    level 3's (``4 * max_offset``), carried up through levels 2 and 1, then the
    cascade's (``max_offset``); the others are shorter.
    """
    if max_offset is None or max_offset <= 0:
        return float("inf")
    return float(max_offset) * (4 + 1)


class PCDAlign(nn.Module):
    """Pyramid, cascading and deformable alignment of ``cur`` onto ``ref`` features.

    At each level, from coarse to fine, offset features are predicted from the
    concatenated (current, reference) features plus the coarser level's offset
    features (upsampled and doubled, since displacements double with resolution);
    a modulated deformable convolution (``offset_groups`` groups) samples the
    current frame's features. A final cascade stage refines the full-resolution
    result against the reference.
    """

    def __init__(self, nf: int, offset_groups: int = 8, max_offset: float | None = 4.0) -> None:
        super().__init__()
        self.max_offset = max_offset

        def dcn() -> DeformConvPack:
            return DeformConvPack(nf, nf, nf, 3, offset_groups, max_offset)

        # level 3 (1/4)
        self.l3_off1 = wn_conv(nf * 2, nf, 3)
        self.l3_off2 = wn_conv(nf, nf, 3)
        self.l3_dcn = dcn()
        # level 2 (1/2)
        self.l2_off1 = wn_conv(nf * 2, nf, 3)
        self.l2_off2 = wn_conv(nf * 2, nf, 3)
        self.l2_off3 = wn_conv(nf, nf, 3)
        self.l2_dcn = dcn()
        self.l2_fea = wn_conv(nf * 2, nf, 3)
        # level 1 (full)
        self.l1_off1 = wn_conv(nf * 2, nf, 3)
        self.l1_off2 = wn_conv(nf * 2, nf, 3)
        self.l1_off3 = wn_conv(nf, nf, 3)
        self.l1_dcn = dcn()
        self.l1_fea = wn_conv(nf * 2, nf, 3)
        # cascade
        self.cas_off1 = wn_conv(nf * 2, nf, 3)
        self.cas_off2 = wn_conv(nf, nf, 3)
        self.cas_dcn = dcn()

    def offset_reach(self) -> float:
        """Extra receptive-field reach (full-resolution pixels) of the deformations."""
        return pcd_offset_reach(self.max_offset)

    def forward(self, cur: list[Tensor], ref: list[Tensor]) -> Tensor:
        act = lambda t: F.leaky_relu(t, 0.1)  # noqa: E731
        off3 = act(self.l3_off1(torch.cat([cur[2], ref[2]], 1)))
        off3 = act(self.l3_off2(off3))
        fea3 = act(self.l3_dcn(cur[2], off3))

        off2 = act(self.l2_off1(torch.cat([cur[1], ref[1]], 1)))
        off2 = act(self.l2_off2(torch.cat([off2, _up2(off3) * 2], 1)))
        off2 = act(self.l2_off3(off2))
        fea2 = self.l2_dcn(cur[1], off2)
        fea2 = act(self.l2_fea(torch.cat([fea2, _up2(fea3)], 1)))

        off1 = act(self.l1_off1(torch.cat([cur[0], ref[0]], 1)))
        off1 = act(self.l1_off2(torch.cat([off1, _up2(off2) * 2], 1)))
        off1 = act(self.l1_off3(off1))
        fea1 = self.l1_dcn(cur[0], off1)
        fea1 = self.l1_fea(torch.cat([fea1, _up2(fea2)], 1))

        off = act(self.cas_off1(torch.cat([fea1, ref[0]], 1)))
        off = act(self.cas_off2(off))
        return act(self.cas_dcn(fea1, off))


class OutputHead(nn.Module):
    """Reconstructed features + skip image -> output image (EBSR's tail).

    ``skip1 = relu(shuffle(conv(src)))`` lifts the skip image to features at the
    output resolution; ``out = conv_last(relu(hr(relu(conv(up + skip1))))) +
    conv(skip1)``. ``residual=True`` also adds ``src`` itself (RGB stem with as
    many input as output channels), or for the ``"raw"`` stem (4 packed planes in,
    RGB out) its fixed bilinear demosaic (:func:`bilinear_demosaic`), so the network
    predicts a correction either way.
    """

    def __init__(self, nf: int, in_channels: int, out_channels: int, stem: str = "rgb", residual: bool = False) -> None:
        super().__init__()
        s = stem_scale(stem)
        # the raw stem's identity is a demosaic: without it a raw network would have to
        # learn demosaicking before it could learn anything else (measured: it barely
        # does in a CPU-hour), with it a raw network starts where an RGB one does
        self.residual = bool(residual and ((s == 1 and in_channels == out_channels) or (s == 2 and in_channels == 4 and out_channels == 3)))
        self.demosaic = s == 2
        self.up = wn_conv(nf, nf * s * s, 3)
        self.skip_up = wn_conv(in_channels, nf * s * s, 3)
        self.shuffle = nn.PixelShuffle(s) if s > 1 else nn.Identity()
        self.conv = wn_conv(nf, nf, 3)
        self.hr = wn_conv(nf, nf, 3)
        self.last = wn_conv(nf, out_channels, 3)
        self.skip_last = wn_conv(nf, out_channels, 3)

    def forward(self, fea: Tensor, src: Tensor) -> Tensor:
        skip1 = F.relu(self.shuffle(self.skip_up(src)))
        x = F.relu(self.shuffle(self.up(fea))) + skip1
        x = F.relu(self.conv(x))
        x = F.relu(self.hr(x))
        out = self.last(x) + self.skip_last(skip1)
        if self.residual:
            out = out + (bilinear_demosaic(src) if self.demosaic else src)
        return out


def start_at_base(head: nn.Module) -> None:
    """Shrink an output head's last layers near zero, so a network that corrects a
    classical base image starts from that image (weight-normed convolutions: the
    magnitude ``original0`` is scaled, the direction kept, so training can grow it)."""
    convs = [head.last] + ([head.skip_last] if hasattr(head, "skip_last") else [])
    with torch.no_grad():
        for conv in convs:
            conv.parametrizations.weight.original0.mul_(0.01)
            conv.bias.zero_()


class UnshuffledHead(nn.Module):
    """Output head of a network that works at ``1/s`` resolution on pixel-unshuffled images.

    Every layer runs at ``1/s`` resolution (a full-resolution layer would cost as much
    as ``s * s`` of them); the last one predicts the ``s * s`` sub-pixel phases of the
    correction, which a pixel shuffle puts in place, added to the skip image::

        x = relu(conv(fea) + conv(unshuffle(src)));  out = src + shuffle(last(relu(conv(x))))
    """

    def __init__(self, nf: int, channels: int, scale: int = 2) -> None:
        super().__init__()
        self.scale = int(scale)
        cs = channels * self.scale**2
        self.fea = wn_conv(nf, nf, 3)
        self.skip = wn_conv(cs, nf, 3)
        self.conv = wn_conv(nf, nf, 3)
        self.last = wn_conv(nf, cs, 3)

    def forward(self, fea: Tensor, src: Tensor) -> Tensor:
        x = F.relu(self.fea(fea) + self.skip(F.pixel_unshuffle(src, self.scale)))
        x = F.relu(self.conv(x))
        return src + F.pixel_shuffle(self.last(x), self.scale)


def _demosaic_kernel() -> Tensor:
    """``(12, 4, 3, 3)``: packed ``R, G1, G2, B`` -> colour ``c`` at 2x2 position
    ``(i, j)`` in output channel ``4 c + 2 i + j`` (PixelShuffle's order)."""
    k = torch.zeros(3, 2, 2, 4, 3, 3)
    R, G1, G2, B = range(4)

    def put(c: int, i: int, j: int, plane: int, taps: list[tuple[int, int]]) -> None:
        for dy, dx in taps:
            k[c, i, j, plane, dy + 1, dx + 1] += 1.0 / len(taps)

    # red sits at (0, 0) of each cell, blue at (1, 1), green at (0, 1) (G1) and (1, 0) (G2)
    put(0, 0, 0, R, [(0, 0)])
    put(0, 0, 1, R, [(0, 0), (0, 1)])
    put(0, 1, 0, R, [(0, 0), (1, 0)])
    put(0, 1, 1, R, [(0, 0), (0, 1), (1, 0), (1, 1)])
    put(2, 1, 1, B, [(0, 0)])
    put(2, 1, 0, B, [(0, -1), (0, 0)])
    put(2, 0, 1, B, [(-1, 0), (0, 0)])
    put(2, 0, 0, B, [(-1, -1), (-1, 0), (0, -1), (0, 0)])
    put(1, 0, 1, G1, [(0, 0)])
    put(1, 1, 0, G2, [(0, 0)])
    for plane, taps in ((G1, [(0, -1), (0, 0)]), (G2, [(-1, 0), (0, 0)])):  # red site
        for t in taps:
            k[1, 0, 0, plane, t[0] + 1, t[1] + 1] += 0.25
    for plane, taps in ((G1, [(0, 0), (1, 0)]), (G2, [(0, 0), (0, 1)])):  # blue site
        for t in taps:
            k[1, 1, 1, plane, t[0] + 1, t[1] + 1] += 0.25
    return k.reshape(12, 4, 3, 3)


_DEMOSAIC = _demosaic_kernel()


def bilinear_demosaic(packed: Tensor) -> Tensor:
    """Bilinear demosaic of packed RGGB planes: ``(B, 4, h, w)`` -> ``(B, 3, 2h, 2w)``.

    Each missing colour is the mean of its nearest samples of that colour (edges
    replicated), as :func:`cv2.demosaicing`'s bilinear mode does up to the border.
    Linear in the input, so it is the raw stem's identity path.
    """
    x = F.pad(packed, (1, 1, 1, 1), mode="replicate")
    return F.pixel_shuffle(F.conv2d(x, _DEMOSAIC.to(device=x.device, dtype=x.dtype)), 2)
