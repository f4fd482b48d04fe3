"""SRCNN: Image Super-Resolution Using Deep Convolutional Networks.

Dong, Loy, He, Tang, ECCV 2014 / TPAMI 2016. Three convolutions (patch extraction 9x9, non-linear mapping 1x1,
reconstruction 5x5; 64 and 32 filters) on a bicubic-upsampled input. As in the SRTN project it works on RGB
and pads every conv to keep the size, so the bicubic pre-upsampling happens inside the model and it takes the
same LR input as the other models: 15,616 + 2,080 + 2,403 = 20,099 parameters at any scale.

Bicubic uses ``align_corners=False`` (the original script's ``align_corners=True`` shifts the image by a
fraction of a pixel against the HR grid). Outputs are not clamped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srtn.models.common import check_scale

__all__ = ["SRCNN"]


class SRCNN(nn.Module):
    """SRCNN 9-1-5; maps ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, scale*H, scale*W)`` for any ``H, W``."""

    def __init__(
        self,
        scale: int = 4,
        *,
        n1: int = 64,
        n2: int = 32,
        f1: int = 9,
        f2: int = 1,
        f3: int = 5,
        n_colors: int = 3,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale, model="srcnn")
        if any(f % 2 == 0 or f < 1 for f in (f1, f2, f3)):
            raise ValueError(f"SRCNN: kernel sizes must be odd and positive to keep the size, got {f1}-{f2}-{f3}")
        self.extract = nn.Conv2d(n_colors, n1, kernel_size=f1, padding=f1 // 2)
        self.mapping = nn.Conv2d(n1, n2, kernel_size=f2, padding=f2 // 2)
        self.reconstruct = nn.Conv2d(n2, n_colors, kernel_size=f3, padding=f3 // 2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        x = self.relu(self.extract(x))
        x = self.relu(self.mapping(x))
        return self.reconstruct(x)
