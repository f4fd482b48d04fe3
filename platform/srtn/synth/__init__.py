"""Synthetic data for tests, demos and benchmarks: H&E-like whole slides with TCGA-style names and
BreakHis-like trees. `srtn.synth.shards` (tile shards) is imported on its own: it pulls in pyarrow."""

from srtn.synth.artefacts import ArtefactSlide, BlurRegion, InkStroke, region_shares
from srtn.synth.breakhis import write_breakhis_tree
from srtn.synth.render import SyntheticSlide
from srtn.synth.tcga import (
    APERIO_LAYOUT,
    LAYOUTS,
    SRTN_LAYOUT,
    SlideSpec,
    read_regions,
    regions_path,
    render_slide,
    tcga_slide_specs,
    write_tcga_dataset,
    write_tcga_slide,
)

__all__ = [
    "APERIO_LAYOUT",
    "LAYOUTS",
    "SRTN_LAYOUT",
    "ArtefactSlide",
    "BlurRegion",
    "InkStroke",
    "SlideSpec",
    "SyntheticSlide",
    "read_regions",
    "region_shares",
    "regions_path",
    "render_slide",
    "tcga_slide_specs",
    "write_breakhis_tree",
    "write_tcga_dataset",
    "write_tcga_slide",
]
