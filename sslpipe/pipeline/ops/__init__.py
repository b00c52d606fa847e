"""The table of photometric ops, in the order they run on every view (after the DALI crop and flip,
before any Kornia transforms and the normalization): color jitter, grayscale, blur, solarize, as
in SimCLR's, BYOL's and SwAV's code.

Adding an op: a file here with its settings dataclass and its `PhotometricOp` subclass (sampler
and apply), and one entry below. A view then accepts its key in YAML; no other op's random draws
change.
"""

from sslpipe.pipeline.ops.base import Params, PhotometricOp, take
from sslpipe.pipeline.ops.blur import Blur, BlurOp
from sslpipe.pipeline.ops.color_jitter import ColorJitter, ColorJitterOp
from sslpipe.pipeline.ops.grayscale import Grayscale, GrayscaleOp
from sslpipe.pipeline.ops.solarize import Solarize, SolarizeOp

OPS: dict[str, type[PhotometricOp]] = {op.key: op for op in (ColorJitterOp, GrayscaleOp, BlurOp, SolarizeOp)}

__all__ = ["OPS", "Blur", "ColorJitter", "Grayscale", "Params", "PhotometricOp", "Solarize", "take"]
