"""A BreakHis-like tree whose 400X images are known regions of the same patient's 100X images.

Real BreakHis cannot ship with the repository, and its true 400X-in-100X positions are unknown, so
tests and benchmarks need a tree with the same layout and names *and* a ground truth
(`<out>/truth.json`). Each matched 400X image is a x4 cubic enlargement of a 175x115 region of one
100X image of its patient, then blurred, noised and colour-shifted so matching is not a byte
comparison; the others are fresh texture with no partner. 40X and 200X images are written for
realism only (the pair builder ignores them).

Layout (as BreakHis v1; the patient folder joins type and year with `_`, the file name with `-`):
`BreaKHis_v1/histology_slides/breast/<class>/SOB/<subtype>/SOB_<B|M>_<code>_<year>-<patient>/
<mag>X/SOB_<B|M>_<code>-<year>-<patient>-<mag>-<seq:03d>.png`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

__all__ = ["SUBTYPES", "IMAGE_SIZE", "LR_REGION", "write_breakhis_tree", "he_texture", "enlarge"]

# class -> subtype folder -> code in file names (BreakHis v1)
SUBTYPES: dict[str, dict[str, str]] = {
    "benign": {"adenosis": "A", "fibroadenoma": "F", "phyllodes_tumor": "PT", "tubular_adenoma": "TA"},
    "malignant": {
        "ductal_carcinoma": "DC",
        "lobular_carcinoma": "LC",
        "mucinous_carcinoma": "MC",
        "papillary_carcinoma": "PC",
    },
}
IMAGE_SIZE: tuple[int, int] = (700, 460)  # width, height of every BreakHis image
LR_REGION: tuple[int, int] = (175, 115)  # the 400X field of view inside a 100X image (width, height)

_STROMA = np.array([222.0, 142.0, 186.0], np.float32)  # eosin pink (RGB)
_NUCLEUS = np.array([92.0, 58.0, 138.0], np.float32)  # haematoxylin purple
_LUMEN = np.array([246.0, 240.0, 244.0], np.float32)  # white gaps (lumens, fat, tears)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float, aniso: float = 1.0) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit std (anisotropic: fibre-like streaks).

    Wide fields are drawn on a coarse grid and resized up: the same look at a fraction of the cost.
    """
    h, w = shape
    factor = max(1, int(sigma // 4))
    field = rng.standard_normal((h // factor + 2, w // factor + 2), dtype=np.float32)
    field = cv2.GaussianBlur(field, (0, 0), sigmaX=sigma * aniso / factor, sigmaY=sigma / factor)
    if factor > 1:
        field = cv2.resize(field, (w + 2 * factor, h + 2 * factor), interpolation=cv2.INTER_LINEAR)
    field = field[:h, :w]
    return (field - field.mean()) / (field.std() + 1e-6)


def he_texture(rng: np.random.Generator, size: tuple[int, int] = IMAGE_SIZE) -> np.ndarray:
    """An H&E-like RGB uint8 image at 100X scale: pink stroma, purple nuclei, white gaps.

    Nuclei are randomly placed ellipses over independent noise fields, so no two images (and no two
    regions of one image) look alike: template matching has one clear answer.
    """
    w, h = size
    shape = (h, w)
    img = np.empty((h, w, 3), np.float32)
    img[:] = _STROMA
    # stroma: broad intensity variation plus fibre streaks in a random direction
    img += (_smooth_noise(rng, shape, 24.0) * 10.0)[..., None]
    fibres = _smooth_noise(rng, shape, 2.0, aniso=float(rng.uniform(3.0, 6.0)))
    img += (fibres * 9.0)[..., None] * np.array([0.6, 1.0, 0.8], np.float32)
    # nuclei: denser where a low-frequency "cellularity" field is high
    cellular = _smooth_noise(rng, shape, 40.0)
    mask = np.zeros(shape, np.float32)
    n = int(rng.integers(1400, 2400))
    xs = rng.integers(0, w, n)
    ys = rng.integers(0, h, n)
    keep = rng.random(n) < 0.35 + 0.4 * np.clip(cellular[ys, xs], -1.0, 1.5)
    for x, y, ax_a, ax_b, angle, dark in zip(
        xs[keep],
        ys[keep],
        rng.uniform(1.5, 4.5, n),
        rng.uniform(1.2, 3.2, n),
        rng.uniform(0, 180, n),
        rng.uniform(0.55, 1.0, n),
    ):
        cv2.ellipse(mask, (int(x), int(y)), (round(ax_a), round(ax_b)), float(angle), 0, 360, float(dark), -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.8)[..., None]
    img = img * (1 - mask) + (_NUCLEUS + (_smooth_noise(rng, shape, 1.5)[..., None] * 12.0)) * mask
    # white gaps: the top few percent of a smooth field, with soft edges
    gaps = _smooth_noise(rng, shape, 14.0)
    level = float(np.quantile(gaps, 1.0 - rng.uniform(0.04, 0.12)))
    alpha = np.clip((gaps - level) * 4.0, 0.0, 1.0)[..., None]
    img = img * (1 - alpha) + _LUMEN * alpha
    img += rng.standard_normal(img.shape, dtype=np.float32) * 2.0
    return np.clip(img, 0, 255).astype(np.uint8)


def enlarge(region: np.ndarray, factor: int, rng: np.random.Generator) -> np.ndarray:
    """A higher-magnification view of `region`: cubic x`factor`, then what a second capture changes.

    Slight defocus blur, sensor noise and a small per-channel colour gain/offset: the x4 block mean of
    the result stays close to `region` (the real LR partner) without being equal to it.
    """
    h, w = region.shape[:2]
    up = cv2.resize(region, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC).astype(np.float32)
    up = cv2.GaussianBlur(up, (0, 0), float(rng.uniform(0.5, 1.1)))
    up += rng.standard_normal(up.shape, dtype=np.float32) * float(rng.uniform(2.0, 4.0))
    # uneven illumination of the second capture (vignetting): a smooth +-2% gain across the field
    yy, xx = np.mgrid[-1.0 : 1.0 : complex(0, up.shape[0]), -1.0 : 1.0 : complex(0, up.shape[1])]
    cx, cy = rng.uniform(-0.5, 0.5, 2)
    up *= (1.02 - 0.04 * np.clip(((xx - cx) ** 2 + (yy - cy) ** 2) / 2.0, 0.0, 1.0)).astype(np.float32)[..., None]
    gain = rng.uniform(0.98, 1.02, 3).astype(np.float32)
    offset = rng.uniform(-3.0, 3.0, 3).astype(np.float32)
    return np.clip(up * gain + offset, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class _Patient:
    tumour_class: str
    subtype: str
    code: str
    year: int
    number: str

    @property
    def folder(self) -> str:
        return f"SOB_{self.tumour_class[0].upper()}_{self.code}_{self.year}-{self.number}"

    def image_name(self, mag: int, seq: int) -> str:
        return f"SOB_{self.tumour_class[0].upper()}_{self.code}-{self.year}-{self.number}-{mag}-{seq:03d}.png"

    def image_path(self, breast: Path, mag: int, seq: int) -> Path:
        return breast / self.tumour_class / "SOB" / self.subtype / self.folder / f"{mag}X" / self.image_name(mag, seq)


def _patients(rng: np.random.Generator, count: int) -> list[_Patient]:
    """Distinct patients, alternating benign/malignant, subtypes in turn, BreakHis-like ids (`14-22549AB`)."""
    out: list[_Patient] = []
    numbers: set[str] = set()
    for i in range(count):
        tumour_class = ("benign", "malignant")[i % 2]
        subtypes = list(SUBTYPES[tumour_class].items())
        subtype, code = subtypes[(i // 2) % len(subtypes)]
        while True:
            number = str(int(rng.integers(1000, 30000))) + ("", "AB", "CD", "EF")[int(rng.integers(0, 4))]
            if number not in numbers:
                numbers.add(number)
                break
        out.append(_Patient(tumour_class, subtype, code, int(rng.integers(13, 16)), number))
    return out


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def write_breakhis_tree(
    out: str | Path,
    *,
    patients: int,
    seed: int,
    images_per_patient: int = 4,
    lr_images_per_patient: int = 3,
    unmatched_fraction: float = 0.25,
    other_images_per_magnification: int = 2,
) -> Path:
    """Write a BreakHis-like tree under `out` and `out/truth.json`; return the `BreaKHis_v1` folder.

    `images_per_patient` 400X images per patient, of which about `unmatched_fraction` (over the whole
    tree) have no partner; `lr_images_per_patient` 100X images; `other_images_per_magnification` 40X
    and 200X images each. truth.json maps every 400X file (relative to `out`) to
    `{"file": <100X file relative to out>, "x": int, "y": int}` (top-left of the 175x115 region in
    100X pixels) or null. Same arguments, same bytes.
    """
    if patients < 1 or images_per_patient < 1 or lr_images_per_patient < 1:
        raise ValueError("patients, images_per_patient and lr_images_per_patient must be >= 1")
    if not 0.0 <= unmatched_fraction <= 1.0:
        raise ValueError(f"unmatched_fraction must lie in [0, 1], got {unmatched_fraction}")
    out = Path(out)
    root = out / "BreaKHis_v1"
    breast = root / "histology_slides" / "breast"
    seeds = np.random.SeedSequence(seed)
    plan_rng = np.random.default_rng(seeds.spawn(1)[0])
    people = _patients(plan_rng, patients)
    total_hr = patients * images_per_patient
    unmatched = set(plan_rng.permutation(total_hr)[: round(total_hr * unmatched_fraction)].tolist())
    lr_w, lr_h = LR_REGION
    width, height = IMAGE_SIZE
    truth: dict[str, dict[str, object] | None] = {}
    for p_index, (patient, pseq) in enumerate(zip(people, seeds.spawn(patients))):
        rng = np.random.default_rng(pseq)
        lr_images = []
        for seq in range(1, lr_images_per_patient + 1):
            img = he_texture(rng)
            path = patient.image_path(breast, 100, seq)
            _write_png(path, img)
            lr_images.append((path, img))
        for seq in range(1, images_per_patient + 1):
            path = patient.image_path(breast, 400, seq)
            key = path.relative_to(out).as_posix()
            if p_index * images_per_patient + seq - 1 in unmatched:
                fresh = he_texture(rng)
                x, y = int(rng.integers(0, width - lr_w + 1)), int(rng.integers(0, height - lr_h + 1))
                _write_png(path, enlarge(fresh[y : y + lr_h, x : x + lr_w], 4, rng))
                truth[key] = None
                continue
            lr_path, lr_img = lr_images[int(rng.integers(0, len(lr_images)))]
            x, y = int(rng.integers(0, width - lr_w + 1)), int(rng.integers(0, height - lr_h + 1))
            _write_png(path, enlarge(lr_img[y : y + lr_h, x : x + lr_w], 4, rng))
            truth[key] = {"file": lr_path.relative_to(out).as_posix(), "x": x, "y": y}
        for seq in range(1, other_images_per_magnification + 1):
            _write_png(patient.image_path(breast, 40, seq), he_texture(rng))
            _, src = lr_images[int(rng.integers(0, len(lr_images)))]
            x, y = int(rng.integers(0, width - width // 2 + 1)), int(rng.integers(0, height - height // 2 + 1))
            _write_png(
                patient.image_path(breast, 200, seq), enlarge(src[y : y + height // 2, x : x + width // 2], 2, rng)
            )
    (out / "truth.json").write_text(json.dumps(truth, indent=1, sort_keys=True))
    return root
