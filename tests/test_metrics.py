"""PSNR/SSIM against scikit-image as the independent reference, on random and natural images."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from skimage import color, data, filters
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from srtn.metrics import psnr, psnr_from_mse, rgb_to_y, ssim


@functools.cache
def _pair(kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(target, pred) HWC float64 in [0, 1]: pred is a blurred, noisy version of target."""
    rng = np.random.default_rng(0)
    if kind == "random":
        target = rng.random((40, 57, 3))
        pred = np.clip(target + rng.normal(0, 0.1, target.shape), 0, 1)
        return target, pred
    # Crops of the sample images keep the suite fast; they hold edges, texture and flat areas.
    image = {"astronaut": lambda: data.astronaut()[40:296, 160:416], "chelsea": lambda: data.chelsea()[60:260, 80:360]}[
        kind
    ]()
    target = image.astype(np.float64) / 255.0
    blurred = filters.gaussian(target, sigma=1.0, channel_axis=-1)
    pred = np.clip(blurred + rng.normal(0, 0.02, target.shape), 0, 1)
    return target, pred


def _nchw(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)


def _crop(x: np.ndarray, c: int) -> np.ndarray:
    return x[c:-c, c:-c] if c else x


def _ref_ssim(a: np.ndarray, b: np.ndarray, **kw) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, **kw
    )


def _ref_y(x: np.ndarray) -> np.ndarray:
    return color.rgb2ycbcr(x)[..., 0] / 255.0


@pytest.mark.parametrize("kind", ["random", "astronaut", "chelsea"])
@pytest.mark.parametrize("crop_border", [0, 4])
def test_rgb_metrics_match_skimage(kind: str, crop_border: int) -> None:
    target, pred = _pair(kind)
    t, p = _crop(target, crop_border), _crop(pred, crop_border)
    got_psnr = psnr(_nchw(pred), _nchw(target), crop_border=crop_border).item()
    got_ssim = ssim(_nchw(pred), _nchw(target), crop_border=crop_border).item()
    assert got_psnr == pytest.approx(peak_signal_noise_ratio(t, p, data_range=1), abs=1e-3)
    assert got_ssim == pytest.approx(_ref_ssim(t, p, channel_axis=-1), abs=1e-4)


@pytest.mark.parametrize("kind", ["random", "astronaut", "chelsea"])
@pytest.mark.parametrize("crop_border", [0, 4])
def test_y_channel_metrics_match_skimage(kind: str, crop_border: int) -> None:
    target, pred = _pair(kind)
    ty, py = _ref_y(_crop(target, crop_border)), _ref_y(_crop(pred, crop_border))
    kw = {"crop_border": crop_border, "y_channel": True}
    assert psnr(_nchw(pred), _nchw(target), **kw).item() == pytest.approx(
        peak_signal_noise_ratio(ty, py, data_range=1), abs=1e-3
    )
    assert ssim(_nchw(pred), _nchw(target), **kw).item() == pytest.approx(_ref_ssim(ty, py), abs=1e-4)


def test_rgb_to_y_matches_explicit_formula_and_skimage() -> None:
    rgb = _pair("chelsea")[0]
    y = rgb_to_y(_nchw(rgb))[0, 0].numpy()
    explicit = 16 / 255 + (65.481 * rgb[..., 0] + 128.553 * rgb[..., 1] + 24.966 * rgb[..., 2]) / 255
    np.testing.assert_allclose(y, explicit, atol=1e-12)
    np.testing.assert_allclose(y, _ref_y(rgb), atol=1e-9)
    assert rgb_to_y(torch.zeros(1, 3, 1, 1)).item() == pytest.approx(16 / 255)
    assert rgb_to_y(torch.ones(1, 3, 1, 1, dtype=torch.float64)).item() == pytest.approx(235 / 255)


def test_batched_values_are_per_image_and_float64() -> None:
    (ta, pa), (tb, pb) = _pair("random"), (_pair("random")[0][::-1].copy(), _pair("random")[1])
    pred, target = _nchw(pa, pb).float(), _nchw(ta, tb).float()  # float32 input, float64 math inside
    p, s = psnr(pred, target, crop_border=2), ssim(pred, target, crop_border=2)
    assert p.shape == s.shape == (2,) and p.dtype == s.dtype == torch.float64
    for i in range(2):
        assert p[i] == psnr(pred[i : i + 1], target[i : i + 1], crop_border=2)[0]
        assert s[i] == pytest.approx(ssim(pred[i : i + 1], target[i : i + 1], crop_border=2)[0].item(), abs=1e-12)


def test_identical_images() -> None:
    x = _nchw(_pair("chelsea")[0])
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-12)
    assert psnr_from_mse(0.0) == float("inf") and psnr_from_mse(0.01) == pytest.approx(20.0)


def test_data_range_255() -> None:
    target, pred = _pair("random")
    t8, p8 = np.round(target * 255), np.round(pred * 255)
    got = psnr(_nchw(p8), _nchw(t8), data_range=255.0).item()
    assert got == pytest.approx(peak_signal_noise_ratio(t8, p8, data_range=255), abs=1e-3)
    got_ssim = ssim(_nchw(p8), _nchw(t8), data_range=255.0).item()
    ref_ssim = structural_similarity(
        t8, p8, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1
    )
    assert got_ssim == pytest.approx(ref_ssim, abs=1e-4)


@pytest.mark.parametrize(
    ("pred_shape", "target_shape", "kwargs", "message"),
    [
        ((1, 3, 16, 16), (1, 3, 16, 17), {}, r"shapes differ: \(1, 3, 16, 16\) vs \(1, 3, 16, 17\)"),
        ((3, 16, 16), (3, 16, 16), {}, "expected an NCHW batch"),
        ((1, 3, 16, 16), (1, 3, 16, 16), {"crop_border": 8}, "crop_border=8 leaves nothing of a 16x16 image"),
        ((1, 3, 16, 16), (1, 3, 16, 16), {"crop_border": -1}, "crop_border must be a non-negative int"),
        ((1, 1, 16, 16), (1, 1, 16, 16), {"y_channel": True}, "y_channel=True needs RGB inputs"),
        ((1, 3, 16, 16), (1, 3, 16, 16), {"data_range": 0}, "data_range must be positive"),
    ],
)
@pytest.mark.parametrize("metric", [psnr, ssim])
def test_misuse_raises_value_error(metric, pred_shape, target_shape, kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        metric(torch.rand(pred_shape), torch.rand(target_shape), **kwargs)


def test_ssim_needs_a_full_window() -> None:
    x = torch.rand(1, 3, 20, 20)
    with pytest.raises(ValueError, match="at least 11x11 after cropping, got 10x10"):
        ssim(x, x, crop_border=5)
    assert psnr(x, x * 0.5, crop_border=5).shape == (1,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    target, pred = _pair("astronaut")
    p, t = _nchw(pred), _nchw(target)
    assert psnr(p.cuda(), t.cuda(), crop_border=4).cpu().item() == pytest.approx(psnr(p, t, crop_border=4).item())
    assert ssim(p.cuda(), t.cuda(), y_channel=True).cpu().item() == pytest.approx(ssim(p, t, y_channel=True).item())
