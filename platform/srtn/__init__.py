"""SRTN platform: Ray-based data, training and inference for histopathology super-resolution."""

from srtn.errors import ConfigError, ResourceError, SlideError, SrtnError, TrackingError

__all__ = ["ConfigError", "ResourceError", "SlideError", "SrtnError", "TrackingError", "__version__"]
__version__ = "0.1.0"
