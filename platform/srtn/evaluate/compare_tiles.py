"""Side-by-side pictures of a comparison run: the same test tiles through every model.

`compare_tiles.png`: a fixed, seeded choice of tiles per dataset (`choose_tiles`: ranked by a hash of the
seed and the tile id, so reruns, other models and Ray's scheduling never change which), one row each, columns
LR (nearest-upscaled) | bicubic | every model | HR. Each image shows the whole tile with a box around its most
detailed square (the largest Laplacian energy of the HR tile), that square magnified below it (nearest
neighbour, pixels visible), and its PSNR against HR under both (the evaluation's conventions: uint8 SR,
`crop_border`). `gain_tiles.png` (`gain_tiles/<dataset>.png` with several datasets): per trained model, the
tile where it gains most over bicubic and the one where it gains least (or loses most). A model not
applicable to a dataset's scale shows `n/a`.

Pictures are drawn with numpy and OpenCV, so their size is exact (`picture_size`); SR images are computed on
the driver for the few tiles shown, in one batch per model, with the models `resolve_models` loaded there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cv2
import numpy as np
import pandas as pd
import torch

from srtn import storage
from srtn.data.schema import decode_png, lr_column
from srtn.evaluate.score import HrReference, ResolvedModel, super_resolve
from srtn.models import build_model
from srtn.vocab import BICUBIC

__all__ = [
    "LR_COLUMN",
    "DatasetView",
    "PictureRow",
    "choose_tiles",
    "comparison_pictures",
    "gain_extremes",
    "load_tiles",
    "picture_columns",
    "picture_rows",
    "picture_size",
    "render_picture",
]

LR_COLUMN, HR_COLUMN = "LR (nearest)", "HR"
PAD, HEADER, LABEL, CAPTION = 4, 22, 18, 18
_FONT, _TEXT = cv2.FONT_HERSHEY_SIMPLEX, 0.42
_BOX = (255, 200, 0)  # the zoomed square, on every image


class DatasetView(Protocol):
    """What the pictures need of an evaluated dataset (`srtn.evaluate.pipeline.DatasetPlan` has it)."""

    name: str
    shards: str
    split: str
    scale: int
    crop_border: int


@dataclass
class PictureRow:
    """One row of a picture: a label, and per column an RGB uint8 image at HR size (None: not applicable) and
    its PSNR against HR (None for HR itself)."""

    label: str
    tile_id: str
    images: dict[str, np.ndarray | None] = field(default_factory=dict)
    psnr: dict[str, float | None] = field(default_factory=dict)
    box: tuple[int, int, int] = (0, 0, 0)  # (y, x, side) of the zoomed square, HR pixels


def choose_tiles(tile_ids: Sequence[str], *, count: int, seed: int) -> list[str]:
    """`count` tile ids ranked by sha256(seed:tile_id): a fixed choice that only the seed and the tiles decide."""
    ranked = sorted(set(tile_ids), key=lambda t: hashlib.sha256(f"{seed}:{t}".encode()).hexdigest())
    return ranked[:count]


def gain_extremes(per_image: pd.DataFrame, models: Sequence[str]) -> list[tuple[str, str, str, float]]:
    """`(model, "best" | "worst", tile_id, PSNR gain over bicubic)` for every non-bicubic model of one dataset's
    per-image table (empty without a bicubic row)."""
    psnr = per_image.pivot_table(index="tile_id", columns="model", values="psnr", aggfunc="first")
    if BICUBIC not in psnr.columns:
        return []
    out = []
    for name in models:
        if name == BICUBIC or name not in psnr.columns:
            continue
        gain = (psnr[name] - psnr[BICUBIC]).replace([np.inf, -np.inf], np.nan).dropna().sort_index()
        if gain.empty:
            continue
        out.append((name, "best", str(gain.idxmax()), float(gain.max())))
        out.append((name, "worst", str(gain.idxmin()), float(gain.min())))
    return out


def load_tiles(shards: str, split: str, scale: int, tile_ids: Sequence[str]) -> dict[str, tuple[np.ndarray, ...]]:
    """`{tile_id: (hr, lr, source_id)}` (uint8 RGB arrays) of the wanted tiles of one split: only the files the
    manifest lists for it (`check_shards`), read with a Parquet filter on `tile_id` (only the row groups that
    hold them are decoded). A file's rows belong to the split of its folder (a `split` column, where a file
    still has one, must agree)."""
    import pyarrow.parquet as pq

    from srtn.data.reader import check_shards

    wanted = list(dict.fromkeys(tile_ids))
    found: dict[str, tuple[np.ndarray, ...]] = {}
    if not wanted:
        return found
    for uri in check_shards(shards, scale, splits=(split,))[split]:
        fs, path = storage.resolve(uri)
        names = pq.read_schema(path, filesystem=fs).names
        columns = [c for c in ("tile_id", "source_id", "split", "hr", lr_column(scale)) if c in names]
        table = pq.read_table(path, filesystem=fs, columns=columns, filters=[("tile_id", "in", wanted)])
        for row in table.to_pylist():
            if row.get("split", split) == split and row.get(lr_column(scale)) is not None:
                found[row["tile_id"]] = (decode_png(row["hr"]), decode_png(row[lr_column(scale)]), row["source_id"])
    return found


def picture_columns(models: Sequence[ResolvedModel]) -> list[str]:
    """LR | bicubic | every other model in config order | HR."""
    return [LR_COLUMN, BICUBIC, *(m.name for m in models if m.name != BICUBIC), HR_COLUMN]


def _zoom_box(hr: np.ndarray) -> tuple[int, int, int]:
    """`(y, x, side)`: the square of a quarter of the tile's side holding the most detail (Laplacian energy),
    searched on a grid of half-square steps (deterministic)."""
    h, w = hr.shape[:2]
    side = max(8, min(h, w) // 4)
    energy = np.abs(cv2.Laplacian(cv2.cvtColor(hr, cv2.COLOR_RGB2GRAY).astype(np.float32), cv2.CV_32F))
    step = max(1, side // 2)
    best = max(
        ((float(energy[y : y + side, x : x + side].sum()), y, x) for y in range(0, h - side + 1, step)
         for x in range(0, w - side + 1, step)),
        key=lambda t: (t[0], -t[1], -t[2]),
    )  # fmt: skip
    return best[1], best[2], side


def _to_uint8(batch: torch.Tensor) -> np.ndarray:
    """NCHW float in [0, 1] -> NHWC uint8."""
    return (batch.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _nchw(images: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))).float() / 255.0


def _columns_of(
    tiles: Mapping[str, tuple[np.ndarray, ...]], ids: Sequence[str], nets: Mapping[str, object], *, kw: Mapping
) -> dict[str, tuple[dict[str, np.ndarray | None], dict[str, float | None]]]:
    """`{tile_id: (images, psnr)}` of same-sized tiles: one batched forward per model, one `HrReference`."""
    hr = [tiles[t][0] for t in ids]
    lr = [tiles[t][1] for t in ids]
    reference = HrReference(_nchw(hr), crop_border=kw["crop_border"])
    nearest = [cv2.resize(lo, (h.shape[1], h.shape[0]), interpolation=cv2.INTER_NEAREST) for h, lo in zip(hr, lr)]
    near_psnr = reference.score(_nchw(nearest))["psnr"]
    out = {t: ({LR_COLUMN: nearest[i]}, {LR_COLUMN: float(near_psnr[i])}) for i, t in enumerate(ids)}
    lr_batch = _nchw(lr)
    for column, net in nets.items():
        if net is None:  # not applicable to this scale
            for t in ids:
                out[t][0][column], out[t][1][column] = None, None
            continue
        sr = super_resolve(net, lr_batch, channels_last=kw["channels_last"])
        values, images = reference.score(sr)["psnr"], _to_uint8(sr)
        for i, t in enumerate(ids):
            out[t][0][column], out[t][1][column] = images[i], float(values[i])
    for i, t in enumerate(ids):
        out[t][0][HR_COLUMN], out[t][1][HR_COLUMN] = hr[i], None
    return out


def picture_rows(
    tiles: Mapping[str, tuple[np.ndarray, ...]],
    orders: Sequence[Sequence[tuple[str, str]]],
    *,
    models: Sequence[ResolvedModel],
    scale: int,
    crop_border: int,
    channels_last: bool = False,
) -> list[list[PictureRow]]:
    """For each order (a list of `(tile_id, label)`), a `PictureRow` per entry found in `tiles`: every column's
    image and PSNR (models of another scale: None). Each tile is computed once, in batches of equal sizes."""
    nets: dict[str, object] = {}
    for column in picture_columns(models)[1:-1]:
        m = next((m for m in models if m.name == column), None)
        if m is not None and not m.applies_to(scale):
            nets[column] = None
        else:
            nets[column] = (m.model if m is not None and m.model is not None else build_model(BICUBIC, scale)).eval()
    wanted = list(dict.fromkeys(t for order in orders for t, _ in order if t in tiles))
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for t in wanted:
        by_shape.setdefault(tiles[t][0].shape, []).append(t)
    computed: dict[str, tuple[dict, dict]] = {}
    kw = {"crop_border": crop_border, "channels_last": channels_last}
    for ids in by_shape.values():
        computed |= _columns_of(tiles, ids, nets, kw=kw)
    return [
        [
            PictureRow(label, t, images=computed[t][0], psnr=computed[t][1], box=_zoom_box(tiles[t][0]))
            for t, label in order
            if t in computed
        ]
        for order in orders
    ]


def picture_size(n_rows: int, n_columns: int, cell: int) -> tuple[int, int]:
    """`(height, width)` in pixels of a picture of `n_rows` rows and `n_columns` columns of `cell`-pixel images."""
    return HEADER + n_rows * (LABEL + 2 * cell + CAPTION + PAD) + PAD, PAD + n_columns * (cell + PAD)


def _put(canvas: np.ndarray, text: str, x: int, y: int, width: int) -> None:
    """Black text with its baseline at `y`, cut to fit `width` pixels."""
    while text and cv2.getTextSize(text, _FONT, _TEXT, 1)[0][0] > width:
        text = text[:-1]
    cv2.putText(canvas, text, (x, y), _FONT, _TEXT, (0, 0, 0), 1, cv2.LINE_AA)


def _fit(img: np.ndarray, cell: int, interpolation: int) -> np.ndarray:
    """`img` scaled to fit a `cell` square (aspect kept, centred on white)."""
    h, w = img.shape[:2]
    f = cell / max(h, w)
    nh, nw = max(1, round(h * f)), max(1, round(w * f))
    out = np.full((cell, cell, 3), 255, np.uint8)
    y0, x0 = (cell - nh) // 2, (cell - nw) // 2
    out[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(img, (nw, nh), interpolation=interpolation)
    return out


def _draw_cell(canvas: np.ndarray, row: PictureRow, column: str, x0: int, y0: int, cell: int) -> None:
    img = row.images.get(column)
    if img is None:  # not applicable: grey, said so
        canvas[y0 : y0 + 2 * cell, x0 : x0 + cell] = 220
        _put(canvas, "n/a (scale)", x0 + 6, y0 + cell, cell - 8)
        return
    y, x, side = row.box
    h, w = img.shape[:2]
    full = _fit(img, cell, cv2.INTER_AREA)
    f = cell / max(h, w)
    oy, ox = (cell - round(h * f)) // 2, (cell - round(w * f)) // 2
    p0 = (ox + int(x * f), oy + int(y * f))
    cv2.rectangle(full, p0, (ox + int((x + side) * f) - 1, oy + int((y + side) * f) - 1), _BOX, 1)
    canvas[y0 : y0 + cell, x0 : x0 + cell] = full
    canvas[y0 + cell : y0 + 2 * cell, x0 : x0 + cell] = _fit(img[y : y + side, x : x + side], cell, cv2.INTER_NEAREST)
    psnr = row.psnr.get(column)
    caption = "reference" if column == HR_COLUMN else f"{psnr:.2f} dB" if psnr is not None else ""
    _put(canvas, caption, x0 + 2, y0 + 2 * cell + CAPTION - 5, cell)


def render_picture(rows: Sequence[PictureRow], columns: Sequence[str], *, cell: int) -> np.ndarray:
    """The picture: column names on top; per row its label, then every column's whole tile (zoom box drawn),
    its magnified square below, and its PSNR; `picture_size(len(rows), len(columns), cell)` pixels."""
    height, width = picture_size(len(rows), len(columns), cell)
    canvas = np.full((height, width, 3), 255, np.uint8)
    for c, name in enumerate(columns):
        _put(canvas, name, PAD + c * (cell + PAD) + 2, HEADER - 6, cell)
    for r, row in enumerate(rows):
        top = HEADER + r * (LABEL + 2 * cell + CAPTION + PAD)
        _put(canvas, row.label, PAD + 2, top + LABEL - 5, width - 2 * PAD)
        for c, name in enumerate(columns):
            _draw_cell(canvas, row, name, PAD + c * (cell + PAD), top + LABEL, cell)
    return canvas


def comparison_pictures(
    datasets: Sequence[DatasetView],
    models: Sequence[ResolvedModel],
    per_image: pd.DataFrame,
    *,
    count: int,
    seed: int,
    cell: int,
    gain_tiles: bool,
    channels_last: bool = False,
) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """`({artifact: picture}, summary)` for a comparison run: `compare_tiles.png` (every dataset's chosen tiles,
    grouped by dataset) and `gain_tiles.png`; with several datasets also `compare_tiles/<dataset>.png`, and the
    gain tiles as `gain_tiles/<dataset>.png` instead. The summary names each dataset's tiles and every image's
    PSNR (`compare_tiles.json`)."""
    columns = picture_columns(models)
    fixed: list[PictureRow] = []
    gains: list[PictureRow] = []
    pictures: dict[str, np.ndarray] = {}
    summary: dict[str, object] = {"seed": seed, "columns": columns, "datasets": {}}
    for d in datasets:
        scored = per_image[per_image["dataset"] == d.name]
        chosen = choose_tiles(scored["tile_id"].tolist(), count=count, seed=seed)
        extremes = gain_extremes(scored, [m.name for m in models]) if gain_tiles else []
        tiles = load_tiles(d.shards, d.split, d.scale, [*chosen, *(t for _, _, t, _ in extremes)])
        sources = {t: tiles[t][2] for t in tiles}
        order = [(t, f"{d.name} x{d.scale} | {sources.get(t, '?')} | tile {t[:12]}") for t in chosen]
        gain_order = [
            (t, f"{d.name} | {name} {kind} vs bicubic: {gain:+.2f} dB | {sources.get(t, '?')} | tile {t[:12]}")
            for name, kind, t, gain in extremes
        ]
        rows, gain_rows = picture_rows(
            tiles, [order, gain_order], models=models, scale=d.scale, crop_border=d.crop_border,
            channels_last=channels_last,
        )  # fmt: skip
        if len(datasets) > 1:  # per dataset too; gain tiles only per dataset (2 rows per model each)
            if rows:
                pictures[f"compare_tiles/{d.name}.png"] = render_picture(rows, columns, cell=cell)
            if gain_rows:
                pictures[f"gain_tiles/{d.name}.png"] = render_picture(gain_rows, columns, cell=cell)
        fixed += rows
        gains += gain_rows
        summary["datasets"][d.name] = {  # type: ignore[index]
            "tiles": [r.tile_id for r in rows],
            "psnr": {r.tile_id: r.psnr for r in rows},
            "gain_tiles": [{"model": n, "kind": k, "tile_id": t, "gain_psnr": g} for n, k, t, g in extremes],
        }
    if fixed:
        pictures["compare_tiles.png"] = render_picture(fixed, columns, cell=cell)
    if gains and len(datasets) == 1:
        pictures["gain_tiles.png"] = render_picture(gains, columns, cell=cell)
    return pictures, summary
