"""Model zoo: one architecture per module, built by name through :func:`build_model`.

Every model maps an NCHW float batch in [0, 1] of any height and width to the same batch ``scale`` times
larger and exposes ``model.scale``.
"""

from srtn.models.attention import EMA, EMHA
from srtn.models.bicubic import Bicubic
from srtn.models.common import SUPPORTED_SCALES, MeanShift, ResidualBlock, Upsampler
from srtn.models.edsr import EDSR
from srtn.models.registry import available_models, build_model
from srtn.models.scconv import ScConv
from srtn.models.srcnn import SRCNN
from srtn.models.srtn import SRTN
from srtn.models.summary import model_summary, summary_table

__all__ = [
    "EDSR",
    "EMA",
    "EMHA",
    "SRCNN",
    "SRTN",
    "SUPPORTED_SCALES",
    "Bicubic",
    "MeanShift",
    "ResidualBlock",
    "ScConv",
    "Upsampler",
    "available_models",
    "build_model",
    "model_summary",
    "summary_table",
]
