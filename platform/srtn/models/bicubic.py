"""Bicubic interpolation as a parameter-free model: the baseline every SR paper reports.

Keys, "Cubic convolution interpolation for digital image processing", IEEE TASSP 1981 (``a = -0.75`` in
PyTorch, as in OpenCV). Wrapping it as an ``nn.Module`` lets evaluation, inference and MLflow treat it like the
trained models; it has no parameters, so it is never trained (an optimizer would reject it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from srtn.models.common import check_scale

__all__ = ["Bicubic"]


class Bicubic(nn.Module):
    """Bicubic upscaling (``align_corners=False``) clamped to [0, 1]; ``(N, C, H, W) -> (N, C, sH, sW)``."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = check_scale(scale, model="bicubic")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return out.clamp(0.0, 1.0)
