"""Where a cohort's slides come from and where its outputs go, checked before any work.

Slides: a folder or `s3://` prefix (searched recursively for slide extensions), a `.txt`/`.lst` list of
paths or URIs (one a line, `#` comments, relative paths from the list's folder), one slide, or a YAML list
of any of these. A slide's id is its path relative to the folder it was found in (its file name for a list
entry), without the extension, folders joined by `__`: the tiling job's ids (`srtn.data.inputs.slide_id`),
safe file names that never collide after sanitising and never depend on which other slides exist. Two
entries with one id are a `ConfigError` naming both.

Outputs: `out_dir` (local or `s3://`) must be creatable and writable and not a file. A TIFF for `s3://`
is written locally first and uploaded only when complete (`publish`).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

import pyarrow.fs as pafs

from srtn import storage
from srtn.config.tile import SLIDE_EXTENSIONS
from srtn.data.inputs import slide_id
from srtn.errors import ConfigError

__all__ = ["check_out_dir", "list_cohort", "publish"]


def _list_file(entry: str) -> list[tuple[str, str]]:
    base = entry.rsplit("/", 1)[0] if storage.is_remote(entry) else str(Path(entry).parent)
    out = []
    for line in storage.read_bytes(entry).decode().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            uri = line if storage.is_remote(line) or Path(line).is_absolute() else storage.join(base, line)
            out.append((uri, storage.basename(uri)))
    return out


def _entries(entry: str, extensions: Sequence[str], exclude: str | None) -> list[tuple[str, str]]:
    """(uri, relative name) of every slide `entry` names (none under `exclude`: the cohort's own outputs)."""
    if not entry.strip():
        raise ConfigError("slides is empty: give a folder, an s3:// prefix, a .txt list or a slide", key="slides")
    try:
        fs, path = storage.resolve(entry)
        kind = fs.get_file_info(path).type
    except (OSError, ValueError) as exc:
        raise ConfigError(f"slides {entry!r} cannot be read: {exc}", key="slides", path=entry) from exc
    if kind == pafs.FileType.NotFound:
        raise ConfigError(f"slides {entry!r} does not exist", key="slides", path=entry)
    if kind == pafs.FileType.Directory:
        found = storage.list_files(entry, extensions=extensions)
        found = [u for u in found if not exclude or not u.startswith(exclude)]
        prefix = f"s3://{path}/" if entry.startswith("s3://") else f"{path}/"
        return [(uri, uri[len(prefix) :] if uri.startswith(prefix) else storage.basename(uri)) for uri in found]
    if entry.endswith((".txt", ".lst")):
        return _list_file(entry)
    uri = entry if storage.is_remote(entry) else path
    return [(uri, storage.basename(uri))]


def list_cohort(
    slides: str | Sequence[str], *, extensions: Sequence[str] = SLIDE_EXTENSIONS, out_dir: str | None = None
) -> list[tuple[str, str]]:
    """`(uri, slide id)` of every slide of the cohort, in input order, none from inside `out_dir`; `ConfigError`
    before any work when the input is missing, names no slide, or two slides would get one id."""
    entries = [slides] if isinstance(slides, str) else list(slides)
    exclude = None
    if out_dir:
        exclude = out_dir.rstrip("/") + "/" if storage.is_remote(out_dir) else storage.resolve(out_dir)[1] + os.sep
    found: list[tuple[str, str]] = []
    for entry in entries:
        found.extend(_entries(entry, extensions, exclude))
    if not found:
        raise ConfigError(f"slides {slides!r} names no slides (extensions {list(extensions)})", key="slides")
    seen: dict[str, str] = {}
    out = []
    for uri, rel in found:
        sid = slide_id(rel)
        if sid in seen and seen[sid] != uri:
            raise ConfigError(f"slides {seen[sid]} and {uri} would both be written as {sid!r}", key="slides")
        if sid not in seen:
            seen[sid] = uri
            out.append((uri, sid))
    return out


def check_out_dir(out_dir: str) -> None:
    """`ConfigError` unless `out_dir` can take the outputs (not empty, not a file, creatable, writable: a probe
    file is written and removed); checked before Ray starts."""
    try:
        storage.check_writable_folder(out_dir)
    except ValueError as exc:
        raise ConfigError(f"out_dir {out_dir!r} {exc}", key="out_dir", path=out_dir) from exc


def publish(local: str, uri: str) -> int:
    """Put the complete local file `local` at `uri`; returns its size. Locally a rename (or a copy to a
    unique temporary name and a rename, across file systems); to `s3://` one upload of the finished file,
    checked by size, the object deleted again if anything failed, so a failed upload leaves nothing."""
    size = os.path.getsize(local)
    if not storage.is_remote(uri):
        dest = storage.resolve(uri)[1]
        if os.path.abspath(local) != dest:
            tmp = f"{dest}.{uuid.uuid4().hex[:12]}.part"
            try:
                shutil.copyfile(local, tmp)
                os.replace(tmp, dest)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        return size
    fs, path = storage.resolve(uri)
    try:
        with open(local, "rb") as src, fs.open_output_stream(path) as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        if fs.get_file_info(path).size != size:
            raise OSError(f"upload of {uri} is incomplete")
    except BaseException:
        storage.delete(uri)
        raise
    return size
