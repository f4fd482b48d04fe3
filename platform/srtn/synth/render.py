"""Synthetic H&E-like whole-slide content, rendered per tile (level-0 pixels) and deterministic from a seed.

Why synthetic: tests, demos and benchmarks need real pyramidal slides with realistic statistics (white
glass, pink stroma with texture, purple nuclei) and with every artefact the quality filters must reject:
pen ink, dark tissue folds, out-of-focus (blurred) patches and pale near-white tissue edges.

How it stays fast and memory-bounded at any slide size:
- low-frequency fields (tissue mask, cellularity, stain strength, artefact masks) live on a coarse grid
  (one cell per `LOWRES` level-0 pixels) and are bilinearly interpolated per tile with one `warpAffine`
  whose mapping is a global function of level-0 coordinates, so tiles join without seams;
- high-frequency texture (stroma fibres, nuclei, pixel noise) comes from small periodic atlases with
  different periods, sampled at level-0 coordinates modulo the period (again seamless).
Colours are mixed in optical density (Beer-Lambert) and converted once per tile.
"""

from __future__ import annotations

from collections.abc import Collection

import cv2
import numpy as np

__all__ = ["SyntheticSlide", "LOWRES", "ARTEFACTS", "INKS"]

LOWRES = 32  # level-0 pixels per cell of the low-frequency fields
_RAGGED = 0.05  # amplitude of the border jitter, in tissue-field units


def _od(rgb: tuple[int, int, int]) -> np.ndarray:
    """Optical density of a colour on a 255 white: the stain amount that produces it."""
    return -np.log(np.asarray(rgb, np.float32) / 255.0)


OD_BACKGROUND = _od((241, 239, 243))  # clean glass, slightly off-white
OD_EOSIN = _od((232, 118, 186))  # stroma/cytoplasm at full strength: pink
OD_HEMATOXYLIN = _od((92, 56, 142))  # nuclei at full strength: purple
OD_FOLD = np.array([1.3, 1.6, 1.2], np.float32)  # extra darkness of a fold (gray < 55)
INKS: dict[str, np.ndarray] = {"green": _od((40, 150, 90)), "blue": _od((40, 70, 172))}  # pen markers
ARTEFACTS: tuple[str, ...] = ("blur", "green_ink", "blue_ink", "fold")  # keys of `artefact_boxes`


def _wrap_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a periodic (tileable) image: wrap-pad, blur, crop; stays tileable."""
    if sigma <= 0:
        return img.astype(np.float32)
    pad = int(np.ceil(3.5 * sigma)) + 1
    big = np.pad(img.astype(np.float32), pad, mode="wrap")
    return cv2.GaussianBlur(big, (0, 0), sigma)[pad:-pad, pad:-pad]


def _periodic_noise(
    rng: np.random.Generator, shape: tuple[int, int], sigma: float, sigma_hi: float = 0.0
) -> np.ndarray:
    """Zero-mean, unit-std, tileable noise; band-pass between `sigma_hi` and `sigma` pixels if `sigma_hi`."""
    white = rng.standard_normal(shape, dtype=np.float32)
    out = _wrap_blur(white, sigma)
    if sigma_hi:
        out = _wrap_blur(white, sigma_hi) - out
    return (out - out.mean()) / (out.std() + 1e-12)


class _Atlas:
    """A periodic texture, padded by wrapping so that tile-sized crops are plain slices."""

    PAD = 512

    def __init__(self, img: np.ndarray) -> None:
        self.period = img.shape[:2]
        self.padded = np.pad(img, ((0, self.PAD), (0, self.PAD)) + ((0, 0),) * (img.ndim - 2), mode="wrap")
        self.img = self.padded[: self.period[0], : self.period[1]]  # a view: one copy in memory

    def crop(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """The (h, w) window at level-0 (x, y), w and h at most PAD (a view, no copy)."""
        oy, ox = y % self.period[0], x % self.period[1]
        return self.padded[oy : oy + h, ox : ox + w]


def _ramp(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip((v - lo) * (1.0 / (hi - lo)), 0.0, 1.0)


class SyntheticSlide:
    """A TileSource: ``slide(x, y, w, h)`` returns the RGB uint8 region at level-0 pixel (x, y).

    The same (seed, size, tissue_fraction, mpp) always gives the same pixels, whatever the order or size
    of the requests. `mpp` scales structure sizes (nuclei, fibres) so that 0.5 mpp looks like 20x.
    `artefact_boxes[kind]` lists level-0 (x, y, w, h) boxes of each artefact (see `ARTEFACTS`), so tests
    of quality filters can look where the artefacts are. `artefacts` picks which kinds are drawn (all by
    default); the random draws are the same whatever it holds, so a slide without its pen strokes is the
    same slide, pixel for pixel, everywhere else.
    """

    def __init__(
        self,
        *,
        width: int,
        height: int,
        seed: int,
        tissue_fraction: float = 0.4,
        mpp: float = 0.25,
        artefacts: Collection[str] = ARTEFACTS,
    ) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"width and height must be positive, got {width}x{height}")
        if not 0.0 < tissue_fraction < 1.0:
            raise ValueError(f"tissue_fraction must be in (0, 1), got {tissue_fraction}")
        if not mpp > 0:
            raise ValueError(f"mpp must be positive, got {mpp}")
        unknown = sorted(set(artefacts) - set(ARTEFACTS))
        if unknown:
            raise ValueError(f"unknown artefacts {unknown}; choose from {list(ARTEFACTS)}")
        self.artefacts = tuple(k for k in ARTEFACTS if k in artefacts)
        self.width, self.height, self.seed = width, height, seed
        self.tissue_fraction, self.mpp = tissue_fraction, mpp
        streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]
        self._build_atlases(streams[0], scale=0.25 / mpp)
        self._build_fields(streams[1], streams[2])

    # -- set-up ---------------------------------------------------------------------------------
    def _period(self, rows: int, cols: int) -> tuple[int, int]:
        """Atlas period: distinct per atlas (so repeats do not line up), no larger than the slide needs."""
        return min(rows, max(128, -(-self.height // 64) * 64)), min(cols, max(128, -(-self.width // 64) * 64))

    def _build_atlases(self, rng: np.random.Generator, *, scale: float) -> None:
        # stroma: thin ridged fibres over a coarser density with clear (whitish) gaps
        shape_e = self._period(1152, 1280)
        fibres = np.clip(1.0 - np.abs(_periodic_noise(rng, shape_e, 7.0 * scale, 2.0 * scale)), 0.0, 1.0) ** 2
        coarse = _periodic_noise(rng, shape_e, 14.0 * scale)
        eosin = np.clip(0.35 + 0.85 * fibres + 0.4 * coarse, 0.04, 1.7).astype(np.float32)
        # nuclei: filled ellipses with chromatin texture, drawn on a torus
        shape_h = self._period(896, 960)
        nuclei = np.zeros(shape_h, np.float32)
        count = int(shape_h[0] * shape_h[1] / (44.0 * scale) ** 2)
        for _ in range(count):
            cx, cy = rng.uniform(0, shape_h[1]), rng.uniform(0, shape_h[0])
            ax = float(rng.uniform(7.0, 14.0)) * scale
            axes = (round(ax), round(ax * float(rng.uniform(0.55, 1.0))))
            angle = float(rng.uniform(0, 180))
            value = float(rng.uniform(0.65, 1.0) if rng.random() > 0.08 else rng.uniform(1.1, 1.35))
            for dy in (-shape_h[0], 0, shape_h[0]):
                for dx in (-shape_h[1], 0, shape_h[1]):
                    cv2.ellipse(nuclei, (int(cx + dx), int(cy + dy)), axes, angle, 0, 360, value, -1)
        grain = _periodic_noise(rng, shape_h, 0.9)
        nuclei = _wrap_blur(nuclei * (0.82 + 0.18 * grain), 0.8 * scale)
        self._noise = _Atlas(_periodic_noise(rng, self._period(768, 832), 0.6))
        self._glass = _Atlas(_to_rgb(self._glass_od(self._noise.img)))  # bare glass, ready to copy
        self._ragged = _Atlas(_periodic_noise(rng, self._period(640, 704), 5.0 * scale))  # irregular tissue borders
        self._ragged_max = _RAGGED * float(self._ragged.img.max())
        self._eosin, self._nuclei = _Atlas(eosin), _Atlas(nuclei)
        self._eosin_blur = _Atlas(_wrap_blur(eosin, 24.0 * scale))  # out-of-focus patches
        self._nuclei_blur = _Atlas(_wrap_blur(nuclei, 24.0 * scale))

    def _build_fields(self, rng: np.random.Generator, art_rng: np.random.Generator) -> None:
        gw, gh = self.width // LOWRES + 3, self.height // LOWRES + 3
        small = min(gw, gh)
        yy, xx = np.mgrid[0:gh, 0:gw].astype(np.float32)
        cx, cy = self.width / LOWRES / 2, self.height / LOWRES / 2
        vignette = ((xx - cx) / (cx + 1)) ** 2 + ((yy - cy) / (cy + 1)) ** 2

        def blob(sigma: float) -> np.ndarray:
            f = cv2.GaussianBlur(rng.standard_normal((gh, gw)).astype(np.float32), (0, 0), sigma)
            return (f - f.mean()) / (f.std() + 1e-12)

        tissue = blob(max(2.0, small / 8)) + 0.35 * blob(max(1.0, small / 30)) - 1.2 * vignette
        inside = tissue[: max(1, self.height // LOWRES), : max(1, self.width // LOWRES)]
        self._threshold = float(np.quantile(inside, 1.0 - self.tissue_fraction))
        gy, gx = np.gradient(tissue)
        near = np.abs(tissue - self._threshold) < 0.25
        grad = float(np.median(np.hypot(gx, gy)[near])) if near.any() else 0.05
        self._k_edge = LOWRES / (3.0 * grad)  # anti-aliased edge about 3 px wide
        fringe_px = min(140.0, 0.03 * min(self.width, self.height)) * 0.25 / self.mpp
        self._k_fringe = LOWRES / (max(fringe_px, 8.0) * grad)  # pale rim where staining fades out
        self._threshold -= 0.2 / self._k_fringe  # the palest rim reads as glass: grow tissue to compensate
        cellularity = 0.9 + 0.45 * blob(max(1.5, small / 12))
        stain = 1.0 + 0.12 * blob(max(2.0, small / 6))
        blurred = self._artefacts(art_rng, tissue, gw, gh)
        self._fields_a = np.dstack([tissue, cellularity, stain, blurred[0]]).astype(np.float32)
        self._fields_b = np.dstack(blurred[1:]).astype(np.float32)  # green ink, blue ink, fold

    def _artefacts(self, rng: np.random.Generator, tissue: np.ndarray, gw: int, gh: int) -> list[np.ndarray]:
        """Blur patches, pen strokes (green and blue) and folds, drawn on the coarse grid."""
        canvases = [np.zeros((gh, gw), np.uint8) for _ in range(4)]  # blur, green, blue, fold
        cells = np.argwhere(tissue[: max(1, gh - 3), : max(1, gw - 3)] > self._threshold + 0.3)
        if len(cells) == 0:
            cells = np.argwhere(tissue >= tissue.max())
        n = max(1, round(np.sqrt(self.width * self.height) / 4096))  # 1 at 4096^2, 2 at 8192^2
        scale = 0.25 / self.mpp
        fit = min(1.0, max(0.4, np.sqrt(self.width * self.height) / 4096))  # smaller marks on small slides

        def start(on_tissue: bool = True) -> np.ndarray:
            if not on_tissue:  # ink goes anywhere on the glass
                return rng.uniform([0, 0], [self.width / LOWRES, self.height / LOWRES])
            cy, cx = cells[rng.integers(len(cells))]
            return np.array([cx, cy], np.float64)

        def walk(p: np.ndarray, steps: int, step: float) -> np.ndarray:
            angle = rng.uniform(0, 2 * np.pi)
            pts = [p]
            for _ in range(steps):
                angle += rng.normal(0, 0.45)
                pts.append(pts[-1] + step * np.array([np.cos(angle), np.sin(angle)]))
            return np.round(np.array(pts)).astype(np.int32)

        for _ in range(n):
            c = start()
            big = max(fit, 0.6)
            axes = (round(float(rng.uniform(8, 16)) * big), round(float(rng.uniform(6, 12)) * big))
            cv2.ellipse(canvases[0], (int(c[0]), int(c[1])), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        for i in range(max(2, n)):  # both ink colours on every slide
            pts = walk(start(on_tissue=False), int(rng.integers(3, 7)), float(rng.uniform(5, 12)) * scale * fit)
            thick = max(2, round(float(rng.uniform(3, 6)) * scale * fit))
            cv2.polylines(canvases[1 + i % 2], [pts], False, 255, thick, cv2.LINE_AA)
        for _ in range(n):
            pts = walk(start(), int(rng.integers(2, 5)), float(rng.uniform(6, 14)) * scale)
            cv2.polylines(canvases[3], [pts], False, 255, max(1, round(2.0 * scale)), cv2.LINE_AA)
        for kind, canvas in zip(ARTEFACTS, canvases):
            if kind not in self.artefacts:
                canvas[:] = 0
        fields = [cv2.GaussianBlur(c.astype(np.float32) / 255.0, (0, 0), 0.7) for c in canvases]
        self.artefact_boxes = {kind: self._boxes(f) for kind, f in zip(ARTEFACTS, fields)}
        return fields

    def tissue_points(self) -> np.ndarray:
        """Level-0 (x, y) centres of coarse cells well inside tissue (where artefacts are planted), (n, 2)."""
        tissue = self._fields_a[: max(1, self.height // LOWRES), : max(1, self.width // LOWRES), 0]
        cells = np.argwhere(tissue > self._threshold + 0.3)
        if len(cells) == 0:
            cells = np.argwhere(tissue >= tissue.max())
        return (cells[:, ::-1] * LOWRES + LOWRES // 2).astype(np.int64)

    def _boxes(self, field: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Level-0 (x, y, w, h) bounding boxes of the solid parts of one artefact field, clipped to the slide."""
        n, _, stats, _ = cv2.connectedComponentsWithStats((field > 0.6).astype(np.uint8), connectivity=8)
        boxes = []
        for cx, cy, cw, ch, _ in stats[1:n]:
            x0, y0 = min(int(cx) * LOWRES, self.width), min(int(cy) * LOWRES, self.height)
            x1, y1 = min(int(cx + cw) * LOWRES, self.width), min(int(cy + ch) * LOWRES, self.height)
            if x1 > x0 and y1 > y0:
                boxes.append((x0, y0, x1 - x0, y1 - y0))
        return sorted(boxes)

    # -- rendering ------------------------------------------------------------------------------
    def _fields(self, stack: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Bilinear interpolation of coarse cells (centres at (i + 0.5) * LOWRES) at level-0 pixel centres."""
        s = 1.0 / LOWRES
        m = np.array([[s, 0.0, (x + 0.5) * s - 0.5], [0.0, s, (y + 0.5) * s - 0.5]], np.float64)
        out = cv2.warpAffine(
            stack, m, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
        )
        return out.reshape(h, w, stack.shape[2])

    def _cell_max(self, stack: np.ndarray, x: int, y: int, w: int, h: int) -> np.ndarray:
        """Per-channel maximum of the coarse cells that bilinear interpolation uses for a region."""
        s = 1.0 / LOWRES
        i0, j0 = int(np.floor((y + 0.5) * s - 0.5)), int(np.floor((x + 0.5) * s - 0.5))
        i1, j1 = int(np.floor((y + h - 0.5) * s - 0.5)) + 1, int(np.floor((x + w - 0.5) * s - 0.5)) + 1
        gh, gw = stack.shape[:2]
        rows = slice(min(max(i0, 0), gh - 1), min(max(i1, 0), gh - 1) + 1)
        cols = slice(min(max(j0, 0), gw - 1), min(max(j1, 0), gw - 1) + 1)
        return stack[rows, cols].max(axis=(0, 1))

    def __call__(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        """RGB uint8 (h, w, 3) of the region whose top-left is level-0 pixel (x, y)."""
        if w <= 0 or h <= 0:
            raise ValueError(f"region size must be positive, got {w}x{h}")
        if w <= _Atlas.PAD and h <= _Atlas.PAD:
            return self._render(x, y, w, h)
        out = np.empty((h, w, 3), np.uint8)  # large requests: blocks keep temporaries small and cached
        for by in range(0, h, _Atlas.PAD):
            for bx in range(0, w, _Atlas.PAD):
                bw, bh = min(_Atlas.PAD, w - bx), min(_Atlas.PAD, h - by)
                out[by : by + bh, bx : bx + bw] = self._render(x + bx, y + by, bw, bh)
        return out

    def _render(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        top_a = self._cell_max(self._fields_a, x, y, w, h)
        top_b = self._cell_max(self._fields_b, x, y, w, h)
        has_tissue = (top_a[0] + self._ragged_max - self._threshold) * self._k_edge + 0.5 > 0.0
        has_ink = top_b[:2] > 0.3
        if not has_tissue and not has_ink.any():  # bare glass: most of a slide, served from a cache
            return self._glass.crop(x, y, w, h).copy()
        od = self._glass_od(self._noise.crop(x, y, w, h))
        fb = self._fields(self._fields_b, x, y, w, h) if top_b.max() > 0.3 else None
        if has_tissue:
            fa = self._fields(self._fields_a, x, y, w, h)
            d = fa[..., 0] + _RAGGED * self._ragged.crop(x, y, w, h) - self._threshold
            alpha = np.clip(d * self._k_edge + 0.5, 0.0, 1.0)
            eosin, nuclei = self._eosin.crop(x, y, w, h), self._nuclei.crop(x, y, w, h)
            if top_a[3] > 0.25:
                blur = _ramp(fa[..., 3], 0.25, 0.55)
                eosin = eosin + blur * (self._eosin_blur.crop(x, y, w, h) - eosin)
                nuclei = nuclei + blur * (self._nuclei_blur.crop(x, y, w, h) - nuclei)
            strength = alpha * fa[..., 2] * (0.2 + 0.8 * np.clip(d * self._k_fringe, 0.0, 1.0))
            od += (strength * eosin)[..., None] * OD_EOSIN
            od += (strength * nuclei * np.maximum(fa[..., 1], 0.3))[..., None] * OD_HEMATOXYLIN
            if fb is not None and top_b[2] > 0.3:  # a folded double layer: tissue stain x3 plus a dark base
                fold = _ramp(fb[..., 2], 0.3, 0.6) * alpha
                od += fold[..., None] * (2.0 * (od - OD_BACKGROUND) + OD_FOLD)
        for channel, ink in enumerate(INKS.values()):
            if fb is not None and has_ink[channel]:
                od += _ramp(fb[..., channel], 0.3, 0.6)[..., None] * ink
        return _to_rgb(od)

    @staticmethod
    def _glass_od(noise: np.ndarray) -> np.ndarray:
        return OD_BACKGROUND + (0.012 * noise)[..., None] * np.ones(3, np.float32)


def _to_rgb(od: np.ndarray) -> np.ndarray:
    """Optical density (h, w, 3) to RGB uint8 on a 255 white (Beer-Lambert)."""
    rgb = np.exp(-od)
    rgb *= 255.0
    rgb += 0.5
    return np.clip(rgb, 0, 255).astype(np.uint8)
