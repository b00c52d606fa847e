"""Relative patch location: each neighbour's label names its place around the centre (decoded from a
coordinate image), the pairs' loss is the cross-entropy of a per-pair loop, the one-pair mode and
colour dropping draw from the step's generator, config refusals, one SGD step."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslpipe.methods import METHODS, RelativeLoc, Step
from sslpipe.models import resnet18
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext import drop_colors

N, S = 3, 30   # cells of 10 px, patches of round(10 * 64/85) = 8


def _build(seed=0, **config):
    torch.manual_seed(seed)
    config = {"hidden": 32, **config}
    return RelativeLoc(resnet18(small_images=True), RelativeLoc.Config(**config), global_batch=N).train()


def _coordinates():
    """(N, 3, S, S): channel 0 the row, channel 1 the column, channel 2 zero."""
    rows, cols = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return torch.stack([rows, cols, torch.zeros_like(rows)]).float().expand(N, -1, -1, -1).contiguous()


def test_each_label_names_the_neighbours_place_around_the_centre():
    assert METHODS["relative_loc"] is RelativeLoc
    patches, labels = _build().patches(_coordinates(), Step(index=2))
    assert patches.shape == (N, 9, 3, 8, 8) and labels.tolist() == [list(range(8))] * N
    places = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]  # (down, right)
    for image in patches:
        centre = (int(image[0, 0, 0, 0]) // 10, int(image[0, 1, 0, 0]) // 10)   # its top-left pixel's cell
        assert centre == (1, 1)
        for label, patch in enumerate(image[1:]):
            cell = (int(patch[0, 0, 0]) // 10, int(patch[1, 0, 0]) // 10)
            assert (cell[0] - 1, cell[1] - 1) == places[label]
            assert torch.equal(patch[0, :, 0] - patch[0, 0, 0], torch.arange(8.0))  # a contiguous window


def test_one_pair_mode_draws_one_neighbour_per_image_from_the_step():
    method = _build(pairs="one")
    patches, labels = method.patches(_coordinates(), Step(index=7))
    again = method.patches(_coordinates(), Step(index=7))
    assert patches.shape == (N, 2, 3, 8, 8) and labels.shape == (N, 1)
    assert torch.equal(patches, again[0]) and torch.equal(labels, again[1])


def test_loss_is_the_cross_entropy_of_a_per_pair_loop_with_the_centre_first():
    method = _build()
    twin = copy.deepcopy(method).eval()   # dropout off in both, to compare
    method.eval()
    x = torch.randn(N, 3, S, S, generator=torch.Generator().manual_seed(1))
    out = method(Batch.from_views([x], names=["crop"]), Step(index=1))
    patches, labels = twin.patches(x, Step(index=1))
    with torch.no_grad():
        features = twin.backbone(patches.flatten(0, 1)).view(N, 9, -1)
        losses = []
        for b in range(N):
            for k in range(8):
                logits = twin.head(torch.cat([features[b, 0], features[b, 1 + k]])[None]).double()[0]
                losses.append(-F.log_softmax(logits, 0)[labels[b, k]].item())
    assert out.loss.item() == pytest.approx(np.mean(losses), rel=1e-5) and out.metrics["pairs"] == 8 * N


def test_colour_dropping_keeps_one_channel_and_fills_the_others_with_faint_noise():
    patches = torch.randn(200, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 + 1
    dropped = drop_colors(patches, 1.0, torch.Generator().manual_seed(3))
    kept = (dropped == patches).flatten(2).all(2)                 # (200, 3)
    assert (kept.sum(1) == 1).all() and set(kept.float().argmax(1).tolist()) == {0, 1, 2}
    noise = dropped[~kept]
    assert noise.abs().mean() < 0.05 and noise.std() > 0         # std 1/100 of the kept channel's (2)
    assert torch.equal(drop_colors(patches, 0.0, torch.Generator().manual_seed(3)), patches)
    half = drop_colors(patches, 0.5, torch.Generator().manual_seed(3))
    assert 60 < (half != patches).flatten(1).any(1).sum() < 140


@pytest.mark.parametrize("field, value", [("pairs", "two"), ("patch_of_cell", 1.5), ("hidden", 0),
                                          ("dropout", 2.0), ("color_drop", -0.1)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RelativeLoc.Config(**{field: value})


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _build(dropout=0.0, color_drop=0.5)
    x = torch.randn(N, 3, S, S, generator=torch.Generator().manual_seed(2))
    batch = Batch.from_views([x], names=["crop"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.005)
    loss = method(batch, Step(index=3)).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # a fresh Step: the same patches and colour drops again
        assert method(batch, Step(index=3)).loss.item() < loss.item() - 1e-4
