"""Modulated deformable convolution (DCNv2) in plain PyTorch.

torchvision's ``deform_conv2d`` has no MPS kernel and torchvision is not always
installed, so the alignment module uses this version: every kernel tap is
sampled with :func:`torch.nn.functional.grid_sample` (bilinear, zeros outside
the image) into an unfold-style column buffer ``(B, C*K*K, H*W)``, which is
then multiplied by the weight. The result matches
``torchvision.ops.deform_conv2d`` (same argument order and offset layout) to
float rounding.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["deform_conv2d", "DeformConv2d", "DeformConvPack"]

# Column buffer budget (elements) before the output rows are processed in chunks,
# so a big tile costs a loop rather than gigabytes.
_MAX_COL_ELEMENTS = 1 << 26


def _no_autocast(device_type: str) -> contextlib.AbstractContextManager:
    # Only CUDA and CPU autocast exist in every supported torch version.
    if device_type in ("cuda", "cpu"):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


def deform_conv2d(
    input: Tensor,
    offset: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = (1, 1),
    padding: int | tuple[int, int] = (0, 0),
    dilation: int | tuple[int, int] = (1, 1),
    mask: Tensor | None = None,
) -> Tensor:
    """Deformable convolution, call-compatible with ``torchvision.ops.deform_conv2d``.

    Parameters
    ----------
    input : Tensor
        ``(B, C_in, H, W)``.
    offset : Tensor
        ``(B, 2 * offset_groups * kh * kw, H_out, W_out)``; for offset group ``g``
        and kernel tap ``k`` (row-major), channel ``2*(g*kh*kw + k)`` is the y
        displacement and the next one the x displacement, in input pixels.
    weight : Tensor
        ``(C_out, C_in // groups, kh, kw)``.
    bias : Tensor, optional
        ``(C_out,)``.
    stride, padding, dilation : int or pair
        As for a plain convolution.
    mask : Tensor, optional
        ``(B, offset_groups * kh * kw, H_out, W_out)`` modulation (DCNv2).

    Returns
    -------
    Tensor
        ``(B, C_out, H_out, W_out)``.
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c_in, h, w = input.shape
    c_out, c_per_group, kh, kw = weight.shape
    k = kh * kw
    if c_in % c_per_group:
        raise ValueError(f"input has {c_in} channels, not a multiple of the weight's {c_per_group}")
    groups = c_in // c_per_group
    if c_out % groups:
        raise ValueError(f"{c_out} output channels do not split into {groups} groups")
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if offset.shape[0] != b or offset.shape[2:] != (h_out, w_out) or offset.shape[1] % (2 * k):
        raise ValueError(
            f"offset must be (B, 2*offset_groups*{k}, {h_out}, {w_out}), got {tuple(offset.shape)}"
        )
    og = offset.shape[1] // (2 * k)
    if c_in % og:
        raise ValueError(f"{c_in} input channels do not split into {og} offset groups")
    if mask is not None and tuple(mask.shape) != (b, og * k, h_out, w_out):
        raise ValueError(f"mask must be {(b, og * k, h_out, w_out)}, got {tuple(mask.shape)}")

    # Under autocast the matmul below drops to the autocast dtype by itself.
    out_dtype = torch.promote_types(input.dtype, weight.dtype)
    # Sampling coordinates need float32: bfloat16 cannot hold a pixel position in a
    # few-hundred-pixel tile to better than a pixel.
    work = torch.float64 if input.dtype == torch.float64 else torch.float32
    rows = max(1, min(h_out, _MAX_COL_ELEMENTS // max(1, b * c_in * k * w_out)))
    outs = []
    w_mat = weight.reshape(groups, c_out // groups, c_per_group * k)
    for r0 in range(0, h_out, rows):
        r1 = min(h_out, r0 + rows)
        with _no_autocast(input.device.type):
            cols = _sample_columns(
                input.to(work), offset[:, :, r0:r1].to(work),
                None if mask is None else mask[:, :, r0:r1].to(work),
                (kh, kw), (sh, sw), (ph, pw), (dh, dw), r0, w_out, og,
            )  # (B, C_in*K, L)
        cols = cols.reshape(b, groups, c_per_group * k, -1)
        if out_dtype != work:
            cols = cols.to(out_dtype)
        out = torch.matmul(w_mat.to(cols.dtype), cols)  # (B, groups, C_out/groups, L)
        outs.append(out.reshape(b, c_out, r1 - r0, w_out))
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out


def _sample_columns(
    x: Tensor,
    offset: Tensor,
    mask: Tensor | None,
    ksize: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    row0: int,
    w_out: int,
    og: int,
) -> Tensor:
    """Bilinear samples for every tap of output rows ``row0 ..``: ``(B, C*K, L)``."""
    b, c, h, w = x.shape
    kh, kw = ksize
    k = kh * kw
    n_rows = offset.shape[2]
    dev, dt = x.device, x.dtype
    ys = torch.arange(row0, row0 + n_rows, device=dev, dtype=dt) * stride[0] - padding[0]
    xs = torch.arange(w_out, device=dev, dtype=dt) * stride[1] - padding[1]
    ky = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dilation[0]
    kx = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dilation[1]
    # grid_sample with align_corners=False maps pixel index i to (2i + 1) / size - 1
    # exactly (and, unlike align_corners=True, stays defined for a size of one), so
    # grid = offset * 2/size + base, with the undeformed tap positions as base.
    base_x = ((kx.view(k, 1, 1) + xs.view(1, 1, w_out)) * 2 + 1) / w - 1  # (K, 1, W)
    base_y = ((ky.view(k, 1, 1) + ys.view(1, n_rows, 1)) * 2 + 1) / h - 1  # (K, R, 1)
    base = torch.stack(torch.broadcast_tensors(base_x, base_y), dim=-1)  # (K, R, W, 2) as (x, y)
    scale = torch.tensor([2.0 / w, 2.0 / h], device=dev, dtype=dt)
    off = offset.reshape(b, og, k, 2, n_rows, w_out)
    grid = torch.stack((off[:, :, :, 1], off[:, :, :, 0]), dim=-1)  # (B, og, K, R, W, 2)
    grid = torch.addcmul(base, grid, scale).reshape(b * og, k * n_rows, w_out, 2)
    samples = F.grid_sample(
        x.reshape(b * og, c // og, h, w), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B*og, C/og, K*R, W)
    samples = samples.reshape(b, og, c // og, k, n_rows * w_out)
    if mask is not None:
        m = mask.reshape(b, og, 1, k, n_rows * w_out)
        samples = samples.mul_(m) if not torch.is_grad_enabled() else samples * m
    return samples.reshape(b, c * k, n_rows * w_out)


class DeformConv2d(nn.Module):
    """A deformable convolution layer holding its weight; offsets and mask are inputs."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = (in_channels // groups) * kernel_size * kernel_size
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: Tensor, offset: Tensor, mask: Tensor | None = None) -> Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation, mask)


class DeformConvPack(nn.Module):
    """DCNv2 whose offsets and mask are predicted from a separate feature map.

    ``forward(x, feat)`` predicts ``offset_groups * K*K`` displacements and
    modulation scalars from ``feat`` with a 3x3 convolution (initialised to zero,
    so training starts from the undeformed convolution with mask 0.5), bounds
    the displacements smoothly to ``±max_offset`` pixels (``max_offset *
    tanh(raw / max_offset)``; this bounds the receptive field, so tiled inference
    can equal whole-image inference for any weights) and deforms ``x``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        feat_channels: int,
        kernel_size: int = 3,
        offset_groups: int = 8,
        max_offset: float | None = 4.0,
    ) -> None:
        super().__init__()
        if in_channels % offset_groups:
            raise ValueError(f"{in_channels} channels do not split into {offset_groups} offset groups")
        self.kernel_size = kernel_size
        self.offset_groups = offset_groups
        if max_offset is not None and max_offset <= 0:
            raise ValueError("max_offset must be positive (or None for unbounded offsets)")
        self.max_offset = None if max_offset is None else float(max_offset)
        k = kernel_size * kernel_size
        self.conv_offset_mask = nn.Conv2d(feat_channels, 3 * offset_groups * k, 3, 1, 1)
        nn.init.zeros_(self.conv_offset_mask.weight)
        nn.init.zeros_(self.conv_offset_mask.bias)
        self.dcn = DeformConv2d(in_channels, out_channels, kernel_size, 1, kernel_size // 2)

    def offsets(self, feat: Tensor) -> tuple[Tensor, Tensor]:
        """``(offset, mask)`` predicted from ``feat``."""
        n = self.offset_groups * self.kernel_size * self.kernel_size
        om = self.conv_offset_mask(feat)
        offset, mask = om[:, : 2 * n], om[:, 2 * n :]
        if self.max_offset is not None:
            offset = self.max_offset * torch.tanh(offset / self.max_offset)
        return offset, torch.sigmoid(mask)

    def forward(self, x: Tensor, feat: Tensor) -> Tensor:
        offset, mask = self.offsets(feat)
        return self.dcn(x, offset, mask)
