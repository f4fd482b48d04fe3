"""SRTN (ScResTransNet): EDSR-style residual SR network with ScConv blocks and an efficient transformer.

Reference: the SRTN student write-up and code (``Heycys/G4-DeepThinkers-SRTN``), built on EDSR (Lim et al.,
CVPRW 2017), ScConv (Li et al., CVPR 2023), EMA (Ouyang et al., ICASSP 2023) and ESRT (Lu et al., CVPRW 2022).

Layout: head 3x3 conv -> ``n_blocks`` residual blocks ``ScConv -> ReLU -> ScConv`` (+ identity) with a long
skip from the head -> efficient transformer (1x1 embedding, pre-norm attention and MLP with residuals, 1x1
output) added to its input -> plus a parallel 3x3 conv of the head output -> sub-pixel upsampler -> tail 3x3.

Fix of the original: its LayerNorm and MLP acted on the last axis of an NCHW tensor (the image *width*), so it
only ran at LR width 64. Here they act on channels (NHWC permute), so any input size and scale works.

Parameter count, x4 with the defaults (64 features, 16 blocks, EMA, MLP ratio 4) = 917,347, exactly the
original checkpoint:

=====================================================  =========
head conv 3x3, 3 -> 64                                      1,792
body: 16 blocks x 2 ScConv x 7,616                        243,712
parallel conv 3x3, 64 -> 64                                36,928
transformer: embed 1x1 4,160 + 2 LayerNorm 256 +           42,336
EMA 672 + MLP 64->256->64 33,088 + out 1x1 4,160
upsampler, single stage: conv 3x3 64 -> 64*4*4, shuffle   590,848
tail conv 3x3, 64 -> 3                                      1,731
=====================================================  =========

The single-stage upsampler is the original's layout and what makes the count match (BasicSR's two x2 stages
would give 621,923); ``upsampler="staged"`` selects the latter. Outputs are not clamped.

Memory: ScConv trades parameters for many cheap element-wise steps whose outputs autograd keeps, so a training
step needs about 5x the activation memory of EDSR-baseline (``benchmarks/models.py``). ``grad_checkpoint=True``
recomputes each residual block in the backward pass instead of storing its internals (same results; measured
here at x4, batch 4, LR 64x64: peak 2.0 GiB -> 1.1 GiB, at the cost of a second forward pass of the body).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from srtn.models.attention import EMA, EMHA
from srtn.models.common import ResidualBlock, Upsampler, bicubic_upscale, check_scale, conv3x3
from srtn.models.scconv import ScConv

__all__ = ["SRTN", "EfficientTransformer"]


class EfficientTransformer(nn.Module):
    """1x1 embed -> ``x + attn(LN(x))`` -> ``x + MLP(LN(x))`` -> 1x1 out; LN and MLP on the channel axis."""

    def __init__(
        self, channels: int, *, attention: Literal["ema", "emha"] = "ema", heads: int = 8, mlp_ratio: int = 4
    ) -> None:
        super().__init__()
        if attention == "ema":
            attn: nn.Module = EMA(channels, factor=heads)
        elif attention == "emha":
            attn = EMHA(channels, heads=heads)
        else:
            raise ValueError(f"SRTN: attention must be 'ema' or 'emha', got {attention!r}")
        if mlp_ratio < 1:
            raise ValueError(f"SRTN: mlp_ratio must be >= 1, got {mlp_ratio}")
        self.embed = nn.Conv2d(channels, channels, kernel_size=1)
        self.norm1 = nn.LayerNorm(channels)
        self.attn = attn
        self.norm2 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(
            nn.Linear(channels, channels * mlp_ratio), nn.ReLU(), nn.Linear(channels * mlp_ratio, channels)
        )
        self.out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        t = x.permute(0, 2, 3, 1)  # NHWC: normalise over channels
        x = x + self.attn(self.norm1(t).permute(0, 3, 1, 2).contiguous())
        t = x.permute(0, 2, 3, 1)
        t = t + self.mlp(self.norm2(t))
        return self.out(t.permute(0, 3, 1, 2).contiguous())


class SRTN(nn.Module):
    """ScResTransNet; maps ``(N, 3, H, W)`` in [0, 1] to ``(N, 3, scale*H, scale*W)`` for any ``H, W``."""

    def __init__(
        self,
        scale: int = 4,
        *,
        n_feats: int = 64,
        n_blocks: int = 16,
        heads: int = 8,
        attention: Literal["ema", "emha"] = "ema",
        mlp_ratio: int = 4,
        upsampler: Literal["single", "staged"] = "single",
        n_colors: int = 3,
        grad_checkpoint: bool = False,
        global_residual: bool = False,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale, model="srtn")
        self.grad_checkpoint = bool(grad_checkpoint)
        # Optional, parameter-free: learn the residual over a bicubic upscale (VDSR-style). Off by default
        # (the published SRTN); on, a briefly trained model starts from bicubic quality, as in `make demo`.
        self.global_residual = bool(global_residual)
        if n_blocks < 1:
            raise ValueError(f"SRTN: n_blocks must be >= 1, got {n_blocks}")
        if upsampler not in ("single", "staged"):
            raise ValueError(f"SRTN: upsampler must be 'single' or 'staged', got {upsampler!r}")
        self.head = conv3x3(n_colors, n_feats)
        self.body = nn.Sequential(*(ResidualBlock(n_feats, conv=ScConv) for _ in range(n_blocks)))
        self.parallel = conv3x3(n_feats)
        self.transformer = EfficientTransformer(n_feats, attention=attention, heads=heads, mlp_ratio=mlp_ratio)
        self.upsample = Upsampler(scale, n_feats, single_stage=upsampler == "single")
        self.tail = conv3x3(n_feats, n_colors)
        if self.global_residual:
            # zero tail: a fresh model IS bicubic and training only adds detail. Random init started
            # SRTN-32x4 0.6 dB below bicubic and 8 demo epochs ended 0.15 dB under it (test PSNR); with a
            # zero tail it ended 0.34 dB above (EDSR likewise gains); the rest still learns from step 2.
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x)
        r = h
        for block in self.body:
            if self.grad_checkpoint and torch.is_grad_enabled():
                r = checkpoint(block, r, use_reentrant=False)
            else:
                r = block(r)
        r = r + h
        r = r + self.transformer(r) + self.parallel(h)
        out = self.tail(self.upsample(r))
        return out + bicubic_upscale(x, self.scale) if self.global_residual else out
