"""Self-supervised methods, one file each, one contract (`base.Method`).

Adding a method: a file here with its `Config` dataclass and its `Method` subclass
(`views_needed`, `forward`, any hooks), one entry in `METHODS`, and its recipes.
"""

from sslpipe.methods.base import FeatureExtractor, Method, Step, StepOutput
from sslpipe.methods.moco import MoCo
from sslpipe.methods.simclr import SimCLR
from sslpipe.methods.simsiam import SimSiam
from sslpipe.methods.swav import SwAV
from sslpipe.methods.views import ViewsNeeded

# The recipe's `method.name` -> the method; its `Config` types the recipe's `method` section.
METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "mocov2": MoCo, "swav": SwAV, "simsiam": SimSiam}

__all__ = ["METHODS", "FeatureExtractor", "Method", "MoCo", "SimCLR", "SimSiam", "Step", "StepOutput", "SwAV",
           "ViewsNeeded"]
