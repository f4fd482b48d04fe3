"""Deterministic 8:1:1 split by group (patient, slide, TCGA tissue source site or spatial block).

The split of a group depends only on its id, so adding slides never moves an existing slide to
another split, and tiles of one patient never land in two splits (the original's leakage). Split by site
(`site_group`), val and test hold only sites that training never saw: the test of whether a model carries
over to other labs and scanners. The ratios then count sites, not tiles: a large site moves many tiles
at once (`split.salt` draws another assignment).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from srtn.data.barcodes import site_from_name
from srtn.errors import ConfigError
from srtn.vocab import SPLITS

__all__ = ["split_fraction", "assign_split", "spatial_block_id", "site_group", "site_groups", "DEFAULT_RATIOS"]

DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def split_fraction(group_id: str, *, salt: str = "") -> float:
    """A uniform number in [0, 1) fixed by the group id."""
    digest = hashlib.sha256(f"{salt}{group_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(group_id: str, ratios: Sequence[float] = DEFAULT_RATIOS, *, salt: str = "") -> str:
    """`train`, `val` or `test` for a group, from its id alone."""
    if len(ratios) != 3 or any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be three non-negative numbers, got {list(ratios)}")
    total = float(sum(ratios))
    u = split_fraction(group_id, salt=salt) * total
    if u < ratios[0]:
        return SPLITS[0]
    if u < ratios[0] + ratios[1]:
        return SPLITS[1]
    return SPLITS[2]


def spatial_block_id(source_id: str, x: int, y: int, block_size: int) -> str:
    """Group id of a square block of a slide (level-0 pixels), for single-slide datasets.

    Neighbouring tiles overlap in content; splitting by blocks instead of by tile keeps near-duplicates
    out of different splits.
    """
    if block_size <= 0:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return f"{source_id}#b{x // block_size}_{y // block_size}"


def site_group(name: str) -> str | None:
    """Group id of a slide split by site: ``TCGA-<TSS>`` (``TCGA-A3`` for ``TCGA-A3-3306-01Z-...svs``), the
    same for every slide of that site; None for a name without a TCGA patient barcode."""
    site = site_from_name(name)
    return f"TCGA-{site}" if site else None


def site_groups(names: Sequence[str], *, key: str = "split.by") -> dict[str, str]:
    """`site_group` of every name, or a `ConfigError` (naming `key`) that lists the names without a TCGA
    barcode: a slide with no site cannot be kept out of training's sites, so it is refused before any work."""
    groups = {n: site_group(n) for n in names}
    missing = [n for n, g in groups.items() if g is None]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ConfigError(
            f"split.by: site needs TCGA barcodes (TCGA-<site>-<participant>...) in slide names; "
            f"{len(missing)} of {len(groups)} have none: {shown}",
            key=key,
        )
    return {n: g for n, g in groups.items() if g is not None}
