"""Stage packages list their public API in `__all__` and load a name's module only when it is first used.

Importing one Ray-free module of a stage (`srtn.train.step` on a GPU machine without Ray, `srtn.data.schema`
in a peer's venv) must not import the stage's drivers and with them Ray, MLflow or OpenSlide (PEP 562).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib import import_module
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[list[str], Callable[[str], Any]]:
    """`(__all__, __getattr__)` for `package`, where `exports` maps each public name to its submodule."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(f"{package}.{exports[name]}"), name)

    return sorted(exports), __getattr__
