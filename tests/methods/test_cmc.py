"""CMC: the split backbone (Lab and YCbCr against skimage, the reference's converter; the
concatenated features eval and export use), and the method on two half-width ResNet-18s at 8 px:
each direction scored against the other view's bank as it was before the step, both banks moved
after it, the NCE constants, the refusals, one SGD step."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2lab, rgb2ycbcr

from sslpipe.losses import bank_scores, bank_softmax, nce_loss, nce_normalizer
from sslpipe.methods import CMC, METHODS, Step
from sslpipe.methods.instdisc import draw_rows
from sslpipe.models import BACKBONES, build_backbone, cmc, resnet18, resnet50
from sslpipe.optim.param_groups import param_groups
from sslpipe.pipeline.batch import Batch
from sslpipe.pipeline.spec import IMAGENET_MEAN, IMAGENET_STD
from sslpipe.runs.export import backbone_state
from sslpipe.train.memory import activation_bytes

B, SAMPLES, K, DIM = 8, 40, 16, 32
LR = 0.005


def _normalized(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) as the pipeline gives it: [0, 1], ImageNet-normalized."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _images(n=2, size=6, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("colorspace, convert, mean, std", [
    ("lab", rgb2lab, cmc.LAB_MEAN, cmc.LAB_STD), ("ycbcr", rgb2ycbcr, cmc.YCBCR_MEAN, cmc.YCBCR_STD)])
def test_the_split_is_the_reference_s_conversion_and_normalization(colorspace, convert, mean, std):
    images = _images()
    net = build_backbone("cmc_resnet18" + ("_ycbcr" if colorspace == "ycbcr" else ""), small_images=True)
    assert net.colorspace == colorspace
    luma, chroma = net.split(_normalized(images))
    assert luma.shape == (2, 1, 6, 6) and chroma.shape == (2, 2, 6, 6) and luma.dtype == torch.float32
    # dataset.py: skimage on the uint8 crop, then transforms.Normalize(mean, std) of train_CMC.py.
    reference = (np.stack([convert(im) for im in images]) - np.array(mean)) / np.array(std)
    reference = torch.from_numpy(reference).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(torch.cat([luma, chroma], dim=1), reference, atol=2e-3, rtol=0)


def test_the_reference_s_lab_constants_and_the_pipeline_s_normalization():
    assert cmc.LAB_MEAN == pytest.approx((50.0, 6.025, -6.6895))
    assert cmc.LAB_STD == pytest.approx((50.0, 92.208, 101.1675))
    assert cmc.IMAGENET_MEAN == IMAGENET_MEAN and cmc.IMAGENET_STD == IMAGENET_STD


def test_the_eval_backbone_gives_both_encoders_features_concatenated():
    net = build_backbone("cmc_resnet18", small_images=True).eval()
    assert net.num_features == 256 + 256  # two half-width ResNet-18s (CMC's resnet18v1)
    assert net.l.conv1.weight.shape == (64, 1, 3, 3) and net.ab.conv1.weight.shape == (64, 2, 3, 3)
    x = _normalized(_images(size=8))
    with torch.no_grad():
        luma, chroma = net.split(x)
        torch.testing.assert_close(net(x), torch.cat([net.l(luma), net.ab(chroma)], dim=1))
    keys = net.state_dict().keys()
    assert keys == {f"{p}.{k}" for p in ("l", "ab") for k in net.l.state_dict()}  # constants not saved
    assert {"cmc_resnet18", "cmc_resnet50", "cmc_resnet18_ycbcr", "cmc_resnet50_ycbcr"} <= set(BACKBONES)
    assert net.KEYS == "torchvision, under l. and ab."  # what the exported file's metadata says
    assert build_backbone("cmc_resnet50").num_features == 1024 + 1024  # "2xResNet50half"


def test_width_and_input_channels_of_the_resnet():
    assert resnet50(width=0.5).num_features == 1024 and resnet18(width=2).num_features == 1024
    assert resnet50(width=0.5).layer1[0].conv1.weight.shape == (32, 64, 1, 1)  # the stem keeps 64
    assert resnet18(in_channels=2).conv1.weight.shape == (64, 2, 7, 7)
    assert resnet50().state_dict().keys() == resnet50(width=0.5).state_dict().keys()


def test_export_and_eval_read_its_weights_from_a_checkpoint(tmp_path):
    net = build_backbone("cmc_resnet18", small_images=True)
    checkpoint = {"model": {f"backbone.{k}": v for k, v in net.state_dict().items()} | {"head_l.weight": 0},
                  "config": {"model": {"backbone": "cmc_resnet18", "small_images": True}}}
    state = backbone_state(checkpoint, tmp_path / "last.pt")
    fresh = build_backbone("cmc_resnet18", small_images=True)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ab.conv1.weight, net.ab.conv1.weight)


def test_the_memory_estimate_runs_it_on_the_meta_device():
    assert activation_bytes("cmc_resnet18", False, [(224, 1)], 4, torch.bfloat16) > 0


def _build(seed=0, samples=SAMPLES, **config):
    torch.manual_seed(seed)
    config = {"negatives": K, "dim": DIM, **config}
    return CMC(build_backbone("cmc_resnet18", small_images=True), CMC.Config(**config), global_batch=B,
               samples=samples)


def _batch(seed=0):
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(SAMPLES, generator=generator)[:B]
    return Batch.from_views([torch.randn(B, 3, 8, 8, generator=generator)], index=index)


def _step(index=3):
    return Step(index=index, seed=0, values={"bank_momentum": 0.5})


@pytest.mark.parametrize("objective", ["softmax", "nce"])
def test_each_view_is_scored_against_the_other_s_bank_then_both_banks_move(objective):
    method = _build(objective=objective).train()
    batch = _batch()
    bank_l, bank_ab = method.bank_l.rows.clone(), method.bank_ab.rows.clone()
    with torch.no_grad():
        h_l, h_ab = method.backbone.encode(batch.views[0])
        z_l, z_ab = F.normalize(method.head_l(h_l), dim=1), F.normalize(method.head_ab(h_ab), dim=1)
    out = method(batch, _step())
    rows = draw_rows(batch.index, K, SAMPLES, _step())
    scores_l, scores_ab = bank_scores(z_l, bank_ab[rows]), bank_scores(z_ab, bank_l[rows])
    if objective == "softmax":
        expected = [bank_softmax(s, 0.07) for s in (scores_l, scores_ab)]
    else:
        z = [nce_normalizer(s, 0.07, SAMPLES) for s in (scores_l, scores_ab)]
        expected = [nce_loss(s, 0.07, zs, SAMPLES) for s, zs in zip((scores_l, scores_ab), z)]
        assert method.z_l.value.item() == pytest.approx(z[0].item(), rel=1e-5)
        assert method.z_ab.value.item() == pytest.approx(z[1].item(), rel=1e-5)
    assert out.metrics["loss_l"].item() == pytest.approx(expected[0].item(), rel=1e-4)
    assert out.metrics["loss_ab"].item() == pytest.approx(expected[1].item(), rel=1e-4)
    assert out.loss.item() == pytest.approx((expected[0] + expected[1]).item(), rel=1e-4)
    others = torch.ones(SAMPLES, dtype=torch.bool)
    others[batch.index] = False
    for bank, before, z in ((method.bank_l, bank_l, z_l), (method.bank_ab, bank_ab, z_ab)):
        moved = F.normalize(0.5 * before[batch.index] + 0.5 * z, dim=1)
        torch.testing.assert_close(bank.rows[batch.index], moved, rtol=1e-5, atol=1e-6)
        assert torch.equal(bank.rows[others], before[others])


def test_refusals():
    with pytest.raises(ValueError, match="needs CMC's split network"):
        CMC(resnet18(small_images=True), CMC.Config(negatives=K), global_batch=B, samples=SAMPLES)
    with pytest.raises(ValueError, match="needs samples="):
        _build(samples=None)
    with pytest.raises(ValueError, match="must be fewer than the 40 training samples"):
        _build(negatives=64)
    assert METHODS["cmc"] is CMC and _build().views_needed().count == 1


@pytest.mark.parametrize("objective", ["softmax", "nce"])
def test_one_sgd_step_lowers_the_loss_on_the_same_batch(objective):
    method = _build(objective=objective).train()
    batch, step = _batch(), _step()
    banks = [method.bank_l.rows.clone(), method.bank_ab.rows.clone()]
    out = method(batch, step)
    with torch.no_grad():
        method.bank_l.rows.copy_(banks[0])
        method.bank_ab.rows.copy_(banks[1])
    optimizer = torch.optim.SGD(param_groups(method, weight_decay=0.0, exclude_bias_and_norm=True), lr=LR)
    optimizer.zero_grad(set_to_none=True)
    out.loss.backward()
    assert all(net.conv1.weight.grad is not None for net in (method.backbone.l, method.backbone.ab))
    optimizer.step()
    with torch.no_grad():
        after = method(batch, step).loss
    assert after.item() < out.loss.item() - 1e-4
