"""The training checkpoint format: what one epoch's checkpoint folder holds, and how to load its model.

Workers write it (`srtn.train.loop`), the driver and evaluation read it (`load_checkpoint_model`), so the
file names live here once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from srtn import storage

if TYPE_CHECKING:
    import torch
    from ray.train import Checkpoint

__all__ = [
    "STATE_FILE",
    "MODEL_FILE",
    "META_FILE",
    "HISTORY_FILE",
    "checkpoint_file",
    "load_checkpoint_model",
    "save_checkpoint",
]

STATE_FILE = "state.pt"  # full training state (model, optimiser, scheduler, EMA, RNG, history)
MODEL_FILE = "model.pt"  # evaluation weights only (EMA when on): what evaluation and MLflow use
META_FILE = "meta.json"  # model name, kwargs, scale, epoch, metrics: enough to rebuild the model
HISTORY_FILE = "history.json"  # per-epoch metrics up to this checkpoint


def checkpoint_file(checkpoint: Checkpoint | str, name: str) -> bytes:
    """One file of a checkpoint (a Ray `Checkpoint` or a local/s3 URI of its folder)."""
    path = checkpoint if isinstance(checkpoint, str) else checkpoint.path
    fs = None if isinstance(checkpoint, str) else checkpoint.filesystem
    if fs is None:
        fs, path = storage.resolve(path)
    with fs.open_input_stream(f"{path.rstrip('/')}/{name}") as f:
        return f.read()


def load_checkpoint_model(checkpoint: Checkpoint | str, *, map_location: str = "cpu") -> torch.nn.Module:
    """The evaluation model (EMA weights when EMA was on) of a training checkpoint, in eval mode."""
    import io

    import torch

    from srtn.models import build_model

    meta = json.loads(checkpoint_file(checkpoint, META_FILE))
    model = build_model(meta["model"], meta["scale"], **meta["model_kwargs"])
    state = torch.load(io.BytesIO(checkpoint_file(checkpoint, MODEL_FILE)), map_location=map_location)
    model.load_state_dict(state)
    return model.eval()


def save_checkpoint(directory: str, state: dict[str, Any], eval_model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Write the full training state, the evaluation weights, their metadata and the metric history."""
    import torch

    torch.save(state, os.path.join(directory, STATE_FILE))
    torch.save(eval_model.state_dict(), os.path.join(directory, MODEL_FILE))
    Path(directory, META_FILE).write_text(json.dumps(meta, indent=2))
    Path(directory, HISTORY_FILE).write_text(json.dumps(state["history"]))
