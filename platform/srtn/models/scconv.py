"""ScConv: Spatial and Channel reconstruction Convolution.

Li, Liu, Pan, Wen, "SCConv: Spatial and Channel Reconstruction Convolution for Feature Redundancy", CVPR 2023.
A drop-in, channel-preserving replacement of a 3x3 conv that removes spatial redundancy (SRU: GroupNorm
scale factors gate informative vs redundant features, which are then cross-reconstructed) and channel
redundancy (CRU: split, squeeze, cheap group-wise + point-wise transforms, softmax fusion). At 64 channels with
the defaults it holds 7,616 parameters (SRU 128, CRU 7,488) against 36,928 for a 3x3 conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CRU", "SRU", "ScConv"]


class SRU(nn.Module):
    """Spatial Reconstruction Unit (paper Sec. 3.1).

    ``W = sigmoid(GN(X) * gamma / sum(gamma))``; weights above ``gate_threshold`` become 1 in ``W1`` and 0 in
    ``W2`` (the rest keep their value), ``X1 = W1 * X``, ``X2 = W2 * X``, and the halves are cross-added.
    """

    def __init__(self, channels: int, *, group_num: int = 4, gate_threshold: float = 0.5) -> None:
        super().__init__()
        self.gn = nn.GroupNorm(num_groups=group_num, num_channels=channels)
        self.gate_threshold = float(gate_threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gn_x = self.gn(x)
        w_gamma = (self.gn.weight / self.gn.weight.sum()).view(1, -1, 1, 1)
        reweights = torch.sigmoid(gn_x * w_gamma)
        informative = reweights > self.gate_threshold
        x1 = torch.where(informative, torch.ones_like(reweights), reweights) * x
        x2 = torch.where(informative, torch.zeros_like(reweights), reweights) * x
        x11, x12 = torch.chunk(x1, 2, dim=1)
        x21, x22 = torch.chunk(x2, 2, dim=1)
        return torch.cat([x11 + x22, x12 + x21], dim=1)


class CRU(nn.Module):
    """Channel Reconstruction Unit (paper Sec. 3.2).

    Split channels ``alpha : 1-alpha``; squeeze both parts by ``squeeze_ratio`` (1x1); the upper part goes
    through a group-wise ``kxk`` conv plus a point-wise conv, the lower part through a point-wise conv
    concatenated with itself; the two results are fused by a softmax over pooled channel descriptors.
    """

    def __init__(
        self,
        channels: int,
        *,
        alpha: float = 0.5,
        squeeze_ratio: int = 2,
        group_size: int = 2,
        group_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        self.up_channels = up = int(alpha * channels)
        self.low_channels = low = channels - up
        up_sq, low_sq = up // squeeze_ratio, low // squeeze_ratio
        self.squeeze1 = nn.Conv2d(up, up_sq, kernel_size=1, bias=False)
        self.squeeze2 = nn.Conv2d(low, low_sq, kernel_size=1, bias=False)
        self.gwc = nn.Conv2d(
            up_sq, channels, kernel_size=group_kernel_size, padding=group_kernel_size // 2, groups=group_size
        )
        self.pwc1 = nn.Conv2d(up_sq, channels, kernel_size=1, bias=False)
        self.pwc2 = nn.Conv2d(low_sq, channels - low_sq, kernel_size=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up, low = torch.split(x, [self.up_channels, self.low_channels], dim=1)
        up, low = self.squeeze1(up), self.squeeze2(low)
        y1 = self.gwc(up) + self.pwc1(up)
        y2 = torch.cat([self.pwc2(low), low], dim=1)
        out = torch.cat([y1, y2], dim=1)
        out = F.softmax(F.adaptive_avg_pool2d(out, 1), dim=1) * out
        out1, out2 = torch.chunk(out, 2, dim=1)
        return out1 + out2


def _check_channels(channels: int, *, group_num: int, alpha: float, squeeze_ratio: int, group_size: int) -> None:
    """Raise ``ValueError`` naming ``channels`` and the constraint it breaks (fail at build, not in forward)."""
    up = int(alpha * channels)
    low = channels - up
    rules = [
        (channels > 0 and channels % 2 == 0, "channels must be even (SRU cross-reconstructs two halves)"),
        (channels % group_num == 0, f"channels must be divisible by group_num={group_num} (GroupNorm)"),
        (0 < alpha < 1 and up > 0 and low > 0, f"alpha={alpha} must split channels into two non-empty parts"),
        (
            up % squeeze_ratio == 0 and low % squeeze_ratio == 0,
            f"both CRU parts ({up}, {low}) must be divisible by squeeze_ratio={squeeze_ratio}",
        ),
        (
            (up // squeeze_ratio) % group_size == 0 and channels % group_size == 0,
            f"squeezed upper part ({up // max(squeeze_ratio, 1)}) and channels must be divisible by "
            f"group_size={group_size} (group-wise conv)",
        ),
    ]
    for ok, rule in rules:
        if not ok:
            raise ValueError(f"ScConv: invalid channels={channels}: {rule}")


class ScConv(nn.Module):
    """SRU followed by CRU; maps ``(N, C, H, W)`` to ``(N, C, H, W)`` for any ``H, W``."""

    def __init__(
        self,
        channels: int,
        *,
        group_num: int = 4,
        gate_threshold: float = 0.5,
        alpha: float = 0.5,
        squeeze_ratio: int = 2,
        group_size: int = 2,
        group_kernel_size: int = 3,
    ) -> None:
        super().__init__()
        if squeeze_ratio < 1 or group_size < 1 or group_num < 1:
            raise ValueError("ScConv: group_num, squeeze_ratio and group_size must be positive")
        _check_channels(channels, group_num=group_num, alpha=alpha, squeeze_ratio=squeeze_ratio, group_size=group_size)
        self.sru = SRU(channels, group_num=group_num, gate_threshold=gate_threshold)
        self.cru = CRU(
            channels,
            alpha=alpha,
            squeeze_ratio=squeeze_ratio,
            group_size=group_size,
            group_kernel_size=group_kernel_size,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cru(self.sru(x))
