"""Self-supervised methods, one file each, one contract (`base.Method`)."""

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.moco import MoCo
from sslpipe.methods.simclr import SimCLR
from sslpipe.methods.simsiam import SimSiam
from sslpipe.methods.swav import SwAV

# The recipe's `method.name` -> the method; its `Config` types the recipe's `method` section.
METHODS: dict[str, type[Method]] = {"simclr": SimCLR, "mocov2": MoCo, "swav": SwAV, "simsiam": SimSiam}

__all__ = ["METHODS", "Method", "MoCo", "SimCLR", "SimSiam", "Step", "StepOutput", "SwAV"]
