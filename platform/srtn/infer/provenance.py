"""What made an SR slide, written into the file itself and read back through OpenSlide.

Every output TIFF of `srtn predict` carries its provenance in the Aperio-style image description
(`srtn.pyramid`, flavour `aperio`), which OpenSlide parses into slide properties: the field `srtn.model_uri`
is `openslide.OpenSlide(out).properties["aperio.srtn.model_uri"]`. `read_provenance(path)` returns them
without the prefix. Values are text; the characters the Aperio format reserves (`|`, `=`, newlines) and `%`
are percent-encoded, so any path or URI survives (`read_provenance` decodes them).

Fields (`FIELDS`): the model as given and pinned to one version, its name and architecture, the scale, the
srtn version and git commit of the code, the source slide, the level and region read (level-0 `X,Y,W,H`),
the tiling of the input and the fingerprint of all settings that change pixels (what resume compares).
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

__all__ = ["FIELDS", "PREFIX", "PROPERTY_PREFIX", "encode", "fingerprint", "provenance_fields", "read_provenance"]

PREFIX = "srtn."
PROPERTY_PREFIX = "aperio." + PREFIX  # what OpenSlide calls a field of the Aperio description
FIELDS = (
    "model_uri",
    "model_pinned",
    "model_version",
    "model_name",
    "model_arch",
    "scale",
    "srtn_version",
    "git_commit",
    "source",
    "level",
    "region",
    "tile_size",
    "overlap",
    "settings",
)
_SAFE = "".join(sorted(set(map(chr, range(32, 127))) - set("|=%")))  # printable ASCII but the reserved ones


def encode(value: Any) -> str:
    """A field value as Aperio-safe text (reserved characters and non-ASCII percent-encoded)."""
    if isinstance(value, dict):
        value = json.dumps(value, sort_keys=True)
    text = value if isinstance(value, str) else str(value)
    return urllib.parse.quote(text, safe=_SAFE)


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings that change an output's pixels (JSON, sorted keys)."""
    return hashlib.sha256(json.dumps(dict(settings), sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance_fields(
    *,
    model: Mapping[str, Any],
    source: str,
    level: int,
    region: tuple[int, int, int, int],
    tile_size: int,
    overlap: int,
    settings: str,
    code: Mapping[str, Any],
) -> dict[str, str]:
    """The description fields (`srtn.<field>` keys, encoded values) of one output.

    `model` holds `uri`, `pinned`, `version`, `name`, `arch`, `scale`; `code` holds `srtn_version` and
    `git_commit`; `settings` is the fingerprint of the pixel-changing settings.
    """
    values: dict[str, Any] = {
        "model_uri": model["uri"],
        "model_pinned": model["pinned"],
        "model_version": model.get("version") or "",
        "model_name": model.get("name") or "",
        "model_arch": model.get("arch") or "",
        "scale": model["scale"],
        "srtn_version": code.get("srtn_version") or "",
        "git_commit": code.get("git_commit") or "unknown",
        "source": source,
        "level": level,
        "region": ",".join(str(int(v)) for v in region),
        "tile_size": tile_size,
        "overlap": overlap,
        "settings": settings,
    }
    return {f"{PREFIX}{k}": encode(values[k]) for k in FIELDS}


def read_provenance(path: str) -> dict[str, str]:
    """The provenance fields of an SR slide (keys without prefix, values decoded), read through OpenSlide."""
    import openslide

    with openslide.OpenSlide(path) as slide:
        props = dict(slide.properties)
    n = len(PROPERTY_PREFIX)
    return {k[n:]: urllib.parse.unquote(v) for k, v in props.items() if k.startswith(PROPERTY_PREFIX)}
