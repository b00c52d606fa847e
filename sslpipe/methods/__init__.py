"""Self-supervised methods, one file each, one contract (`base.Method`).

Adding a method: a file here with its `Config` dataclass and its `Method` subclass
(`views_needed`, `forward`, any hooks), one entry in `METHODS`, and its recipes. The loop builds
every method as `cls(backbone, config, global_batch=B, samples=N)`: B the global batch, N the
number of training samples over all shards (the range of `batch.index`; a memory bank's rows).
"""

from sslpipe.methods.base import FeatureExtractor, Method, Step, StepOutput
from sslpipe.methods.byol import BYOL
from sslpipe.methods.cmc import CMC
from sslpipe.methods.colorization import Colorization
from sslpipe.methods.cpc import CPC
from sslpipe.methods.dae import DAE
from sslpipe.methods.instdisc import InstDisc
from sslpipe.methods.invaspread import InvaSpread
from sslpipe.methods.jigsaw import Jigsaw
from sslpipe.methods.moco import MoCo
from sslpipe.methods.mocov3 import MoCoV3
from sslpipe.methods.relative_loc import RelativeLoc
from sslpipe.methods.rotnet import RotNet
from sslpipe.methods.simclr import SimCLR
from sslpipe.methods.simsiam import SimSiam
from sslpipe.methods.swav import SwAV
from sslpipe.methods.triplet import Triplet
from sslpipe.methods.views import ViewsNeeded

# The recipe's `method.name` -> the method; its `Config` types the recipe's `method` section.
METHODS: dict[str, type[Method]] = {
    "simclr": SimCLR, "mocov2": MoCo, "swav": SwAV, "simsiam": SimSiam,
    "byol": BYOL, "mocov3": MoCoV3, "triplet": Triplet,
    "instdisc": InstDisc, "invaspread": InvaSpread, "cmc": CMC,
    "rotnet": RotNet, "relative_loc": RelativeLoc, "jigsaw": Jigsaw, "dae": DAE,
    "colorization": Colorization, "cpc": CPC,
}

__all__ = ["BYOL", "CMC", "CPC", "Colorization", "DAE", "METHODS", "FeatureExtractor", "InstDisc",
           "InvaSpread", "Jigsaw", "Method", "MoCo", "MoCoV3", "RelativeLoc", "RotNet", "SimCLR", "SimSiam",
           "Step", "StepOutput", "SwAV", "Triplet", "ViewsNeeded"]
