"""The one way to build a model from its name: ``build_model(name, scale, **kwargs)``.

A plain explicit mapping (no import-time decorators, no filesystem scanning, cf. BasicSR's registry): the
YAML ``model:`` block of a training config is the constructor's keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from srtn.models.bicubic import Bicubic
from srtn.models.edsr import EDSR
from srtn.models.srcnn import SRCNN
from srtn.models.srtn import SRTN

__all__ = ["MODELS", "available_models", "build_model"]

MODELS: dict[str, Callable[..., nn.Module]] = {
    "srtn": SRTN,
    "edsr": EDSR,
    "srcnn": SRCNN,
    "bicubic": Bicubic,
}


def available_models() -> tuple[str, ...]:
    """Names accepted by :func:`build_model`, in registry order."""
    return tuple(MODELS)


def build_model(name: str, scale: int, **kwargs: Any) -> nn.Module:
    """Build model ``name`` for ``scale``; kwargs go to its constructor (e.g. ``n_feats``, ``n_blocks``).

    Raises ``ValueError`` for an unknown name (listing the known ones), an unsupported scale (listing the
    supported ones) or an unknown keyword.
    """
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    factory = MODELS[key]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY})
    if unknown:
        accepted = ", ".join(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY) or "none"
        raise ValueError(f"model {key!r}: unknown keyword(s) {', '.join(unknown)}; accepted: {accepted}")
    return factory(scale, **kwargs)
