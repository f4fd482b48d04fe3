"""Local paths and object-store URIs (s3://...) behind one small API, via pyarrow filesystems.

Credentials and endpoint come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3, AWS_REGION), never from configs. OpenSlide needs local files,
so remote slides are staged to a task's local disk by `stage_local` and removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.fs as pafs

__all__ = [
    "atomic_output",
    "is_remote",
    "resolve",
    "join",
    "basename",
    "exists",
    "read_bytes",
    "write_bytes",
    "delete",
    "list_files",
    "list_tree",
    "file_sizes",
    "check_writable_folder",
    "stage_local",
]


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def _s3_filesystem() -> pafs.FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, object] = {}
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        kwargs["endpoint_override"] = rest or scheme
        kwargs["scheme"] = scheme if rest else "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it, for a local path or an s3:// URI."""
    if uri.startswith("s3://"):
        return _s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    path = uri[len("file://") :] if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), str(Path(path).resolve())


def join(uri: str, *parts: str) -> str:
    if is_remote(uri):
        return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri, *parts))


def basename(uri: str) -> str:
    return PurePosixPath(uri.rstrip("/")).name


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


@contextlib.contextmanager
def atomic_output(uri: str) -> Iterator[Any]:
    """A writable binary file that appears at `uri` whole or not at all. Locally a temp file, renamed on
    success and removed on error, so writers stream into it and a shard is never held twice in memory.
    Remotely an in-memory buffer uploaded in one put on success: closing an S3 output stream completes
    the upload even when the writer failed half way, which would publish a truncated file."""
    fs, path = resolve(uri)
    if not isinstance(fs, pafs.LocalFileSystem):
        buf = io.BytesIO()
        yield buf
        with fs.open_output_stream(path) as f:
            f.write(buf.getvalue())
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole file so readers never see half of it (see `atomic_output`)."""
    with atomic_output(uri) as f:
        f.write(data)


def delete(uri: str) -> None:
    fs, path = resolve(uri)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def list_files(uri: str, *, extensions: Sequence[str] | None = None, recursive: bool = True) -> list[str]:
    """Files under a folder or prefix (sorted, as URIs of the same kind as `uri`)."""
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=False))
    exts = tuple(e.lower() for e in extensions) if extensions else None
    out = []
    for info in infos:
        if info.type != pafs.FileType.File or info.base_name.startswith("."):
            continue
        if exts and not info.base_name.lower().endswith(exts):
            continue
        out.append(f"s3://{info.path}" if uri.startswith("s3://") else info.path)
    return sorted(out)


def _walk_local(root: str, files: list[str], broken: list[str], unlisted: list[str]) -> None:
    """Depth-first walk that follows symlinked folders once (a link cycle is visited once) and reports
    what it cannot use instead of stopping at it."""
    seen: set[str] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        real = os.path.realpath(folder)
        if real in seen:
            continue
        seen.add(real)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            unlisted.append(folder)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():  # follows symlinks
                stack.append(entry.path)
            elif entry.is_file():
                files.append(entry.path)
            elif entry.is_symlink():
                broken.append(entry.path)  # neither file nor folder behind it: dangling


def list_tree(uri: str) -> tuple[list[str], list[str], list[str]]:
    """Every file under a folder or prefix, recursively: `(files, dangling_links, unlistable_folders)`, each
    sorted; names starting with "." are left out. Local folders are walked with `os.scandir`: pyarrow's
    selector fails the whole listing on one dangling symlink ("Cannot list directory")."""
    if is_remote(uri):
        return list_files(uri), [], []
    files: list[str] = []
    broken: list[str] = []
    unlisted: list[str] = []
    _walk_local(resolve(uri)[1], files, broken, unlisted)
    return sorted(files), sorted(broken), sorted(unlisted)


def file_sizes(uri: str) -> dict[str, int]:
    """`{path relative to uri ("/"-separated): size in bytes}` of every file under a folder or prefix; {}
    when it does not exist. One listing, so checking many files costs one request on an object store."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):  # os.walk: a dangling link in the folder must not fail the listing
        sizes = {}
        for folder, _, names in os.walk(path):
            for name in names:
                full = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    sizes[os.path.relpath(full, path).replace(os.sep, "/")] = os.stat(full).st_size
        return sizes
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    return {i.path[len(prefix) :]: int(i.size) for i in infos if i.type == pafs.FileType.File}


def check_writable_folder(uri: str) -> None:
    """Raise `ValueError` saying why `uri` cannot take a job's outputs: empty, a file, cannot be created,
    or not writable (a small probe file is written and deleted). Creates the folder when missing."""
    if not uri.strip():
        raise ValueError("is empty: name a folder or an s3:// prefix")
    fs, path = resolve(uri)
    try:
        kind = fs.get_file_info(path).type
    except OSError as exc:
        raise ValueError(f"cannot be reached: {exc}") from exc
    if kind == pafs.FileType.File:
        raise ValueError("is a file, not a folder")
    if isinstance(fs, pafs.LocalFileSystem):
        try:
            Path(path).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot be created: {exc.strerror or exc}") from exc
    probe = f"{path}/.srtn-probe-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(probe) as f:
            f.write(b"probe")
        fs.delete_file(probe)
    except OSError as exc:
        raise ValueError(f"is not writable: {getattr(exc, 'strerror', None) or exc}") from exc


@contextlib.contextmanager
def stage_local(uri: str, *, tmp_root: str | None = None) -> Iterator[str]:
    """Yield a local path for `uri`: the file itself if local, else a temporary copy removed on exit."""
    if not is_remote(uri):
        yield resolve(uri)[1]
        return
    tmpdir = tempfile.mkdtemp(prefix="srtn-stage-", dir=tmp_root)
    local = os.path.join(tmpdir, basename(uri))
    try:
        fs, path = resolve(uri)
        with fs.open_input_stream(path) as src, open(local, "wb") as dst:
            shutil.copyfileobj(src, dst, length=8 << 20)
        yield local
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
