"""Config machinery shared by every job: strict pydantic models, YAML loading, dotted overrides.

A bad config must fail before any Ray work starts, naming the key, so every job loads its config
through `load_config` first and only then touches Ray.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from srtn.errors import ConfigError
from srtn.vocab import check_scale

__all__ = [
    "Scale",
    "StrictModel",
    "DataJobConfig",
    "load_config",
    "apply_overrides",
    "parse_override",
    "flatten",
]

M = TypeVar("M", bound=BaseModel)
_SCI_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

Scale = Annotated[int, AfterValidator(check_scale)]
"""An SR factor every config key of that meaning validates the same way (one of `SUPPORTED_SCALES`)."""


class StrictModel(BaseModel):
    """Base for every config block: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class DataJobConfig(StrictModel):
    """Keys every data job has: where slides come from and where shards go (local or s3://)."""

    input: str | list[str]
    output: str


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into its key path and a YAML-typed value (`1e-3` is a float, `[2,4]` a list)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} is not of the form dotted.key=value", key=key or None)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {key}: cannot parse value {raw!r}: {exc}", key=key) from exc
    if isinstance(value, str) and _SCI_FLOAT.match(value.strip()):
        value = float(value)  # YAML 1.1 reads `1e-3` as a string; users mean a number
    return key.split("."), value


def _list_index(node: list[Any], part: str, dotted: str, full: str) -> int:
    """`part` as an index of an existing list item (`datasets.0.shards`): appending by index is not a thing."""
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"override {full}: {dotted} needs an index 0..{len(node) - 1} of the list", key=dotted)
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Set each `dotted.key=value` in a nested dict, creating blocks as needed (validation comes later). A
    numeric part indexes a list already there: `--set datasets.0.shards=DIR`."""
    for text in overrides:
        path, value = parse_override(text)
        full = ".".join(path)
        node: Any = data
        for i, part in enumerate(path):
            dotted = ".".join(path[: i + 1])
            last = i == len(path) - 1
            if isinstance(node, list):
                key: Any = _list_index(node, part, dotted, full)
            elif isinstance(node, dict):
                key = part
                if not last and node.get(part) is None:
                    node[part] = {}
            else:
                parent = ".".join(path[:i])
                raise ConfigError(f"override {full}: {parent} is not a block", key=parent)
            if last:
                node[key] = value
            else:
                node = node[key]
    return data


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        elif err["type"] == "missing":
            lines.append(f"  {key}: required key is missing")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: Iterable[str] = (),
    *,
    data: Mapping[str, Any] | None = None,
) -> M:
    """Load a YAML file (or a dict), apply `--set` overrides and validate against `model`.

    Raises `ConfigError` naming the first bad key; nothing here imports Ray.
    """
    source = str(path) if path is not None else "<dict>"
    raw: dict[str, Any] = dict(data or {})
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist", path=str(p))
        try:
            loaded = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}", path=str(p)) from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must hold a mapping at top level", path=str(p))
        raw = {**loaded, **raw}
    raw = apply_overrides(raw, overrides)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or None
        raise ConfigError(_format_validation_error(exc, source), key=key, path=source) from exc


def flatten(data: Mapping[str, Any] | BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten nested config into dotted keys (MLflow params, Tune search-space checks)."""
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{dotted}."))
        else:
            out[dotted] = value
    return out
