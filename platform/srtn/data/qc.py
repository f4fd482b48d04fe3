"""The visual QC report of a tiling run: pictures of what was cut, under `OUT/_qc/` (Parquet readers skip `_`).

Why: the manifest counts rejections; only a picture shows whether the tissue mask found the tissue, whether
the kept tiles are tissue and what each filter threw away. Per slide (`write_slide_qc`, in the slide's task,
where the slide is local):
- `_qc/<slide>.png`: the slide's thumbnail with the tissue-mask outline, kept tiles as boxes coloured by
  split and rejected candidates as shaded boxes coloured by reason, and a panel with the counts;
- `_qc/<slide>.thumb.jpg`: the plain thumbnail the index shows.
A slide that cannot be opened gets a card with its reason instead. `write_qc_index` (`srtn.data.qc_index`)
lists every slide in `_qc/index.html`, a static page that opens from the file system with no server and no
network. Everything is written through `srtn.storage`, so `OUT` may be `s3://`.
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import openslide
from PIL import Image, ImageDraw, ImageFont

from srtn import storage
from srtn.data.shards import safe_name
from srtn.data.slides import open_slide, tissue_mask
from srtn.errors import SlideError
from srtn.vocab import SPLITS

__all__ = [
    "QC_DIR",
    "SPLIT_COLOURS",
    "REASON_COLOURS",
    "TileMarks",
    "qc_files",
    "render_slide_qc",
    "render_card",
    "write_slide_qc",
    "write_slide_card",
]

QC_DIR = "_qc"
SPLIT_COLOURS: dict[str, tuple[int, int, int]] = {
    "train": (31, 119, 180),
    "val": (255, 127, 14),
    "test": (148, 103, 189),
}
REASON_COLOURS: dict[str, tuple[int, int, int]] = {
    "too_white": (190, 190, 190),
    "too_black": (30, 30, 30),
    "low_std": (140, 86, 75),
    "pen_ink": (227, 119, 194),
    "out_of_focus": (214, 39, 40),
    "read_error": (188, 189, 34),
}
_OTHER = (127, 127, 127)  # a reason without its own colour
_OUTLINE = (0, 170, 170)  # tissue-mask outline
_PANEL_W = 320
_THUMB_INDEX = 256  # longest side of the index's thumbnails


@dataclass(frozen=True)
class TileMarks:
    """What the picture draws for one slide, all in level-0 pixels: `size0` is a tile's side, `kept` holds
    (x, y, split) of every kept tile and `rejected` (x, y, reason) of every decoded candidate a filter
    rejected (the tiling job records both)."""

    size0: int
    kept: Sequence[tuple[int, int, str]] = field(default_factory=list)
    rejected: Sequence[tuple[int, int, str]] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TileMarks:
        """From ``{"size0": int, "kept": [[x, y, split], ...], "rejected": [[x, y, reason], ...]}``."""
        kept = [(int(x), int(y), str(s)) for x, y, s in data.get("kept", [])]
        rejected = [(int(x), int(y), str(r)) for x, y, r in data.get("rejected", [])]
        return cls(size0=int(data["size0"]), kept=kept, rejected=rejected)

    @classmethod
    def from_visits(cls, size0: int, visits: Sequence[tuple[int, int, str, bool]]) -> TileMarks:
        """From the tiling's ordered visits `(x, y, split or reason, kept)` (`tile_slide.SlideResult.visits`)."""
        kept = [(x, y, label) for x, y, label, is_kept in visits if is_kept]
        rejected = [(x, y, label) for x, y, label, is_kept in visits if not is_kept]
        return cls(size0=size0, kept=kept, rejected=rejected)

    def to_json(self) -> dict[str, Any]:
        return {"size0": self.size0, "kept": [list(k) for k in self.kept], "rejected": [list(r) for r in self.rejected]}


def qc_files(source_id: str) -> dict[str, str]:
    """Paths relative to OUT of one slide's QC picture (`png`) and index thumbnail (`thumb`)."""
    name = safe_name(source_id)
    return {"png": f"{QC_DIR}/{name}.png", "thumb": f"{QC_DIR}/{name}.thumb.jpg"}


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable built-in font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _thumbnail_and_mask(
    path: str, max_size: int, tissue: Mapping[str, Any], mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, float]:
    """RGB thumbnail (longest side <= max_size), the tissue mask resized onto it, and level-0 px per thumb px."""
    with open_slide(path) as slide:
        w0 = slide.dimensions[0]
        thumb = np.asarray(slide.get_thumbnail((max_size, max_size)).convert("RGB"))
        if mask is None:
            mask, _ = tissue_mask(slide, **tissue)
    th, tw = thumb.shape[:2]
    mask_small = cv2.resize(mask.astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST)
    return thumb, mask_small, w0 / tw


def _draw_marks(img: Image.Image, mask: np.ndarray, marks: TileMarks | None, scale: float) -> Image.Image:
    """Tissue outline, shaded rejected candidates, outlined kept tiles (in that order: kept boxes on top)."""
    base = img.convert("RGBA")
    shade = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(shade)
    side = max(2.0, (marks.size0 if marks else 0) / scale)
    for x, y, reason in marks.rejected if marks else ():
        x0, y0 = x / scale, y / scale
        colour = REASON_COLOURS.get(reason, _OTHER)
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], fill=(*colour, 110), outline=(*colour, 255))
    out = Image.alpha_composite(base, shade).convert("RGB")
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    arr = np.array(out)
    cv2.drawContours(arr, contours, -1, _OUTLINE, 1)
    out = Image.fromarray(arr)
    draw = ImageDraw.Draw(out)
    width = 2 if side >= 8 else 1
    for x, y, split in marks.kept if marks else ():
        x0, y0 = x / scale, y / scale
        draw.rectangle([x0, y0, x0 + side - 1, y0 + side - 1], outline=SPLIT_COLOURS.get(split, _OTHER), width=width)
    return out


def _panel_lines(record: Mapping[str, Any], *, outline: bool) -> list[tuple[str, tuple[int, int, int] | None]]:
    """Text lines of the side panel, each with the colour of its legend swatch (None: no swatch)."""
    lines: list[tuple[str, tuple[int, int, int] | None]] = [
        (f"status: {record.get('status', '?')}", None),
        (f"kept {record.get('kept', 0)} of {record.get('seen', 0)} decoded", None),
    ]
    counts = record.get("split_counts", {})
    lines += [(f"{s}: {counts.get(s, 0)}", SPLIT_COLOURS[s]) for s in SPLITS]
    for reason, n in sorted(record.get("rejected", {}).items()):
        lines.append((f"{reason}: {n}", REASON_COLOURS.get(reason, _OTHER)))
    note = record.get("error") or record.get("warning")
    if note:
        lines += [(part, None) for part in textwrap.wrap(str(note), 40)[:8]]
    if outline:
        lines.append(("outline: tissue mask", _OUTLINE))
    return lines


def _with_panel(picture: Image.Image, record: Mapping[str, Any], *, outline: bool = True) -> Image.Image:
    """`picture` with a panel on its right: the slide's id, status, counts by split and reason, its note."""
    title_font, font = _font(16), _font(13)
    lines = _panel_lines(record, outline=outline)
    height = max(picture.height, 40 + 18 * len(lines) + 10)
    canvas = Image.new("RGB", (picture.width + _PANEL_W, height), (255, 255, 255))
    canvas.paste(picture, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = picture.width + 12
    draw.text(
        (x, 10),
        textwrap.shorten(str(record.get("source_id", "?")), 36, placeholder="..."),
        fill=(0, 0, 0),
        font=title_font,
    )
    for i, (text, colour) in enumerate(lines):
        y = 40 + 18 * i
        if colour is not None:
            draw.rectangle([x, y + 2, x + 11, y + 13], fill=colour)
        draw.text((x + (18 if colour is not None else 0), y), text, fill=(0, 0, 0), font=font)
    return canvas


def render_card(why: str, *, width: int = 480, height: int = 240) -> Image.Image:
    """A stand-in picture for a slide with no thumbnail (it cannot be opened or read): a grey card saying why."""
    card = Image.new("RGB", (width, height), (235, 235, 235))
    draw = ImageDraw.Draw(card)
    draw.text((16, 16), "no thumbnail", fill=(90, 90, 90), font=_font(18))
    for i, part in enumerate(textwrap.wrap(why, 56)[:9]):
        draw.text((16, 50 + 18 * i), part, fill=(160, 30, 30), font=_font(13))
    return card


def render_slide_qc(
    slide_path: str,
    record: Mapping[str, Any],
    marks: TileMarks | None,
    *,
    tissue: Mapping[str, Any] | None = None,
    mask: np.ndarray | None = None,
    max_size: int = 1024,
) -> tuple[Image.Image, Image.Image]:
    """The QC picture of one slide and its plain thumbnail (both PIL RGB images).

    `slide_path` is a local file; `record` the slide's manifest record (status, kept, seen, split_counts,
    rejected, warning or error); `marks` its tiles (None: none recorded, e.g. a failed slide); `tissue` the
    keyword arguments of `srtn.data.slides.tissue_mask` the job used (``target_size``, ``min_saturation``,
    ``max_gray``), or `mask` the boolean mask it computed (then not computed again). A slide that cannot be
    opened gives a card with the reason it failed and no thumbnail.
    """
    try:
        thumb, mask, scale = _thumbnail_and_mask(slide_path, max_size, dict(tissue or {}), mask)
    except (SlideError, openslide.OpenSlideError, OSError, cv2.error, ValueError) as exc:
        card = render_card(getattr(exc, "reason", None) or str(exc))
        return _with_panel(card, record, outline=False), card
    plain = Image.fromarray(thumb)
    picture = _draw_marks(plain, mask, marks, scale)
    small = plain.copy()
    small.thumbnail((_THUMB_INDEX, _THUMB_INDEX))
    return _with_panel(picture, record), small


def _encode(img: Image.Image, fmt: str) -> bytes:
    """JPEG (quality 85) or a 256-colour PNG: a third of the bytes of full colour, as readable."""
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=85)
    else:
        img.quantize(256, method=Image.Quantize.FASTOCTREE).save(buf, format="PNG")
    return buf.getvalue()


def write_slide_qc(
    output: str,
    slide_path: str,
    record: Mapping[str, Any],
    marks: TileMarks | None,
    *,
    tissue: Mapping[str, Any] | None = None,
    mask: np.ndarray | None = None,
    max_size: int = 1024,
) -> dict[str, str]:
    """Render one slide's QC picture and thumbnail (`render_slide_qc`) and write them under `OUT/_qc/`;
    returns their paths relative to `output` (`qc_files`), for the slide's record. Raises `OSError` when the
    store refuses the write."""
    picture, thumb = render_slide_qc(slide_path, record, marks, tissue=tissue, mask=mask, max_size=max_size)
    files = qc_files(str(record["source_id"]))
    storage.write_bytes(storage.join(output, *files["png"].split("/")), _encode(picture, "PNG"))
    storage.write_bytes(storage.join(output, *files["thumb"].split("/")), _encode(thumb, "JPEG"))
    return files


def write_slide_card(output: str, record: Mapping[str, Any], why: str) -> dict[str, str]:
    """Write a card picture and thumbnail saying `why` a slide has no QC picture (`qc_files` paths, returned)."""
    card = render_card(why)
    files = qc_files(str(record["source_id"]))
    storage.write_bytes(
        storage.join(output, *files["png"].split("/")), _encode(_with_panel(card, record, outline=False), "PNG")
    )
    storage.write_bytes(storage.join(output, *files["thumb"].split("/")), _encode(card, "JPEG"))
    return files
