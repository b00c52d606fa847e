"""Jigsaw: tiles reassemble to the crop under the inverse permutation, each tile is its cell's
pixels normalised by its own statistics, the permutation draws come from the step's generator,
the loss is the cross-entropy of a per-image loop, the table is the max-Hamming prefix."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from sslpipe.methods import METHODS, Jigsaw, Step
from sslpipe.methods.jigsaw import shuffled
from sslpipe.models import resnet18
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext import grid_patches
from sslpipe.pretext.patch_ops import normalized_patches
from sslpipe.pretext.permutations import max_hamming_permutations

N, S = 4, 24


def _build(seed=0, **config):
    torch.manual_seed(seed)
    config = {"permutations": 10, "tile_dim": 16, **config}
    return Jigsaw(resnet18(small_images=True), Jigsaw.Config(**config), global_batch=N).train()


def _images(seed=0):
    return torch.rand(N, 3, S, S, generator=torch.Generator().manual_seed(seed))


def test_registered_and_its_classes_are_the_max_hamming_prefix():
    assert METHODS["jigsaw"] is Jigsaw
    method = _build()
    assert np.array_equal(method.table.numpy(), max_hamming_permutations(10))
    assert "table" in method.state_dict() and method.classifier[-1].out_features == 10
    assert Jigsaw(resnet18(), Jigsaw.Config(), global_batch=N).table.shape == (1000, 9)


def test_shuffled_tiles_reassemble_to_the_crop_under_the_inverse_permutation():
    images = _images()
    tiles, _ = grid_patches(images, grid=3, patch=S // 3, jitter=False)   # tiles that fill their cells
    table = torch.from_numpy(max_hamming_permutations(10))
    mixed, labels = shuffled(tiles, table, torch.Generator().manual_seed(2))
    assert labels.shape == (N,) and not torch.equal(mixed, tiles)
    for b in range(N):
        order = table[labels[b]]
        assert all(torch.equal(mixed[b, t], tiles[b, order[t]]) for t in range(9))  # t holds tile order[t]
        restored = mixed[b, torch.argsort(order)]                                 # the inverse permutation
        assert torch.equal(rearrange(restored, "(gh gw) c h w -> c (gh h) (gw w)", gh=3), images[b])


def test_the_methods_tiles_are_their_cells_pixels_each_normalised_by_itself():
    method = _build()
    images = _images(1)
    step = Step(index=5, seed=1)
    tiles, labels = method.tiles(images, step)
    assert tiles.shape == (N, 9, 3, 6, 6)                       # cells of 8 px, patches round(8 * 64/85) = 6
    again, relabels = method.tiles(images, Step(index=5, seed=1))
    assert torch.equal(tiles, again) and torch.equal(labels, relabels)  # a resumed step draws the same
    flat = tiles.flatten(-2)
    torch.testing.assert_close(flat.mean(-1), torch.zeros(N, 9, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(-1, unbiased=False), torch.ones(N, 9, 3), atol=1e-3, rtol=0)
    # Undo the shuffle: every tile is some 6 x 6 window of its own cell, normalised.
    for b in range(N):
        ordered = tiles[b, torch.argsort(method.table[labels[b]])]
        for cell in range(9):
            row, col = divmod(cell, 3)
            top, left = 8 * row, 8 * col
            windows = [normalized_patches(images[b, :, top + dy:top + dy + 6, left + dx:left + dx + 6])
                       for dy in range(3) for dx in range(3)]
            assert any(torch.allclose(ordered[cell], w, atol=1e-5) for w in windows)


def test_loss_is_the_cross_entropy_of_a_per_image_loop():
    method = _build()
    twin = copy.deepcopy(method)
    images = _images(3)
    out = method(Batch.from_views([images], names=["crop"]), Step(index=1))
    tiles, labels = twin.tiles(images, Step(index=1))  # a Step's generator is drawn from once per step
    with torch.no_grad():
        features = twin.backbone(tiles.flatten(0, 1))          # the same 9N BN batch
        per_tile = F.relu(twin.tile_head(features)).view(N, -1)
        logits = twin.classifier(per_tile).double()
    expected = np.mean([-F.log_softmax(logits[b], 0)[labels[b]].item() for b in range(N)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert 0 <= out.metrics["permutation_accuracy"].item() <= 1 and out.metrics["tile_px"] == 6


@pytest.mark.parametrize("field, value", [("permutations", 1), ("patch_of_cell", 0.0), ("tile_dim", 0)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Jigsaw.Config(**{field: value})


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _build()
    batch = Batch.from_views([_images(4)], names=["crop"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.005)
    loss = method(batch, Step(index=2)).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # a fresh Step: the same tiles and permutations again
        assert method(batch, Step(index=2)).loss.item() < loss.item() - 1e-4
