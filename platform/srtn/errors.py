"""One error hierarchy for the platform (in the style of openslide-python's OpenSlideError).

Every error carries the thing it is about (a path, a config key) as an attribute so that jobs can
record it in a manifest and users can act on it without reading a traceback.
"""

from __future__ import annotations

__all__ = ["SrtnError", "ConfigError", "ShardError", "SlideError", "TrackingError", "ResourceError"]


class SrtnError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(SrtnError):
    """A config file or override is invalid; raised before any Ray work starts."""

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path


class ShardError(ConfigError):
    """A shard folder does not match its manifest (missing, extra, changed or unreadable files, a column
    missing or null); raised before any Ray work. `path` is the folder, `problems` maps each bad file's
    URI to what is wrong with it."""

    def __init__(self, message: str, *, path: str, problems: dict[str, list[str]], key: str = "data.shards") -> None:
        super().__init__(message, key=key, path=path)
        self.problems = problems


class SlideError(SrtnError):
    """A slide cannot be opened or read; `path` names the file."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.reason = message


class TrackingError(SrtnError):
    """The MLflow tracking server is unreachable or refuses the run."""


class ResourceError(SrtnError):
    """The cluster cannot satisfy what a job asks for (it would otherwise wait forever)."""
