"""Size and cost of each model: parameters and FLOPs per LR pixel, for the README and the benchmarks.

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` on one 1x3x64x64 LR input and are divided by
64*64, so they do not depend on the probe size (every model here is fully convolutional, or attends within
fixed-size chunks). The counter sees convolutions, matmuls and attention (2 FLOPs per multiply-add); norms,
activations, pooling and interpolation are not counted, so bicubic shows 0.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from srtn.models.registry import available_models, build_model

__all__ = ["count_parameters", "model_summary", "summary_table"]

_PROBE = 64


def count_parameters(model: torch.nn.Module, *, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; buffers such as EDSR's mean shift are not parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_summary(name: str, scale: int, **kwargs: Any) -> dict[str, Any]:
    """``{"name", "scale", "params", "flops_per_lr_pixel"}`` for ``build_model(name, scale, **kwargs)``."""
    model = build_model(name, scale, **kwargs).eval()
    x = torch.rand(1, 3, _PROBE, _PROBE)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return {
        "name": name,
        "scale": scale,
        "params": count_parameters(model),
        "flops_per_lr_pixel": counter.get_total_flops() / (_PROBE * _PROBE),
    }


def _human(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def summary_table(scale: int = 4) -> str:
    """Markdown table of all registered models (default kwargs) at ``scale``."""
    lines = [
        f"| Model (x{scale}) | Parameters | FLOPs per LR pixel | GFLOPs per 64x64 LR tile |",
        "|---|---:|---:|---:|",
    ]
    for name in available_models():
        s = model_summary(name, scale)
        flops = s["flops_per_lr_pixel"]
        lines.append(f"| {name} | {s['params']:,} | {_human(flops)} | {flops * _PROBE * _PROBE / 1e9:.2f} |")
    return "\n".join(lines)
