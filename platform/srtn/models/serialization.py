"""Log SR models to MLflow and load them back, the same way in training, evaluation and inference.

Why not MLflow's defaults: since MLflow 3 ``mlflow.pytorch.log_model`` saves with ``torch.export`` ("pt2"),
which specialises the graph to the example's shape; the loaded model then fails on any other tile size
(``Guard failed: x.size()[2] == 32``) and refuses ``.eval()``. SR models must take any H and W, so the model is
pickled (``serialization_format="pickle"``) and the signature declares height and width as variable (-1).
Loading a pickle runs code: load only models from your own tracking server. The pickle refers to the
``srtn`` classes by import path, so the loading environment needs ``srtn`` installed (the platform image has
it); weights and buffers are restored exactly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

__all__ = ["log_sr_model", "load_sr_model", "sr_signature"]


def sr_signature(channels: int = 3):
    """MLflow signature of an SR model: float32 ``(-1, C, -1, -1)`` in and out (any batch, height, width)."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.float32), (-1, channels, -1, -1))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([TensorSpec(np.dtype(np.float32), spec.shape)]))


def log_sr_model(
    model: nn.Module,
    *,
    name: str,
    registered_model_name: str | None = None,
    example_size: tuple[int, int, int, int] = (1, 3, 32, 32),
) -> ModelInfo:
    """Log ``model`` (pickled, any input size) to the active MLflow run, or as a run-less logged model.

    ``example_size`` is the NCHW shape of the stored input example (random values in [0, 1]); the model is
    logged in eval mode and on CPU, and put back on its device and mode afterwards. With
    ``registered_model_name`` a new version of that registered model is created. Returns MLflow's
    ``ModelInfo`` (``model_info.model_uri`` is what :func:`load_sr_model` takes).
    """
    import mlflow
    import mlflow.pytorch

    if len(example_size) != 4:
        raise ValueError(f"example_size must be NCHW (4 ints), got {example_size!r}")
    if not name:
        raise ValueError("name must be a non-empty string")
    tensors = [*model.parameters(), *model.buffers()]
    device = tensors[0].device if tensors else torch.device("cpu")  # bicubic has neither
    was_training = model.training
    model.cpu().eval()
    try:
        example = np.random.default_rng(0).random(example_size, dtype=np.float32)
        return mlflow.pytorch.log_model(
            model,
            name=name,
            serialization_format="pickle",
            signature=sr_signature(example_size[1]),
            input_example=example,
            registered_model_name=registered_model_name,
            # Explicit requirements skip MLflow's inference, which reloads the model in a subprocess.
            pip_requirements=mlflow.pytorch.get_default_pip_requirements(),
        )
    finally:
        model.to(device).train(was_training)


def load_sr_model(uri: str, *, map_location: str | torch.device | None = "cpu") -> nn.Module:
    """Load a model logged by :func:`log_sr_model` (``runs:/``, ``models:/`` or a path), in eval mode."""
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(uri, map_location=map_location, weights_only=False)
    return model.eval()
