"""Blocks shared by the architectures (in the spirit of BasicSR's ``archs/arch_util.py``).

Keeping the upsampler, the residual block and the mean shift in one place means every model rejects an
unsupported scale with the same message and EDSR and SRTN differ only in the conv they put in a block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DIV2K_RGB_MEAN",
    "SUPPORTED_SCALES",
    "MeanShift",
    "ResidualBlock",
    "Upsampler",
    "check_scale",
    "conv3x3",
]

from srtn.vocab import SUPPORTED_SCALES  # every trainable model accepts these (x2 stages, or one x3 stage)

DIV2K_RGB_MEAN: tuple[float, float, float] = (0.4488, 0.4371, 0.4040)
"""Mean RGB of DIV2K in [0, 1], as used by EDSR (Lim et al. 2017) and BasicSR."""

ConvFactory = Callable[[int], nn.Module]


def check_scale(scale: int, *, model: str, supported: Sequence[int] = SUPPORTED_SCALES) -> int:
    """Return ``scale`` if ``model`` supports it, else raise ``ValueError`` naming the supported scales."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in supported:
        names = ", ".join(str(s) for s in supported)
        raise ValueError(f"{model}: scale {scale!r} is not supported; supported scales: {names}")
    return scale


def conv3x3(in_channels: int, out_channels: int | None = None, *, bias: bool = True) -> nn.Conv2d:
    """3x3 convolution with 'same' zero padding (the default conv of EDSR's residual blocks)."""
    return nn.Conv2d(in_channels, out_channels or in_channels, kernel_size=3, padding=1, bias=bias)


class MeanShift(nn.Module):
    """Add (``sign=+1``) or subtract (``sign=-1``) a fixed RGB mean.

    The mean is a buffer, not a parameter: it moves with ``.to(device)`` and is saved in the state dict but
    is never trained and never counted as a parameter (EDSR's parameter counts exclude it too).
    """

    def __init__(self, mean: Sequence[float] = DIV2K_RGB_MEAN, *, sign: int = -1) -> None:
        super().__init__()
        if sign not in (-1, 1):
            raise ValueError(f"MeanShift: sign must be -1 or +1, got {sign!r}")
        self.register_buffer("shift", sign * torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.shift.to(x.dtype)


class ResidualBlock(nn.Module):
    """``x + res_scale * conv(act(conv(x)))``: EDSR's block without batch norm.

    ``conv`` builds one channel-preserving layer from the channel count, so EDSR passes a plain 3x3 conv
    and SRTN passes ScConv; ``act`` builds the activation (ReLU by default).
    """

    def __init__(
        self,
        channels: int,
        *,
        conv: ConvFactory = conv3x3,
        act: Callable[[], nn.Module] = nn.ReLU,
        res_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.body = nn.Sequential(conv(channels), act(), conv(channels))
        self.res_scale = float(res_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.res_scale != 1.0:
            out = out * self.res_scale
        return x + out


class Upsampler(nn.Sequential):
    """Sub-pixel upsampler (Shi et al. 2016): 3x3 conv to ``r*r*C`` channels, then ``PixelShuffle(r)``.

    Staged (default, BasicSR ``Upsample``): ``log2(scale)`` x2 stages for powers of two, one x3 stage for 3.
    ``single_stage=True`` uses one conv to ``scale**2 * C`` channels and one shuffle, the layout of the
    original SRTN checkpoint (more parameters, all compute at LR resolution).
    """

    def __init__(self, scale: int, channels: int, *, single_stage: bool = False) -> None:
        check_scale(scale, model="Upsampler")
        if single_stage:
            factors = [scale]
        elif scale == 3:
            factors = [3]
        else:
            factors = [2] * int(math.log2(scale))
        layers: list[nn.Module] = []
        for r in factors:
            layers += [conv3x3(channels, channels * r * r), nn.PixelShuffle(r)]
        super().__init__(*layers)
        self.scale = scale


def bicubic_upscale(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic upscale (``align_corners=False``, unclamped): the skip of models with ``global_residual``."""
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)
