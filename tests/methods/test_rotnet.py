"""RotNet: the rotations are exact and their labels decode back from a coordinate image, the loss is
the cross-entropy of a per-image loop with numpy's rot90, the one-rotation mode draws from the
step's generator (so a resume draws the same), config refusals, one SGD step."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslpipe.methods import METHODS, RotNet, Step
from sslpipe.methods.rotnet import rotated
from sslpipe.models import resnet18
from sslpipe.pipeline.batch import Batch

N, S = 6, 8


def _build(seed=0, **config):
    torch.manual_seed(seed)
    return RotNet(resnet18(small_images=True), RotNet.Config(**config), global_batch=N).train()


def _images(seed=0, size=S):
    return torch.randn(N, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _coordinates():
    """(1, 2, S, S): channel 0 the row, channel 1 the column of each pixel."""
    rows, cols = torch.meshgrid(torch.arange(S), torch.arange(S), indexing="ij")
    return torch.stack([rows, cols]).float()[None]


def _decode(image):
    """The number of counter-clockwise quarter turns that moved the original top-left pixel
    (row 0, column 0) to where it is now."""
    where = ((image[0] == 0) & (image[1] == 0)).nonzero()[0].tolist()
    corners = {(0, 0): 0, (S - 1, 0): 1, (S - 1, S - 1): 2, (0, S - 1): 3}  # ccw: top-left goes down the left
    return corners[tuple(where)]


def test_registered_with_a_linear_head_by_default():
    assert METHODS["rotnet"] is RotNet
    method = _build()
    assert len(method.classifier) == 1 and method.classifier[0].out_features == 4
    assert [n for n, _ in method.named_children()] == ["backbone", "classifier"]


def test_every_rotation_decodes_back_to_its_label_and_matches_numpy():
    images, labels = rotated(_coordinates(), "all")
    assert labels.tolist() == [0, 1, 2, 3]
    for image, label in zip(images, labels.tolist()):
        assert _decode(image) == label
        expected = np.rot90(_coordinates()[0].numpy(), label, axes=(1, 2))  # numpy's ccw rot90
        assert np.array_equal(image.numpy(), expected)  # exact: a permutation of the pixels


def test_all_mode_is_turn_major_and_one_mode_rotates_each_image_by_its_label():
    x = _images()
    images, labels = rotated(x, "all")
    assert images.shape == (4 * N, 3, S, S) and labels.tolist() == [k for k in range(4) for _ in range(N)]
    torch.testing.assert_close(images[:N], x, rtol=0, atol=0)
    generator = torch.Generator().manual_seed(5)
    one, drawn = rotated(x, "one", generator)
    assert one.shape == x.shape and drawn.shape == (N,)
    for i, k in enumerate(drawn.tolist()):
        assert torch.equal(one[i], torch.rot90(x[i], k, dims=(-2, -1)))
    again, redrawn = rotated(x, "one", torch.Generator().manual_seed(5))
    assert torch.equal(redrawn, drawn) and torch.equal(again, one)


def test_one_mode_draws_from_the_steps_generator():
    method = _build(rotations="one")
    x = _images()
    draws = [rotated(x, "one", Step(index=i, seed=0).generator)[1] for i in (3, 3, 4)]
    assert torch.equal(draws[0], draws[1])  # the same step (e.g. after a resume): the same turns
    assert not torch.equal(draws[0], draws[2]) and set(torch.cat(draws).tolist()) <= {0, 1, 2, 3}
    assert torch.isfinite(method(Batch.from_views([x], names=["crop"]), Step(index=3)).loss)


def test_loss_is_the_cross_entropy_of_a_per_image_loop_in_one_bn_batch():
    method = _build()
    twin = copy.deepcopy(method)
    x = _images(1)
    out = method(Batch.from_views([x], names=["crop"]), Step())
    # The reference's collate: every image's four rotations (numpy), stacked into one 4N batch.
    copies = {(k, i): torch.from_numpy(np.rot90(x[i].numpy(), k, axes=(1, 2)).copy())
              for k in range(4) for i in range(N)}
    stacked = torch.stack([copies[k, i] for k in range(4) for i in range(N)])
    with torch.no_grad():
        logits = twin.classifier(twin.backbone(stacked)).double()
    expected = np.mean([-F.log_softmax(logits[j], 0)[j // N].item() for j in range(4 * N)])
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.metrics["rotated_images"] == 4 * N and 0 <= out.metrics["rotation_accuracy"].item() <= 1


def test_non_square_views_are_refused_with_their_shape():
    with pytest.raises(ValueError, match="square views.*8 x 6"):
        rotated(torch.zeros(2, 3, 8, 6), "all")


@pytest.mark.parametrize("field, value", [("rotations", "some"), ("head", (0,))])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        RotNet.Config(**{field: value})


@pytest.mark.parametrize("rotations", ["all", "one"])
def test_one_sgd_step_lowers_the_loss_on_the_same_batch(rotations):
    method = _build(rotations=rotations, head=(16,))
    batch = Batch.from_views([_images(2)], names=["crop"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.005)
    loss = method(batch, Step(index=1)).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # a fresh Step: the same rotations again (a Step's generator is drawn from once)
        assert method(batch, Step(index=1)).loss.item() < loss.item() - 1e-4
