"""CPC v2: the context network sees no row below its own, the InfoNCE over rows is a float64 loop's,
the patch grid is the overlapping one with per-patch augmentation from the step's generator, the
layer-norm backbone lets no patch see another, every direction adds its terms, one SGD step."""

import copy
import math

import pytest
import torch

from sslpipe.methods import CPC, METHODS, Step
from sslpipe.methods.cpc import RowCausalConv, info_nce_rows
from sslpipe.models import build_backbone
from sslpipe.pipeline.batch import Batch

N, S = 3, 32   # a 7 x 7 grid of 8-px patches at stride 4


def _build(seed=0, **config):
    torch.manual_seed(seed)
    config = {"context_width": 16, "context_blocks": 2, "target_dim": 8, **config}
    return CPC(build_backbone("resnet18_layernorm", small_images=True), CPC.Config(**config), global_batch=N)


def _crops(seed=0):
    return torch.randn(N, 3, S, S, generator=torch.Generator().manual_seed(seed))


def test_the_context_at_a_row_depends_on_no_row_below_it():
    torch.manual_seed(0)
    conv = RowCausalConv(4)
    method = _build()
    x = torch.randn(2, 4, 7, 7)
    for row in range(7):
        changed = x.clone()
        changed[:, :, row] += 10 * torch.randn(2, 4, 7)
        moved = (conv(changed) - conv(x)).abs().amax(dim=(0, 1, 3)) > 0          # per output row
        assert not moved[:row].any() and moved[row]
        z = torch.randn(2, 512, 7, 7)
        shifted = z.clone()
        shifted[:, :, row] += 10
        context = method.directions[0].context
        delta = (context(shifted) - context(z)).abs().amax(dim=(0, 1, 3))
        assert (delta[:row] == 0).all() and delta[row] > 0


def test_info_nce_over_rows_is_a_float64_loop():
    torch.manual_seed(1)
    prediction, targets = torch.randn(2, 5, 4, 4), torch.randn(2, 5, 4, 4)
    for offset in (1, 2, 3):
        losses = []
        every = targets.double().permute(0, 2, 3, 1).reshape(-1, 5)             # (b, row, col) order
        for b in range(2):
            for row in range(4 - offset):
                for col in range(4):
                    scores = every @ prediction[b, :, row, col].double()
                    positive = b * 16 + (row + offset) * 4 + col
                    losses.append(torch.logsumexp(scores, 0) - scores[positive])
        expected = torch.stack(losses).mean()
        assert info_nce_rows(prediction, targets, offset).item() == pytest.approx(expected.item(), rel=1e-5)


def test_the_patch_grid_overlaps_by_half_and_is_augmented_per_patch_from_the_step():
    assert METHODS["cpc"] is CPC
    method = _build(color_drop=0.0, flip=0.0, grayscale=0.0)
    x = _crops()
    plain = method.patches(x, Step())
    assert plain.shape == (N, 49, 3, 8, 8)
    assert torch.equal(plain[1, 8], x[1, :, 4:12, 4:12])         # row 1, column 1: offset 4 px
    augmented = _build().patches(x, Step(index=3))
    again = _build().patches(x, Step(index=3))
    assert torch.equal(augmented, again) and not torch.equal(augmented, plain)
    touched = (augmented != plain).flatten(2).any(2)               # patches changed by some op
    assert touched.float().mean() > 0.9                            # colour dropping p 1.0 on each
    with pytest.raises(ValueError, match="needs views of at least 8 px, got 6"):
        method.patches(torch.zeros(1, 3, 6, 6), Step())


def test_layer_norm_patches_share_no_statistics_across_the_batch():
    method = _build().train()
    patches = torch.randn(6, 3, 8, 8)
    alone = method.backbone(patches[:1])
    together = method.backbone(patches)[:1]
    torch.testing.assert_close(alone, together, rtol=1e-5, atol=1e-5)   # BatchNorm would differ
    assert "bn1.running_mean" not in method.backbone.state_dict()


def test_loss_sums_the_offsets_of_every_direction():
    method = _build(directions=4, offsets=(2, 3))
    twin = copy.deepcopy(method)
    x = _crops(2)
    out = method(Batch.from_views([x], names=["crop"]), Step(index=1))
    patches = twin.patches(x, Step(index=1))
    with torch.no_grad():
        z = twin.backbone(patches.flatten(0, 1)).view(N, 7, 7, -1).permute(0, 3, 1, 2)
        expected = 0.0
        for turns, direction in enumerate(twin.directions):
            zt = torch.rot90(z, turns, dims=(2, 3))
            for offset, predict in zip((2, 3), direction.predict):
                expected += info_nce_rows(predict(direction.context(zt)), twin.target(zt), offset).item()
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["candidates"] == N * 49
    assert expected / 8 == pytest.approx(math.log(N * 49), rel=0.2)   # untrained: about chance


@pytest.mark.parametrize("field, value", [("grid", 1), ("offsets", (7,)), ("offsets", ()), ("directions", 2),
                                          ("target_dim", 0), ("flip", 1.5)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        CPC.Config(**{field: value})


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    method = _build()
    batch = Batch.from_views([_crops(4)], names=["crop"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    loss = method(batch, Step(index=2)).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # a fresh Step: the same augmentation again
        assert method(batch, Step(index=2)).loss.item() < loss.item() - 1e-4
