"""The shard folder against its manifest, before any Ray work: training and evaluation read exactly the files
`OUT/_manifest.json` lists, so every way the folder can have drifted from it is found first, in one error.

- From one listing of the folder (every split): a listed file that is missing or whose size differs from the
  manifest's `bytes` (truncated, rewritten), and a `*.parquet` under `split=*/` that the manifest does not list
  (a stale slide, a file dropped in by hand). Names starting with `.` or `_` are not shards: Parquet readers
  skip them, and so does this check.
- From the Parquet footer of every listed file of the splits about to be read: unreadable (truncated), a row
  count that differs from the manifest's `rows`, no column that training and evaluation read (`hr`,
  `lr_x<scale>`, `tile_id`, `source_id`), or rows without an `lr_x<scale>` image (tiled without that scale).

The files' content hashes (`sha256`) are not recomputed: that reads every byte of the dataset, while size,
footer and row count catch truncated and replaced files for one listing and one footer read per file.
A folder without `_manifest.json` (a run that did not finish, a folder from before the manifest listed its
files, hand-made shards) is refused with a message that names it: there is no glob fallback.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from srtn import storage
from srtn.data.manifest import LEGACY_MANIFEST_NAME, MANIFEST_NAME, listed_files, read_manifest
from srtn.data.schema import lr_column
from srtn.data.shards import existing_shards
from srtn.errors import ShardError
from srtn.vocab import SPLITS

__all__ = ["REQUIRED_COLUMNS", "check_shards", "load_listing"]

REQUIRED_COLUMNS: tuple[str, ...] = ("hr", "tile_id", "source_id")  # plus lr_x<scale>
_RETILE = (
    "re-run `srtn tile` (or `srtn breakhis`) with output={folder}: it redoes what is missing or changed and"
    " removes what its manifest does not list"
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _refuse(folder: str, message: str, uri: str) -> ShardError:
    return ShardError(f"{message}; {_RETILE.format(folder=folder)}", path=folder, problems={uri: [message]})


def load_listing(shards: str) -> dict[str, Any]:
    """The folder's manifest, refused (`ShardError` naming the path) when the folder or its `_manifest.json`
    is missing, unreadable or lists no files (`files`, written since issue 15)."""
    uri = storage.join(shards, MANIFEST_NAME)
    if not storage.exists(shards):
        raise ShardError(f"shard folder {shards} does not exist", path=shards, problems={shards: ["does not exist"]})
    if not storage.exists(uri):
        legacy = storage.exists(storage.join(shards, LEGACY_MANIFEST_NAME))
        why = f"it has the {LEGACY_MANIFEST_NAME} of an older srtn" if legacy else "an unfinished or hand-made folder"
        raise _refuse(shards, f"shard folder {shards} has no {MANIFEST_NAME} ({why})", uri)
    try:
        manifest = read_manifest(shards)
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _refuse(shards, f"{uri} cannot be read: {_first_line(exc)}", uri) from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise _refuse(shards, f"{uri} does not list the shard files (no 'files')", uri)
    return manifest


def _lr_nulls(parquet: Any, index: int) -> int:
    """Null count of one column: from the row-group statistics, else (written without them) the column."""
    meta = parquet.metadata
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    stats = [g.column(index).statistics for g in groups]
    if all(st is not None and st.has_null_count for st in stats):
        return sum(st.null_count for st in stats)
    name = meta.schema.column(index).name
    return parquet.read(columns=[name]).column(name).null_count


def _footer_problems(uri: str, entry: Mapping[str, Any], scale: int) -> tuple[list[str], bool]:
    """What is wrong with one listed file, read from its footer; and whether it is only the LR scale."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    col = lr_column(scale)
    fs, path = storage.resolve(uri)
    try:
        with fs.open_input_file(path) as f:
            parquet = pq.ParquetFile(f)
            rows, names = parquet.metadata.num_rows, parquet.schema_arrow.names
            missing = [c for c in (*REQUIRED_COLUMNS, col) if c not in names]
            nulls = _lr_nulls(parquet, parquet.metadata.schema.names.index(col)) if col in names and rows else 0
    except (OSError, pa.ArrowException) as exc:
        return [f"unreadable Parquet footer ({_first_line(exc)})"], False
    wrong = []
    if rows != entry.get("rows"):
        wrong.append(f"{rows} rows, the manifest says {entry.get('rows')}")
    if missing:
        wrong.append(f"no column {', '.join(missing)}")
    if nulls == rows and rows:
        wrong.append(f"holds no {col} images: made without scale {scale}")
    elif nulls:
        wrong.append(f"{nulls} of {rows} rows have no {col} image")
    only_scale = rows == entry.get("rows") and (not missing or missing == [col])
    return wrong, only_scale


def _listing_problems(listed: Sequence[Mapping[str, Any]], on_disk: Mapping[str, int]) -> dict[str, list[str]]:
    """Missing, resized and unlisted files, from one listing of the folder."""
    problems: dict[str, list[str]] = {}
    names = {e["path"] for e in listed}
    for entry in listed:
        size = on_disk.get(entry["path"])
        if size is None:
            problems[entry["path"]] = [f"missing (listed with {entry.get('rows')} rows)"]
        elif size != entry.get("bytes"):
            problems[entry["path"]] = [f"{size} bytes, the manifest says {entry.get('bytes')}: truncated or rewritten"]
    for path in sorted(set(on_disk) - names):
        if not path.rsplit("/", 1)[-1].startswith((".", "_")):
            problems[path] = ["not listed in the manifest (a stale or foreign file)"]
    return problems


def check_shards(shards: str, scale: int, *, splits: Sequence[str] = ("train", "val")) -> dict[str, list[str]]:
    """Check the shard folder against its manifest for reading `splits` at `scale`; return `{split: [uri]}`
    of the listed files (sorted). Raises one `ShardError` (a `ConfigError`: `key` is `data.scale` when the
    only trouble is the LR scale, else `data.shards`) naming every bad file and what is wrong with it, and
    any split without files, before any Ray or MLflow work."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; expected some of {SPLITS}")
    manifest = load_listing(shards)
    listed = listed_files(manifest)
    problems = _listing_problems(listed, existing_shards(shards))
    scale_only = [False] if problems else []  # listing problems are never about the scale
    files: dict[str, list[str]] = {}
    for split in splits:
        entries = [e for e in listed if e["split"] == split]
        if not entries:
            counts = {s: sum(1 for e in listed if e["split"] == s) for s in SPLITS}
            problems[f"split={split}/"] = [f"no {split} files listed (files per split: {counts})"]
            scale_only.append(False)
        for entry in entries:
            if entry["path"] in problems:
                continue  # missing or resized: its footer says nothing more
            wrong, only = _footer_problems(storage.join(shards, *entry["path"].split("/")), entry, scale)
            if wrong:
                problems[entry["path"]] = wrong
                scale_only.append(only)
        files[split] = [storage.join(shards, *e["path"].split("/")) for e in entries]
    if problems:
        raise _shard_error(shards, problems, scale=scale if all(scale_only) else None)
    return files


def _shard_error(folder: str, problems: Mapping[str, list[str]], *, scale: int | None) -> ShardError:
    """One error for every bad file; `scale` when the LR scale is all that is wrong (key `data.scale`)."""
    lines = [f"  {path}: {'; '.join(what)}" for path, what in problems.items()]
    hint = _RETILE.format(folder=folder)
    if scale is not None:
        hint = (
            f"set data.scale to a scale the shards hold, or make them again with {scale} in lr.scales"
            " (srtn tile) or matching.scale (srtn breakhis)"
        )
    message = (
        f"shard folder {folder} does not match its {MANIFEST_NAME} ({len(problems)} bad file(s)):\n"
        + "\n".join(lines)
        + f"\n{hint}"
    )
    uris = {storage.join(folder, *p.rstrip("/").split("/")): list(w) for p, w in problems.items()}
    return ShardError(message, path=folder, problems=uris, key="data.shards" if scale is None else "data.scale")
