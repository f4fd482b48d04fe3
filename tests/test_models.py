"""Model zoo: registry, parameter counts, shapes at odd sizes, gradients, and that each model learns."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from srtn.metrics import psnr
from srtn.models import (
    EMA,
    EMHA,
    SUPPORTED_SCALES,
    MeanShift,
    ScConv,
    Upsampler,
    available_models,
    build_model,
    model_summary,
    summary_table,
)
from srtn.models.summary import count_parameters

NAMES = ("srtn", "edsr", "srcnn", "bicubic")
TRAINABLE = ("srtn", "edsr", "srcnn")
SMALL = {"srtn": {"n_feats": 16, "n_blocks": 2}, "edsr": {"n_feats": 16, "n_blocks": 2}, "srcnn": {}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: these tensors are small, and on a shared 2-CPU runner OpenMP threads that spin
    at barriers made many-small-op models (SRTN) 50x slower than single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.cache
def _default_model(name: str, scale: int) -> nn.Module:
    return build_model(name, scale).eval()


# --- registry and misuse -------------------------------------------------------------------------------------


def test_available_models() -> None:
    assert available_models() == NAMES


def test_unknown_model_lists_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'vdsr'.*srtn, edsr, srcnn, bicubic"):
        build_model("vdsr", 4)


def test_unknown_kwarg_is_value_error() -> None:
    with pytest.raises(ValueError, match="model 'edsr': unknown keyword.*n_feets; accepted: n_feats, n_blocks"):
        build_model("edsr", 4, n_feets=8)
    with pytest.raises(ValueError, match="model 'bicubic': unknown keyword.*n_feats; accepted: none"):
        build_model("bicubic", 4, n_feats=8)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", [1, 5, 6, 16, 2.0])
def test_unsupported_scale_names_supported(name: str, scale: int) -> None:
    with pytest.raises(ValueError, match=rf"{name}: scale .* supported scales: 2, 3, 4, 8"):
        build_model(name, scale)


def test_upsampler_layout_and_error() -> None:
    shuffles = lambda up: [m.upscale_factor for m in up if isinstance(m, nn.PixelShuffle)]  # noqa: E731
    assert shuffles(Upsampler(8, 4)) == [2, 2, 2]
    assert shuffles(Upsampler(3, 4)) == [3]
    assert shuffles(Upsampler(4, 4, single_stage=True)) == [4]
    with pytest.raises(ValueError, match="Upsampler: scale 6 is not supported; supported scales: 2, 3, 4, 8"):
        Upsampler(6, 4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 30}, "channels=30: channels must be divisible by group_num=4"),
        ({"channels": 7, "group_num": 1}, "channels=7: channels must be even"),
        ({"channels": 12}, r"channels=12: squeezed upper part \(3\).*group_size=2"),
        ({"channels": 8, "squeeze_ratio": 3}, r"both CRU parts \(4, 4\) must be divisible by squeeze_ratio=3"),
        ({"channels": 16, "alpha": 1.0}, "alpha=1.0 must split channels"),
    ],
)
def test_scconv_channel_constraints(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScConv(**kwargs)


def test_attention_constraints() -> None:
    with pytest.raises(ValueError, match="channels=20 must be a positive multiple of factor=8"):
        EMA(20)
    with pytest.raises(ValueError, match="channels/2 divisible by heads=8"):
        EMHA(24)
    with pytest.raises(ValueError, match="attention must be 'ema' or 'emha'"):
        build_model("srtn", 4, attention="swin")


# --- parameter counts ----------------------------------------------------------------------------------------


def test_block_parameter_counts() -> None:
    assert count_parameters(ScConv(64)) == 7_616  # SEED: "about 7.6k per ScConv at 64 channels"
    assert count_parameters(nn.Conv2d(64, 64, 3, padding=1)) == 36_928
    assert count_parameters(EMA(64)) == 672
    assert count_parameters(EMHA(64)) == 7_232


@pytest.mark.parametrize("scale", SUPPORTED_SCALES)
def test_srcnn_has_exactly_20099_parameters(scale: int) -> None:
    assert count_parameters(build_model("srcnn", scale)) == 20_099


def test_edsr_baseline_x4_parameters() -> None:
    model = build_model("edsr", 4)
    n = count_parameters(model, trainable_only=False)  # the mean shift lives in buffers: never counted
    assert n == pytest.approx(1.52e6, rel=0.01)
    assert n == 1_517_571
    assert {name for name, _ in model.named_buffers()} == {"sub_mean.shift", "add_mean.shift"}


@pytest.mark.parametrize("attention", ["ema", "emha"])
def test_srtn_x4_matches_original_checkpoint(attention: str) -> None:
    n = count_parameters(build_model("srtn", 4, attention=attention), trainable_only=False)
    assert n == pytest.approx(917_347, rel=0.02)
    if attention == "ema":
        assert n == 917_347  # the original's layout exactly, see the SRTN module docstring


def test_bicubic_has_no_parameters_and_moves_like_a_model() -> None:
    model = build_model("bicubic", 2).to(torch.device("cpu")).eval()
    assert list(model.parameters()) == [] and model.scale == 2
    x = torch.rand(2, 3, 9, 11) * 1.4 - 0.2
    out = model(x)
    assert out.min() >= 0 and out.max() <= 1
    ref = F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False).clamp(0, 1)
    assert torch.equal(out, ref)


def test_mean_shift_is_fixed() -> None:
    sub, add = MeanShift(sign=-1), MeanShift(sign=1)
    x = torch.rand(1, 3, 4, 4)
    assert list(sub.parameters()) == []
    assert torch.allclose(add(sub(x)), x)
    assert torch.allclose(sub(torch.zeros(1, 3, 1, 1)).flatten(), -torch.tensor([0.4488, 0.4371, 0.4040]))


def test_model_summary_and_table() -> None:
    s = model_summary("srcnn", 4)
    # SRCNN convolves the 4x-upsampled image: 16 HR pixels per LR pixel, 2 FLOPs per MAC, biases not counted
    assert s == {"name": "srcnn", "scale": 4, "params": 20_099, "flops_per_lr_pixel": 16 * 2 * (20_099 - 99)}
    table = summary_table(4)
    assert table.count("\n") == 1 + len(NAMES)
    for name in NAMES:
        assert f"| {name} |" in table


# --- shapes, gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("scale", SUPPORTED_SCALES)
def test_odd_sizes_any_scale(name: str, scale: int) -> None:
    model = _default_model(name, scale)
    assert model.scale == scale
    with torch.no_grad():
        for batch in (1, 3):
            out = model(torch.rand(batch, 3, 37, 53))
            assert out.shape == (batch, 3, 37 * scale, 53 * scale)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_srtn_emha_staged_odd_sizes() -> None:
    model = build_model("srtn", 8, attention="emha", upsampler="staged", n_feats=16, n_blocks=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 37, 53)).shape == (2, 3, 296, 424)


def test_srtn_is_batch_independent() -> None:
    """Per-image results must not depend on batch neighbours (no batch statistics anywhere)."""
    model = _default_model("srtn", 2)
    x = torch.rand(3, 3, 12, 17)
    with torch.no_grad():
        assert torch.allclose(model(x)[1:2], model(x[1:2]), atol=1e-5)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("srtn", {}), ("srtn", {"attention": "emha"}), ("edsr", {}), ("srcnn", {})]
)
def test_every_parameter_gets_a_gradient(name: str, kwargs: dict) -> None:
    """DDP without find_unused_parameters needs every parameter in the graph."""
    torch.manual_seed(0)
    model = build_model(name, 4, **kwargs)
    F.mse_loss(model(torch.rand(2, 3, 12, 14)), torch.rand(2, 3, 48, 56)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    zero = [n for n, p in model.named_parameters() if not p.grad.any()]
    assert zero == []


def test_srtn_grad_checkpoint_gives_same_gradients() -> None:
    torch.manual_seed(0)
    plain = build_model("srtn", 2, n_feats=16, n_blocks=2)
    ckpt = build_model("srtn", 2, n_feats=16, n_blocks=2, grad_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    x, y = torch.rand(2, 3, 9, 10), torch.rand(2, 3, 18, 20)
    for model in (plain, ckpt):
        F.mse_loss(model(x), y).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


# --- learning ------------------------------------------------------------------------------------------------


def he_like_tiles(n: int, size: int, *, seed: int = 0) -> torch.Tensor:
    """H&E-like RGB tiles in [0, 1]: shaded pink (eosin) background with soft purple (haematoxylin) nuclei."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    tiles = []
    for _ in range(n):
        fx, fy, phase = rng.uniform(0.05, 0.2), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * np.pi)
        shade = 0.06 * np.sin(fx * xx + phase) * np.cos(fy * yy)
        img = np.array([0.93, 0.70, 0.82])[:, None, None] + shade * np.array([1.0, 1.5, 1.0])[:, None, None]
        for _ in range(rng.integers(4, 9)):
            cy, cx = rng.uniform(0, size, 2)
            ry, rx = rng.uniform(1.5, 4.5, 2)
            alpha = np.clip(1.5 - ((yy - cy) / ry) ** 2 - ((xx - cx) / rx) ** 2, 0, 1)
            nucleus = np.array([0.35, 0.18, 0.55]) + rng.uniform(-0.05, 0.05, 3)
            img = img * (1 - alpha) + nucleus[:, None, None] * alpha
        tiles.append(img)
    return torch.tensor(np.clip(np.stack(tiles), 0, 1), dtype=torch.float32)


@pytest.mark.parametrize("name", TRAINABLE)
def test_learns_and_beats_bicubic(name: str) -> None:
    """A few hundred Adam steps on 8 tiles (HR 32x32, x4) halve the loss and beat bicubic on those tiles."""
    scale, steps = 4, 400
    torch.manual_seed(0)
    hr = he_like_tiles(8, 32, seed=0)
    lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
    model = build_model(name, scale, **SMALL[name])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(model(lr), hr)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])
    with torch.no_grad():
        ours = psnr(model.eval()(lr).clamp(0, 1), hr).mean().item()
        bicubic = psnr(build_model("bicubic", scale)(lr), hr).mean().item()
    assert ours > bicubic + 0.25, f"{name}: {ours:.2f} dB vs bicubic {bicubic:.2f} dB"


@pytest.mark.parametrize("name", ["srtn", "edsr"])
def test_global_residual_starts_from_bicubic_and_adds_no_parameters(name):
    """A fresh model with the bicubic skip is exactly bicubic (zero tail), and one step later it no longer is."""
    plain = build_model(name, 4, n_feats=8, n_blocks=1)
    skip = build_model(name, 4, n_feats=8, n_blocks=1, global_residual=True)
    assert sum(p.numel() for p in skip.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.rand(1, 3, 11, 9)
    expected = torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)
    assert torch.allclose(skip(x), expected, atol=1e-6)
    opt = torch.optim.Adam(skip.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        torch.nn.functional.mse_loss(skip(x), torch.rand(1, 3, 44, 36)).backward()
        opt.step()
    assert not torch.allclose(skip(x), expected, atol=1e-4)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in skip.parameters())
