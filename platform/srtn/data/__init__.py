"""Stage 1, slides to tile shards: open slides (`slides`), filter tiles (`quality`), cut one slide
(`tile_slide`, no Ray), run the Ray Data job (`tile_job`); the one Parquet schema (`schema`), shard files
(`shards`), the manifest (`manifest`), splits and TCGA barcodes; the shard reader that training and
evaluation share (`reader`); BreakHis real-LR pairs (`breakhis/`)."""

from srtn.exports import lazy_exports

__all__, __getattr__ = lazy_exports(
    __name__,
    {
        "TILE_SCHEMA": "schema",
        "decode_png": "schema",
        "encode_png": "schema",
        "lr_column": "schema",
        "tile_id": "schema",
        "SlideInfo": "slides",
        "open_slide": "slides",
        "slide_info": "slides",
        "downsample": "quality",
        "rejection_reason": "quality",
        "tile_slide": "tile_slide",
        "run_tiling": "tile_job",
        "read_manifest": "manifest",
        "shard_files": "shards",
        "assign_split": "splits",
        "patient_from_name": "barcodes",
        "check_shards": "reader",
        "read_split": "reader",
        "decode_eval_batch": "reader",
        "read_split_table": "reader",
        "listed_files": "manifest",
        "blur_effect": "quality",
        "ink_fraction": "quality",
        "CALIBRATED_THRESHOLDS": "quality",
        "site_from_name": "barcodes",
        "site_groups": "splits",
        "TileMarks": "qc",
        "write_slide_qc": "qc",
        "write_qc_index": "qc_index",
    },
)
