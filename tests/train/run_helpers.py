"""Small training runs for the tests of the loop: one recipe per method on the fixture photos, and
bit-for-bit comparison of checkpoint states."""

from pathlib import Path

import torch

from sslpipe.train.checkpoint import load_checkpoint
from sslpipe.train.config import load_config

RECIPES = Path(__file__).parents[2] / "recipes"
# Small and quick: ResNet-18 on 64 px views, batch 8 (5 steps per epoch on the fixture's photos).
STEPS_PER_EPOCH = 5
SMALL = {"simclr": ["method.projector=[64, 32]"],
         "mocov2": ["method.head=[64, 32]", "method.queue_size=32", "method.bn_splits=2"],
         "swav": ["method.projector=[64, 32]", "method.prototypes=20", "method.freeze_prototypes_steps=2",
                  "method.queue_length=16", "method.queue_start_epoch=0"],
         "simsiam": ["method.projector=[64, 64]", "method.predictor_hidden=16"],
         "mocov3": ["method.projector=[64, 32]", "method.predictor_hidden=16"],
         "invaspread": ["method.dim=32"],
         "instdisc": ["method.objective=nce", "method.negatives=16", "method.dim=32"],  # Z resumes too
         "cmc": ["method.negatives=16", "method.dim=32"],
         "byol": ["method.projector=[64, 32]", "method.predictor_hidden=64"],
         "triplet": ["method.projector=[64, 32]", "method.predictor_hidden=64", "method.negatives_to=5"],
         # The pretext methods draw their targets from the step's generator: those resume too.
         "rotnet": ["method.rotations=one"], "jigsaw": ["method.tile_dim=16"],
         "relative_loc": ["method.hidden=16", "method.pairs=one", "method.color_drop=0.5"],
         "dae": ["method.side=16", "method.decoder_width=8"],
         "colorization": ["method.head_width=8"],
         "cpc": ["method.offsets=[2]", "method.grid=3", "method.context_width=8", "method.context_blocks=1"]}


def config(method, shards, out, *overrides):
    """The small recipe of `method`; `overrides` replace the settings here of the same keys."""
    base = [f"data.train={shards}", "data.batch_size=8", f"train.out={out}", "train.epochs=2",
            "train.log_every=1", "data.num_threads=1", *SMALL[method]]
    given = {o.partition("=")[0] for o in overrides}
    return load_config(RECIPES / f"{method}_small.yaml",
                       [o for o in base if o.partition("=")[0] not in given] + list(overrides))


def final_state(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def assert_identical(a, b, where=""):
    """Bit-for-bit equality of nested checkpoint states."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_identical(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b, where
