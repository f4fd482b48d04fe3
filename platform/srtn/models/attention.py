"""Attention modules for SRTN's efficient transformer block; both map ``(N, C, H, W)`` to the same shape.

- :class:`EMA`: Efficient Multi-scale Attention. Ouyang et al., "Efficient Multi-Scale Attention Module with
  Cross-Spatial Learning", ICASSP 2023. What the original SRTN code uses (``factor=8``): channel groups get
  a 1x1 branch over directional (H and W) pooling and a 3x3 branch, cross-weighted by each other's pooled
  softmax. 672 parameters at 64 channels.
- :class:`EMHA`: Efficient Multi-Head Attention. Lu et al., "Transformer for Single Image Super-Resolution"
  (ESRT), CVPRW 2022. What the SRTN write-up names: reduce channels by 2, project to Q/K/V, split the token
  sequence into chunks and attend within each chunk and head, project back. 7,232 parameters at 64 channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EMA", "EMHA"]


class EMA(nn.Module):
    """Efficient Multi-scale Attention over ``factor`` channel groups (official layout and init)."""

    def __init__(self, channels: int, *, factor: int = 8) -> None:
        super().__init__()
        if factor < 1 or channels % factor != 0:
            raise ValueError(f"EMA: channels={channels} must be a positive multiple of factor={factor}")
        self.groups = factor
        c = channels // factor
        self.gn = nn.GroupNorm(c, c)
        self.conv1x1 = nn.Conv2d(c, c, kernel_size=1)
        self.conv3x3 = nn.Conv2d(c, c, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        g = x.reshape(b * self.groups, -1, h, w)
        x_h = g.mean(dim=3, keepdim=True)  # (bg, c', h, 1): pooled along W
        x_w = g.mean(dim=2, keepdim=True).permute(0, 1, 3, 2)  # (bg, c', w, 1): pooled along H
        hw = self.conv1x1(torch.cat([x_h, x_w], dim=2))
        x_h, x_w = torch.split(hw, [h, w], dim=2)
        x1 = self.gn(g * x_h.sigmoid() * x_w.permute(0, 1, 3, 2).sigmoid())
        x2 = self.conv3x3(g)
        cg = x1.shape[1]
        x11 = F.softmax(x1.mean(dim=(2, 3)), dim=-1).unsqueeze(1)  # (bg, 1, c')
        x21 = F.softmax(x2.mean(dim=(2, 3)), dim=-1).unsqueeze(1)
        x12 = x2.reshape(b * self.groups, cg, h * w)
        x22 = x1.reshape(b * self.groups, cg, h * w)
        weights = (torch.matmul(x11, x12) + torch.matmul(x21, x22)).reshape(b * self.groups, 1, h, w)
        return (g * weights.sigmoid()).reshape(b, c, h, w)


class EMHA(nn.Module):
    """ESRT's efficient multi-head attention on per-pixel tokens.

    ESRT splits the sequence into 4 equal chunks; here chunks hold at most ``chunk_size`` tokens (raster
    order), so cost and memory stay linear in the image area for whole-slide tiles of any size.
    """

    def __init__(self, channels: int, *, heads: int = 8, chunk_size: int = 1024) -> None:
        super().__init__()
        reduced = channels // 2
        if channels % 2 or reduced % heads or heads < 1:
            raise ValueError(f"EMHA: channels={channels} must be even and channels/2 divisible by heads={heads}")
        if chunk_size < 1:
            raise ValueError(f"EMHA: chunk_size must be positive, got {chunk_size}")
        self.heads = heads
        self.chunk_size = chunk_size
        self.reduce = nn.Linear(channels, reduced, bias=False)
        self.qkv = nn.Linear(reduced, reduced * 3, bias=False)
        self.proj = nn.Linear(reduced, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.reduce(x.flatten(2).transpose(1, 2))  # (b, n, c/2)
        n, cr = tokens.shape[1], tokens.shape[2]
        qkv = self.qkv(tokens).reshape(b, n, 3, self.heads, cr // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (b, heads, n, d)
        chunks = [
            F.scaled_dot_product_attention(qc, kc, vc)
            for qc, kc, vc in zip(
                q.split(self.chunk_size, dim=2), k.split(self.chunk_size, dim=2), v.split(self.chunk_size, dim=2)
            )
        ]
        out = torch.cat(chunks, dim=2).transpose(1, 2).reshape(b, n, cr)
        return self.proj(out).transpose(1, 2).reshape(b, c, h, w)
