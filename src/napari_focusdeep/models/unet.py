"""The paper's UNet baseline: the burst stacked on channels, fixed length.

Encoder blocks of three 3x3 convolutions + ReLU (no normalisation), 2x2 max
pooling, transposed-convolution upsampling, skip concatenations, a 1x1 output
convolution (as in the paper's code). Height and width are padded internally
to a multiple of ``2**depth``.

The first convolution sees ``n_frames * in_channels`` channels; it is a sum of
per-frame convolutions, so inference streams the frames (:meth:`UNet.stream`)
and holds one ``features``-channel map instead of the whole burst.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import BurstModel, Stream, check_frame
from .blocks import pad_to_multiple

__all__ = ["UNet"]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, convs: int = 3) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(cin if i == 0 else cout, cout, 3, 1, 1, bias=False) for i in range(convs)]
        )

    def forward(self, x: Tensor, first: Tensor | None = None) -> Tensor:
        # ``first``: the first convolution's output computed elsewhere (streaming).
        x = F.relu(self.convs[0](x) if first is None else first)
        for conv in self.convs[1:]:
            x = F.relu(conv(x))
        return x


class UNet(BurstModel):
    """UNet over a burst stacked on channels.

    Parameters
    ----------
    n_frames : int
        Burst length (fixed).
    in_channels, out_channels : int
        Channels per frame in, channels out.
    features : int
        Channels at the finest level (doubling at every level down).
    depth : int
        Number of 2x poolings.
    convs_per_block : int
        3x3 convolutions per block (3 in the paper's code).
    """

    architecture = "unet"

    def __init__(
        self,
        n_frames: int = 30,
        in_channels: int = 3,
        out_channels: int = 3,
        features: int = 32,
        depth: int = 4,
        convs_per_block: int = 3,
    ) -> None:
        super().__init__()
        if n_frames < 1 or depth < 0:
            raise ValueError("n_frames must be >= 1 and depth >= 0")
        self.config = dict(
            n_frames=int(n_frames), in_channels=int(in_channels), out_channels=int(out_channels),
            features=int(features), depth=int(depth), convs_per_block=int(convs_per_block),
        )
        self.multiple = 2**depth
        f = features
        self.enc = nn.ModuleList(
            [_Block(n_frames * in_channels if i == 0 else f * 2 ** (i - 1), f * 2**i, convs_per_block) for i in range(depth)]
        )
        self.bottleneck = _Block(f * 2 ** (depth - 1) if depth else n_frames * in_channels, f * 2**depth, convs_per_block)
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(f * 2 ** (i + 1), f * 2**i, 2, 2) for i in reversed(range(depth))]
        )
        self.dec = nn.ModuleList([_Block(f * 2 ** (i + 1), f * 2**i, convs_per_block) for i in reversed(range(depth))])
        self.out = nn.Conv2d(f, out_channels, 1)

    def _run(self, x: Tensor | None, first: Tensor | None = None) -> Tensor:
        skips = []
        blocks = list(self.enc) + [self.bottleneck]
        for i, block in enumerate(blocks):
            x = block(x, first) if i == 0 else block(x)
            if i < len(self.enc):
                skips.append(x)
                x = self.pool(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.out(x)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)`` with ``N == n_frames`` -> ``(B, C_out, H, W)``."""
        b, n, c, h, w = x.shape
        if n != self.n_frames:
            raise ValueError(
                f"this UNet takes {self.n_frames} frames, got {n}; "
                "resample the burst with resample_frames(n_in, n_frames)"
            )
        x, _ = pad_to_multiple(x, self.multiple)
        out = self._run(x.reshape(b, n * c, *x.shape[-2:]))
        return out[..., :h, :w]

    def stream(self, shape: tuple[int, int, int, int]) -> Stream:
        return _UNetStream(self, shape)


class _UNetStream(Stream):
    def __init__(self, model: UNet, shape: tuple[int, int, int, int]) -> None:
        self.model, self.shape = model, shape
        self.slot = 0
        self.acc: Tensor | None = None

    def _first_conv(self) -> nn.Conv2d:
        m = self.model
        return m.enc[0].convs[0] if len(m.enc) else m.bottleneck.convs[0]

    def push(self, frame: Tensor, repeat: int = 1) -> None:
        check_frame(frame, self.shape)
        m = self.model
        n, c = m.config["n_frames"], m.config["in_channels"]
        if self.slot + repeat > n:
            raise ValueError(f"this UNet takes {n} frames; got more")
        if repeat < 1:
            return
        x, _ = pad_to_multiple(frame, m.multiple)
        weight = self._first_conv().weight
        # Slots of a repeated frame share the input, so their weights add up.
        w = sum(weight[:, (self.slot + r) * c : (self.slot + r + 1) * c] for r in range(repeat))
        part = F.conv2d(x, w.to(x.dtype), padding=1).float()  # sum in fp32 under autocast
        self.acc = part if self.acc is None else self.acc + part
        self.slot += repeat

    def finish(self) -> Tensor:
        m = self.model
        if self.slot != m.config["n_frames"]:
            raise ValueError(f"this UNet takes {m.config['n_frames']} frames, {self.slot} were pushed")
        h, w = self.shape[-2:]
        return m._run(None, first=self.acc)[..., :h, :w]
