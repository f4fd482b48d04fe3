"""Which slides an `input` names, their ids, and what became of the other files (before any Ray work).

A slide's id is its path relative to the input folder without the extension, "/" written as "__" (the
file stem for a flat folder, a single file or a list: `TCGA-B0-4710-01Z-00-DX1.<uuid>`). An id that is not
already a safe file name (`[A-Za-z0-9][A-Za-z0-9._-]*`) is folded to ASCII, sanitised and suffixed with 8 hex
of the sha1 of the relative path, so `tümor 1`, `tämor 1`, `a b` and `a_b` stay four ids. An id depends on
its own path only, never on which other files exist: adding `b/slide.svs` beside `a/slide.svs` keeps
`a__slide`. Two inputs that still share an id (`x.svs` and `x.tiff`) are a `ConfigError` naming both.
Files of other extensions, dangling symlinks and folders that cannot be listed are returned as `skipped`.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from srtn import storage
from srtn.errors import ConfigError

__all__ = ["SlideInput", "SlideInputs", "slide_id", "list_inputs"]

_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_LIST_SUFFIXES = (".txt", ".lst")


@dataclass(frozen=True)
class SlideInput:
    """One slide to tile: where it is, its id, and the path the id was made from."""

    uri: str
    source_id: str
    relative: str


@dataclass
class SlideInputs:
    """The slides an input names, plus the files it holds that are not tiled (`{path, reason}`)."""

    slides: list[SlideInput] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)


def slide_id(relative: str) -> str:
    """The id of the slide at `relative` ("/"-separated path under its input folder, or a file name)."""
    parent, _, name = relative.rpartition("/")
    stem, dot, _ = name.rpartition(".")
    stem = stem if dot and stem else name
    raw = f"{parent}/{stem}".replace("/", "__") if parent else stem
    if _SAFE_ID.fullmatch(raw):
        return raw
    ascii_form = unicodedata.normalize("NFKD", raw).encode("ascii", "ignore").decode()
    cleaned = _UNSAFE.sub("_", ascii_form).strip("._-") or "slide"
    return f"{cleaned}-{hashlib.sha1(relative.encode()).hexdigest()[:8]}"


def _entry_uri(line: str, base: Path) -> str:
    return line if storage.is_remote(line) or Path(line).is_absolute() else str(base / line)


def _list_file(entry: str) -> list[str]:
    base = Path(entry).parent
    lines = (line.strip() for line in storage.read_bytes(entry).decode().splitlines())
    return [_entry_uri(line, base) for line in lines if line and not line.startswith("#")]


def _relative(uri: str, root: str) -> str:
    if storage.is_remote(uri):
        return uri[len(root.rstrip("/")) + 1 :]
    return os.path.relpath(uri, root).replace(os.sep, "/")


def _walk_folder(entry: str, extensions: Sequence[str], exclude: str | None, out: SlideInputs) -> None:
    exts = tuple(e.lower() for e in extensions)
    files, broken, unlisted = storage.list_tree(entry)
    root = entry if storage.is_remote(entry) else storage.resolve(entry)[1]
    for uri in files:
        if exclude and (uri == exclude or uri.startswith(exclude.rstrip("/") + "/")):
            continue  # the job's own output inside its input folder
        if uri.lower().endswith(exts):
            out.slides.append(SlideInput(uri, "", _relative(uri, root)))
        else:
            suffix = os.path.splitext(uri)[1] or "(none)"
            out.skipped.append({"path": uri, "reason": f"extension {suffix} not in extensions"})
    out.skipped += [{"path": p, "reason": "dangling symlink"} for p in broken]
    out.skipped += [{"path": p, "reason": "folder cannot be listed"} for p in unlisted]


def _kind(entry: str) -> str:
    try:
        fs, path = storage.resolve(entry)
        return fs.get_file_info(path).type.name
    except OSError as exc:
        raise ConfigError(f"input {entry!r} cannot be reached: {exc}", key="input", path=entry) from exc


def _collect(entries: Sequence[str], extensions: Sequence[str], exclude: str | None, *, single: bool) -> SlideInputs:
    out = SlideInputs()
    for entry in entries:
        kind = _kind(entry)
        if kind == "Directory":
            _walk_folder(entry, extensions, exclude, out)
        elif kind == "File" and entry.endswith(_LIST_SUFFIXES):
            out.slides += [SlideInput(u, "", storage.basename(u)) for u in _list_file(entry)]
        elif kind == "NotFound" and single:
            raise ConfigError(f"input {entry!r} does not exist", key="input", path=entry)
        else:  # a named file is always attempted (and fails loudly, as its own slide, if missing or bad)
            out.slides.append(SlideInput(entry, "", storage.basename(entry)))
    return out


def _with_ids(found: SlideInputs) -> SlideInputs:
    by_id: dict[str, SlideInput] = {}
    seen_uris: dict[str, str] = {}
    skipped = list(found.skipped)
    for item in found.slides:
        uri = item.uri if storage.is_remote(item.uri) else storage.resolve(item.uri)[1]  # links resolved
        if uri in seen_uris:  # the same file twice (named twice, or a link to it) is one slide
            skipped.append({"path": item.uri, "reason": f"same file as {seen_uris[uri]}"})
            continue
        seen_uris[uri] = item.uri
        slide = SlideInput(item.uri, slide_id(item.relative), item.relative)
        other = by_id.get(slide.source_id)
        if other is not None:
            raise ConfigError(
                f"input: {other.uri} and {slide.uri} both give the slide id {slide.source_id!r} (ids are the"
                " path under the input folder without the extension); rename one or tile them separately",
                key="input",
            )
        by_id[slide.source_id] = slide
    return SlideInputs(slides=list(by_id.values()), skipped=skipped)


def list_inputs(input_: str | list[str], *, extensions: Sequence[str], output: str | None = None) -> SlideInputs:
    """Slides named by `input` (a folder or s3:// prefix, a .txt/.lst file list, a single file, or a list of
    files and folders) with their ids; `ConfigError` (key `input`) when it does not exist, names no slide,
    or two slides share an id. Files under `output` are left out."""
    entries = input_ if isinstance(input_, list) else [input_]
    if not entries or any(not str(e).strip() for e in entries):
        raise ConfigError(f"input {input_!r} is empty: name a folder, a file list or slide files", key="input")
    local_output = output is not None and output.strip() and not storage.is_remote(output)
    exclude = storage.resolve(output)[1] if local_output else None
    found = _with_ids(_collect(entries, extensions, exclude, single=not isinstance(input_, list)))
    if not found.slides:
        raise ConfigError(f"input {input_!r} names no slides (extensions {list(extensions)})", key="input")
    return found
