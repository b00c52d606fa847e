"""Colorization: the backbone sees only L; the loss is the rebalanced, non-gray-masked soft
cross-entropy of a naive float64 reference (dense targets from a search over all 313 bins); the
prior is counted over what `extract` gives, once, and kept; preview cells; config refusals."""

import copy

import numpy as np
import pytest
import torch
from kornia.color import lab_to_rgb, rgb_to_lab

from sslpipe.methods import METHODS, Colorization, Step
from sslpipe.models import build_backbone, resnet18
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.spec import IMAGENET_MEAN, IMAGENET_STD
from sslpipe.pretext.ab_bins import load_ab_bins, rebalancing_factor, smoothed_prior

MEAN, STD = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _method(**config):
    torch.manual_seed(0)
    return Colorization(build_backbone("colorization_resnet18"),
                        Colorization.Config(head_width=16, **config), global_batch=4).train()


def _images(n=3, side=32, seed=0):
    """(n, 3, side, side) RGB in [0, 1]: smooth colour ramps, the last image gray."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, side)
    rgb = torch.rand(n, 3, 1, 1, generator=g) * ramp.view(1, 1, -1, 1)
    rgb = rgb + torch.rand(n, 3, 1, side, generator=g) * 0.3
    rgb = rgb.clamp(0, 1)
    rgb[-1] = rgb[-1].mean(0, keepdim=True)
    return rgb


def _naive_loss(logits, rgb, factor, stride=4, k=10, sigma=5.0, threshold=5.0):
    """Float64 loops: per pixel, a dense 313-bin soft target from all bins' distances, its cross
    entropy, times the factor of its nearest bin and its image's non-gray mask; mean over pixels."""
    centres = load_ab_bins().astype(np.float64)
    lab = rgb_to_lab(rgb.double()).numpy()[:, :, ::stride, ::stride]
    log_p = torch.log_softmax(logits.double(), 1).numpy()
    total, pixels = 0.0, 0
    for i in range(lab.shape[0]):
        colourful = float(np.abs(lab[i, 1:]).max() > threshold)
        for y in range(lab.shape[2]):
            for x in range(lab.shape[3]):
                distance = np.sqrt(((centres - lab[i, 1:, y, x]) ** 2).sum(1))
                nearest = np.argsort(distance, kind="stable")[:k]
                target = np.zeros(313)
                target[nearest] = np.exp(-distance[nearest] ** 2 / (2 * sigma ** 2))
                target /= target.sum()
                total += -factor[target.argmax()] * colourful * (target * log_p[i, :, y, x]).sum()
                pixels += 1
    return total / pixels


def test_the_backbone_sees_only_the_lightness():
    backbone = build_backbone("colorization_resnet18").eval()
    rgb = _images(n=2, side=32) * 0.5 + 0.25
    lab = rgb_to_lab(rgb)
    tinted = lab_to_rgb(torch.cat([lab[:, :1], lab[:, 1:] * 0.3 + 4], 1))   # same L, other colours
    assert (rgb_to_lab(tinted)[:, 0] - lab[:, 0]).abs().max() < 1e-2 and (tinted - rgb).abs().max() > 0.05
    with torch.no_grad():
        a, b = backbone((rgb - MEAN) / STD), backbone((tinted - MEAN) / STD)
        other = backbone((rgb.flip(-1) - MEAN) / STD)
    assert torch.allclose(a, b, atol=1e-3 * a.abs().max()) and not torch.allclose(a, other, atol=1e-2)
    assert backbone.feature_map((rgb - MEAN) / STD).shape == (2, 512, 4, 4)   # output stride 8


@pytest.mark.parametrize("rebalance", [True, False])
def test_loss_is_the_weighted_soft_cross_entropy_of_a_naive_reference(rebalance):
    assert METHODS["colorization"] is Colorization
    method = _method(rebalance=rebalance)
    rgb = _images()
    views = (rgb - MEAN) / STD
    if rebalance:
        counts = np.random.default_rng(0).integers(1, 100, 313)
        factor = rebalancing_factor(smoothed_prior(counts), gamma=0.5)
        method.factor.copy_(torch.from_numpy(factor))
    else:
        factor = np.ones(313)
    twin = copy.deepcopy(method)
    out = method(Batch.from_views([views], names=["crop"]), Step(index=3))
    with torch.no_grad():
        logits = twin.head(twin.backbone.feature_map(views))
    assert logits.shape == (3, 313, 8, 8)
    assert out.loss.item() == pytest.approx(_naive_loss(logits, rgb, factor), rel=1e-4)
    assert out.metrics["colourful_images"].item() == pytest.approx(2 / 3)   # the gray one teaches nothing
    out.loss.backward()
    assert method.backbone.conv1.weight.grad.abs().sum() > 0


def test_the_prior_is_counted_once_over_the_extracted_crops_and_kept():
    method = _method()
    rgb = _images(n=4, side=32)
    calls = []

    def extract(module):   # what the loop's extractor does: the module over every training crop
        calls.append(module)
        return torch.cat([module((rgb[i:i + 2] - MEAN) / STD) for i in (0, 2)])

    method.on_epoch_start(0, extract)
    nearest = [np.argmin(((load_ab_bins() - ab) ** 2).sum(1))
               for ab in rgb_to_lab(rgb.double())[:, 1:, ::4, ::4].permute(0, 2, 3, 1).reshape(-1, 2).numpy()]
    counts = np.bincount(nearest, minlength=313)
    assert np.allclose(method.prior.numpy(), smoothed_prior(counts, 5.0))
    assert np.allclose(method.factor.numpy(), rebalancing_factor(method.prior.numpy(), 0.5), rtol=1e-6)
    artifacts = method.artifacts()
    assert set(artifacts) == {"ab_prior", "ab_rebalancing_factor"} and artifacts["ab_prior"].shape == (313,)
    method.on_epoch_start(1, extract)
    assert len(calls) == 1                                          # counted once
    restored = _method()
    restored.load_state_dict(method.state_dict())                   # a checkpoint keeps it
    assert torch.equal(restored.prior, method.prior) and torch.equal(restored.factor, method.factor)
    restored.on_epoch_start(2, extract)
    assert len(calls) == 1
    assert _method(rebalance=False).artifacts() == {}


def test_preview_shows_the_l_input_and_the_binned_target():
    method = _method()
    rgb = _images(n=2, side=32)
    rows = method.preview(Batch.from_views([rgb], names=["crop"]), Step(index=0))
    assert [caption for caption, _ in rows[0]] == ["L input", "ab target 8x8", "view"]
    assert rows[1][1][0].endswith("gray: no loss")
    light, target, view = (image for _, image in rows[0])
    assert torch.allclose(light[0], rgb_to_lab(rgb)[0, 0] / 100) and torch.equal(view, rgb[0])
    assert target.shape == (3, 32, 32) and 0 <= target.min() and target.max() <= 1
    assert torch.equal(target[:, :4, :4], target[:, :1, :1].expand(3, 4, 4))   # one colour per 4 x 4


@pytest.mark.parametrize("field, value", [("neighbours", 0), ("neighbours", 50), ("sigma", 0.0),
                                          ("gamma", 1.5), ("stride", 0), ("head_width", 0)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        Colorization.Config(**{field: value})


def test_other_backbones_and_strides_are_refused():
    with pytest.raises(ValueError, match="colorization_resnet18"):
        Colorization(resnet18(), Colorization.Config(), global_batch=4)
    with pytest.raises(ValueError, match="method.stride=3"):
        Colorization(build_backbone("colorization_resnet18"), Colorization.Config(stride=3), global_batch=4)
    with pytest.raises(ValueError, match="output stride 2"):   # the CIFAR stem's map is 4x finer
        Colorization(build_backbone("colorization_resnet18", small_images=True), Colorization.Config(),
                     global_batch=4)
