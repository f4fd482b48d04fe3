"""Configs: one strict pydantic model per job, each in its own module (`srtn.config.tile`, ...).

The shared machinery (`load_config`, `--set` overrides, `flatten`) lives in `srtn.config.base`.
"""

from srtn.config.base import DataJobConfig, StrictModel, apply_overrides, flatten, load_config

__all__ = ["DataJobConfig", "StrictModel", "apply_overrides", "flatten", "load_config"]
