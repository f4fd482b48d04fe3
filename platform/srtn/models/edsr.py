"""EDSR-baseline: Enhanced Deep Residual Networks for Single Image Super-Resolution.

Lim, Son, Kim, Nah, Lee, CVPRW 2017 (NTIRE 2017 winner). Residual blocks without batch norm, a long skip,
sub-pixel upsampling; the mean RGB of DIV2K is subtracted at the input and added back at the output.

Baseline defaults (16 blocks, 64 features, ``res_scale=1``) give 1,517,571 parameters at x4 (head 1,792, body
16 x 73,856 + conv 36,928, two x2 upsampler stages 295,424, tail 1,731), 1,369,859 at x2, 1,554,499 at x3 and
1,665,283 at x8. The mean shift lives in buffers, so it is neither trained nor counted. The large EDSR
(256 features, 32 blocks) uses ``res_scale=0.1``. Outputs are not clamped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from srtn.models.common import (
    DIV2K_RGB_MEAN,
    MeanShift,
    ResidualBlock,
    Upsampler,
    bicubic_upscale,
    check_scale,
    conv3x3,
)

__all__ = ["EDSR"]


class EDSR(nn.Module):
    """EDSR; maps ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, scale*H, scale*W)`` for any ``H, W``."""

    def __init__(
        self,
        scale: int = 4,
        *,
        n_feats: int = 64,
        n_blocks: int = 16,
        res_scale: float = 1.0,
        rgb_mean: Sequence[float] = DIV2K_RGB_MEAN,
        n_colors: int = 3,
        global_residual: bool = False,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale, model="edsr")
        self.global_residual = bool(global_residual)  # parameter-free bicubic skip, off as published
        if n_blocks < 1 or n_feats < 1:
            raise ValueError(f"EDSR: n_blocks and n_feats must be positive, got {n_blocks}, {n_feats}")
        if len(rgb_mean) != n_colors:
            raise ValueError(f"EDSR: rgb_mean needs {n_colors} values, got {len(rgb_mean)}")
        self.sub_mean = MeanShift(rgb_mean, sign=-1)
        self.head = conv3x3(n_colors, n_feats)
        self.body = nn.Sequential(
            *(ResidualBlock(n_feats, res_scale=res_scale) for _ in range(n_blocks)), conv3x3(n_feats)
        )
        self.upsample = Upsampler(scale, n_feats)
        self.tail = conv3x3(n_feats, n_colors)
        if self.global_residual:
            # zero tail: a fresh model IS bicubic and training only adds detail. Random init started
            # SRTN-32x4 0.6 dB below bicubic and 8 demo epochs ended 0.15 dB under it (test PSNR); with a
            # zero tail it ended 0.34 dB above (EDSR likewise gains); the rest still learns from step 2.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)
        self.add_mean = MeanShift(rgb_mean, sign=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(self.sub_mean(x))
        r = self.body(h) + h
        out = self.tail(self.upsample(r))
        # global residual: bicubic already carries the image mean, so add_mean is not applied on top
        return out + bicubic_upscale(x, self.scale) if self.global_residual else self.add_mean(out)
