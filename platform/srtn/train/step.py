"""One training step and what it needs (optimiser, LR scheduler, weight EMA, loss), built from `cfg.optim`.

Ray-free on purpose (torch, `srtn.config` and `srtn.models` only): the Ray Train loop (`srtn.train.loop`)
and the plain PyTorch loops of `benchmarks/training.py` run this same code, so the benchmark can time the
step alone, also on a GPU machine that has no Ray installed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from srtn.config.train import OptimConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "LossFn",
    "Trainables",
    "build_ema",
    "build_optimizer",
    "build_scheduler",
    "build_trainables",
    "in_memory_format",
    "loss_function",
    "to_memory_format",
    "train_step",
]

LossFn = Callable[..., "torch.Tensor"]


@dataclass
class Trainables:
    """Everything one step changes. `net` is the bare model (optimiser, EMA and checkpoints use it);
    `model` is what the step calls: `net` wrapped for DDP on several Ray Train workers, else `net` itself."""

    net: torch.nn.Module
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any  # torch.optim.lr_scheduler.LRScheduler | None
    ema: Any  # torch.optim.swa_utils.AveragedModel | None
    loss_fn: LossFn
    optim: OptimConfig

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that validation, checkpoints' evaluation file and MLflow use: the EMA when on."""
        return self.ema.module if self.ema is not None else self.net


def loss_function(o: OptimConfig) -> LossFn:
    """`optim.loss`: `F.l1_loss` or `F.mse_loss` (both take `reduction=`, which validation uses)."""
    import torch.nn.functional as F

    return F.l1_loss if o.loss == "l1" else F.mse_loss


def build_optimizer(params: Iterable[torch.nn.Parameter], o: OptimConfig) -> torch.optim.Optimizer:
    import torch

    opt_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
    return opt_cls(params, lr=o.lr, weight_decay=o.weight_decay)


def build_scheduler(optimizer: torch.optim.Optimizer, o: OptimConfig) -> Any:
    """The per-epoch LR scheduler of `optim.scheduler`, or None for `none`."""
    import torch

    if o.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=o.epochs, eta_min=o.min_lr)
    if o.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=o.step_size, gamma=o.gamma)
    return None


def build_ema(net: torch.nn.Module, o: OptimConfig) -> Any:
    """An `AveragedModel` EMA of `net`'s weights and buffers with `optim.ema_decay`, or None when 0."""
    if not o.ema_decay:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(o.ema_decay), use_buffers=True)


def to_memory_format(net: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    import torch

    return net.to(memory_format=torch.channels_last) if channels_last else net


def build_trainables(
    net: torch.nn.Module,
    o: OptimConfig,
    *,
    wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
) -> Trainables:
    """`net` in the memory format of `optim.channels_last`, then wrapped by `wrap` (Ray Train's
    `prepare_model`: to the device, DDP when world > 1), then its optimiser, scheduler and EMA."""
    net = to_memory_format(net, o.channels_last)
    model = wrap(net) if wrap is not None else net
    optimizer = build_optimizer(net.parameters(), o)
    return Trainables(
        net=net,
        model=model,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, o),
        ema=build_ema(net, o),
        loss_fn=loss_function(o),
        optim=o,
    )


def in_memory_format(batch: Mapping[str, torch.Tensor], channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(LR, HR) of a batch, both channels_last when the model is. The pipeline yields NCHW-contiguous
    arrays (Arrow tensors are contiguous): converted once here, HR too, so the loss compares like layouts."""
    import torch

    lr, hr = batch["lr"], batch["hr"]
    if channels_last:
        lr, hr = lr.contiguous(memory_format=torch.channels_last), hr.contiguous(memory_format=torch.channels_last)
    return lr, hr


def train_step(trainables: Trainables, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """One optimiser step on `batch` (`lr`, `hr` on the model's device): memory format, forward and loss
    (bf16 autocast with `optim.bf16`), backward, gradient clipping, step, EMA update. Returns the batch's
    loss, detached and left on the device (no host sync per step), and its number of samples."""
    import torch

    t, o = trainables, trainables.optim
    lr, hr = in_memory_format(batch, o.channels_last)
    with torch.autocast(device_type=lr.device.type, dtype=torch.bfloat16, enabled=o.bf16):
        loss = t.loss_fn(t.model(lr).float(), hr)
    t.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if o.grad_clip:
        torch.nn.utils.clip_grad_norm_(t.model.parameters(), o.grad_clip)
    t.optimizer.step()
    if t.ema is not None:
        t.ema.update_parameters(t.net)
    return loss.detach(), hr.shape[0]
