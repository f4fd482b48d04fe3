"""Out-of-focus bands and pen-ink strokes at known level-0 places, over a synthetic slide.

Why: the focus and ink filters (`srtn.data.quality`) are calibrated and tested on slides whose bad regions
are known exactly. `ArtefactSlide` wraps a `SyntheticSlide` (drawn without its own blur and ink, so every
artefact on the slide is one listed here) and adds:
- `BlurRegion`: a box rendered out of focus (a Gaussian blur of the slide's light, `sigma` level-0 pixels,
  about 0.5-1 um at 0.25 mpp, as a scanner's focus miss), fading to sharp over `edge` pixels outside it;
- `InkStroke`: a marker line (green, blue or black) of `width` pixels along `points`, translucent
  (Beer-Lambert: the tissue shows through, as real pen ink over tissue does).

Every region is plain level-0 geometry, written to a JSON sidecar (`regions_json`) and read back with
`regions_from_json`; `region_shares` rasterises that geometry over any tile, the same code the renderer
uses, so a test that only has the slide file and its sidecar knows which pixels are bad.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from srtn.synth.render import SyntheticSlide

__all__ = [
    "BlurRegion",
    "InkStroke",
    "ArtefactSlide",
    "INK_TRANSMITTANCE",
    "plan_artefacts",
    "region_shares",
    "regions_from_json",
]

_INK_OD = {  # optical density of each marker at full strength (RGB on a 255 white, as render.INKS)
    "green": (40, 150, 90),
    "blue": (40, 70, 172),
    "black": (38, 38, 48),
}
INK_TRANSMITTANCE: dict[str, np.ndarray] = {k: np.asarray(v, np.float32) / 255.0 for k, v in _INK_OD.items()}
"""Share of light each marker lets through per RGB channel at full strength."""


@dataclass(frozen=True)
class BlurRegion:
    """Level-0 box (x, y, w, h) rendered out of focus with a Gaussian of `sigma` px; sharp again `edge` px out."""

    x: int
    y: int
    w: int
    h: int
    sigma: float
    edge: int = 48

    @property
    def margin(self) -> int:
        """Pixels of sharp context a blurred pixel depends on (the kernel's radius)."""
        return math.ceil(3.5 * self.sigma)

    def weight(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) float32 blend weight over a request: 1 inside the box, down to 0 over `edge` px outside."""
        xs = np.arange(x, x + w, dtype=np.float32)
        ys = np.arange(y, y + h, dtype=np.float32)
        ox = np.maximum(np.maximum(self.x - xs, xs - (self.x + self.w - 1)), 0.0)
        oy = np.maximum(np.maximum(self.y - ys, ys - (self.y + self.h - 1)), 0.0)
        edge = float(max(self.edge, 1))
        return np.outer(np.clip(1.0 - oy / edge, 0.0, 1.0), np.clip(1.0 - ox / edge, 0.0, 1.0))

    def core(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) bool: pixels inside the fully blurred box."""
        out = np.zeros((h, w), bool)
        x0, y0 = max(self.x - x, 0), max(self.y - y, 0)
        x1, y1 = min(self.x + self.w - x, w), min(self.y + self.h - y, h)
        if x1 > x0 and y1 > y0:
            out[y0:y1, x0:x1] = True
        return out

    def touches(self, x: int, y: int, w: int, h: int, pad: int = 0) -> bool:
        """Whether the box grown by `edge + pad` px meets the request."""
        g = self.edge + pad
        return self.x - g < x + w and x < self.x + self.w + g and self.y - g < y + h and y < self.y + self.h + g


@dataclass(frozen=True)
class InkStroke:
    """A marker line: `color` in `INK_TRANSMITTANCE`, level-0 `points`, `width` px, `strength` in (0, 1]."""

    color: str
    points: tuple[tuple[int, int], ...]
    width: int
    strength: float

    @property
    def bbox(self) -> tuple[int, int, int, int]:
        """Level-0 (x, y, w, h) that holds every inked pixel."""
        pts = np.asarray(self.points)
        r = self.width // 2 + 2
        x0, y0 = pts.min(axis=0) - r
        x1, y1 = pts.max(axis=0) + r
        return int(x0), int(y0), int(x1 - x0), int(y1 - y0)

    def coverage(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """(h, w) float32 in [0, 1]: how much of each pixel the line covers, from the distance of the pixel's
        centre to the polyline (round ends, a one-pixel anti-aliased edge): exact wherever the tile falls."""
        out = np.zeros((h, w), np.float32)
        bx, by, bw, bh = self.bbox
        x0, y0, x1, y1 = max(x, bx), max(y, by), min(x + w, bx + bw), min(y + h, by + bh)
        if x1 <= x0 or y1 <= y0:
            return out
        px = np.arange(x0, x1, dtype=np.float32)[None, :]
        py = np.arange(y0, y1, dtype=np.float32)[:, None]
        dist2 = np.full((y1 - y0, x1 - x0), np.inf, np.float32)
        pts = np.asarray(self.points, np.float32)
        for (ax, ay), (qx, qy) in itertools.pairwise(pts):
            dx, dy = qx - ax, qy - ay
            t = np.clip(((px - ax) * dx + (py - ay) * dy) / max(dx * dx + dy * dy, 1e-6), 0.0, 1.0)
            dist2 = np.minimum(dist2, (px - ax - t * dx) ** 2 + (py - ay - t * dy) ** 2)
        out[y0 - y : y1 - y, x0 - x : x1 - x] = np.clip(self.width / 2 + 0.5 - np.sqrt(dist2), 0.0, 1.0)
        return out


class ArtefactSlide:
    """A TileSource: `base` with `blur` regions and `ink` strokes drawn over it (level-0 coordinates)."""

    def __init__(self, base: SyntheticSlide, blur: Sequence[BlurRegion], ink: Sequence[InkStroke]) -> None:
        for stroke in ink:
            if stroke.color not in INK_TRANSMITTANCE:
                raise ValueError(f"unknown ink colour {stroke.color!r}; choose from {sorted(INK_TRANSMITTANCE)}")
        self.base, self.blur, self.ink = base, tuple(blur), tuple(ink)
        self.width, self.height, self.mpp = base.width, base.height, base.mpp

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region whose top-left is level-0 pixel (x, y)."""
        near = [r for r in self.blur if r.touches(x, y, w, h)]
        if near:
            m = max(r.margin for r in near)
            big = self.base(x - m, y - m, w + 2 * m, h + 2 * m).astype(np.float32)
            sharp = big[m : m + h, m : m + w]
            out = sharp.copy()
            for r in near:
                k = 2 * r.margin + 1  # fixed kernel: the same blur wherever the request falls (no seams)
                blurred = cv2.GaussianBlur(big, (k, k), r.sigma, borderType=cv2.BORDER_REPLICATE)
                out += r.weight(x, y, w, h)[..., None] * (blurred[m : m + h, m : m + w] - sharp)
            rgb = np.clip(out + 0.5, 0, 255).astype(np.uint8)
        else:
            rgb = self.base(x, y, w, h)
        strokes = [(s, s.coverage(x, y, w, h)) for s in self.ink]
        strokes = [(s, c) for s, c in strokes if c.any()]
        if not strokes:
            return rgb
        light = rgb.astype(np.float32)
        for stroke, cover in strokes:
            light *= np.power(INK_TRANSMITTANCE[stroke.color][None, None, :], (cover * stroke.strength)[..., None])
        return np.clip(light + 0.5, 0, 255).astype(np.uint8)

    def shares(self, x: int, y: int, w: int, h: int) -> dict[str, float]:
        """Share of a level-0 region that is fully blurred (`blur`) or inked (`ink`, any colour), see
        `region_shares`."""
        return _shares(self.blur, self.ink, x, y, w, h)

    def regions_json(self) -> dict[str, Any]:
        """The sidecar: every planted region as level-0 geometry (plus the base's folds, as boxes)."""
        return {
            "coordinates": "level-0 pixels",
            "width": self.width,
            "height": self.height,
            "mpp": self.mpp,
            "blur": [{"x": r.x, "y": r.y, "w": r.w, "h": r.h, "sigma": r.sigma, "edge": r.edge} for r in self.blur],
            "ink": [
                {
                    "color": s.color,
                    "points": [list(p) for p in s.points],
                    "width": s.width,
                    "strength": s.strength,
                    "bbox": list(s.bbox),
                }
                for s in self.ink
            ],
            "folds": [list(b) for b in self.base.artefact_boxes.get("fold", [])],
        }


def regions_from_json(data: Mapping[str, Any]) -> tuple[list[BlurRegion], list[InkStroke]]:
    """The blur regions and ink strokes of a sidecar written by `ArtefactSlide.regions_json`."""
    blur = [BlurRegion(r["x"], r["y"], r["w"], r["h"], float(r["sigma"]), int(r["edge"])) for r in data["blur"]]
    ink = [
        InkStroke(s["color"], tuple((int(p[0]), int(p[1])) for p in s["points"]), int(s["width"]), float(s["strength"]))
        for s in data["ink"]
    ]
    return blur, ink


def region_shares(data: Mapping[str, Any], x: int, y: int, w: int, h: int) -> dict[str, float]:
    """Share of the level-0 region (x, y, w, h) inside any fully blurred box (`blur`) and under ink
    (`ink`: pixels at least half covered by a stroke), from a sidecar dict."""
    blur, ink = regions_from_json(data)
    return _shares(blur, ink, x, y, w, h)


def _shares(blur: Sequence[BlurRegion], ink: Sequence[InkStroke], x: int, y: int, w: int, h: int) -> dict[str, float]:
    core = np.zeros((h, w), bool)
    for r in blur:
        core |= r.core(x, y, w, h)
    inked = np.zeros((h, w), bool)
    for s in ink:
        inked |= s.coverage(x, y, w, h) >= 0.5
    return {"blur": float(core.mean()), "ink": float(inked.mean())}


def plan_artefacts(
    base: SyntheticSlide, *, seed: int, blur_regions: int = 2, sigma: tuple[float, float] = (1.5, 4.0)
) -> tuple[list[BlurRegion], list[InkStroke]]:
    """Place `blur_regions` out-of-focus boxes and one stroke of each ink colour on a slide's tissue.

    Sizes follow the slide (a 4096-px slide gets boxes of 512-1024 px and strokes 128-256 px wide);
    `sigma` (level-0 px at 0.25 mpp, scaled by mpp) is drawn uniformly from its range. Boxes never overlap
    each other or a stroke's bounding box, so each bad pixel has one known cause.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB1E7]))
    points = base.tissue_points()
    side = min(base.width, base.height)
    fit = min(1.0, max(0.25, side / 4096))
    px = 0.25 / base.mpp  # level-0 pixels per 0.25 um
    taken: list[tuple[int, int, int, int]] = []

    def free(box: tuple[int, int, int, int]) -> bool:
        x, y, w, h = box
        return all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in taken)

    def near_tissue() -> np.ndarray:
        return points[int(rng.integers(len(points)))].astype(np.float64)

    blur: list[BlurRegion] = []
    for _ in range(200 * blur_regions):
        if len(blur) == blur_regions:
            break
        w, h = (int(v) for v in rng.uniform(512, 1024, size=2) * fit)
        cx, cy = near_tissue()
        box = (int(np.clip(cx - w / 2, 0, base.width - w)), int(np.clip(cy - h / 2, 0, base.height - h)), w, h)
        if free(box):
            s = round(float(rng.uniform(*sigma)) * px, 2)
            region = BlurRegion(*box, sigma=s, edge=max(8, round(48 * fit)))
            g = region.edge
            taken.append((box[0] - g, box[1] - g, w + 2 * g, h + 2 * g))
            blur.append(region)
    ink: list[InkStroke] = []
    for color in INK_TRANSMITTANCE:
        for _ in range(200):
            angle = float(rng.uniform(0, 2 * np.pi))
            pts = [near_tissue()]
            for _ in range(int(rng.integers(2, 4))):
                angle += float(rng.normal(0, 0.5))
                step = float(rng.uniform(300, 600)) * fit
                pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
            width = max(8, round(float(rng.uniform(128, 256)) * fit))
            stroke = InkStroke(
                color, tuple((int(p[0]), int(p[1])) for p in pts), width, round(float(rng.uniform(0.6, 1.0)), 2)
            )
            if free(stroke.bbox):
                taken.append(stroke.bbox)
                ink.append(stroke)
                break
    return blur, ink
