"""Every pretext method makes its inputs and labels on the device without a host synchronisation
(counted by sslpipe.counting, as the CUDA path would see them), with its recipe's options on."""

import pytest
import torch

from sslpipe.counting import DispatchCounter
from sslpipe.methods import CPC, DAE, Colorization, Jigsaw, RelativeLoc, RotNet, Step
from sslpipe.methods.rotnet import rotated
from sslpipe.models import colorization_resnet18, resnet18

MAKERS = {
    "rotnet one": (RotNet, dict(rotations="one"), lambda m, x, s: rotated(x, "one", s.generator)),
    "rotnet all": (RotNet, dict(rotations="all"), lambda m, x, s: rotated(x, "all", s.generator)),
    "relative_loc": (RelativeLoc, dict(pairs="one", color_drop=1.0, hidden=8),
                     lambda m, x, s: m.patches(x, s)),
    "jigsaw": (Jigsaw, dict(permutations=10, tile_dim=8), lambda m, x, s: m.tiles(x, s)),
    "dae": (DAE, dict(side=16), lambda m, x, s: m.corrupted(x, s)),
    "cpc": (CPC, dict(context_width=8, context_blocks=1), lambda m, x, s: m.patches(x, s)),
    "colorization": (Colorization, dict(head_width=8), lambda m, x, s: m.targets(m.backbone.lab(x))),
}
BACKBONES = {"colorization": colorization_resnet18}   # the others: resnet18


@pytest.mark.parametrize("name", list(MAKERS))
def test_target_making_has_no_host_sync(name):
    cls, config, make = MAKERS[name]
    method = cls(BACKBONES.get(name, resnet18)(), cls.Config(**config), global_batch=4)
    crops = torch.randn(4, 3, 32, 32)
    with DispatchCounter(roots=[crops, method]) as counted:
        make(method, crops, Step(index=1))
    assert counted.sync_count == 0, dict(counted.syncs)
    assert counted.kernels > 0
