"""Denoising autoencoder: each corruption does what its strength says (Gaussian std, the share of
pixels salted, peppered or masked), per image and from the generator; the loss is the MSE / BCE of
the reconstruction against the clean crop; config refusals; one SGD step."""

import copy

import pytest
import torch
import torch.nn.functional as F

from sslpipe.methods import DAE, METHODS, Step
from sslpipe.models import resnet18
from sslpipe.pipeline.batch import Batch
from sslpipe.pretext.noise import corrupt

N, S = 6, 16
MAX = {"gaussian": 0.5, "salt_pepper": 0.3, "mask": 0.5}


def _clean(n=N, side=S, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed)) * 0.6 + 0.2


def test_each_kind_does_what_its_strength_says_per_image():
    clean = _clean(n=300, side=32)
    small = {**MAX, "gaussian": 0.1}   # clean in 0.2..0.8: a std up to 0.1 is hardly clipped
    for kind in MAX:
        noisy, kinds, strength = corrupt(clean, [kind], small, torch.Generator().manual_seed(1))
        assert (kinds == 0).all() and (0 <= strength).all() and (strength <= small[kind]).all()
        assert strength.std() > 0.2 * small[kind]                      # one strength per image
        for i in torch.argsort(strength)[-3:].tolist():                # the strongest: clearest statistics
            changed = (noisy[i] != clean[i]).any(0).float().mean()     # share of pixels touched
            if kind == "gaussian":
                assert (noisy[i] - clean[i]).std().item() == pytest.approx(strength[i].item(), rel=0.05)
            else:
                assert changed.item() == pytest.approx(strength[i].item(), abs=0.05)
                values = noisy[i][noisy[i] != clean[i]].unique()
                assert set(values.tolist()) <= ({0.0, 1.0} if kind == "salt_pepper" else {0.0})
    again = corrupt(clean, list(MAX), MAX, torch.Generator().manual_seed(1))
    first = corrupt(clean, list(MAX), MAX, torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert set(first[1].tolist()) == {0, 1, 2}                         # kinds drawn per image


def test_loss_is_the_mse_of_the_reconstruction_of_the_noisy_crop():
    assert METHODS["dae"] is DAE
    torch.manual_seed(0)
    method = DAE(resnet18(small_images=True), DAE.Config(side=S), global_batch=N).train()
    twin = copy.deepcopy(method)
    views = (_clean() - method.mean) / method.std
    out = method(Batch.from_views([views], names=["crop"]), Step(index=4))
    noisy, _, _ = twin.corrupted(views, Step(index=4))
    assert not torch.allclose(noisy, views)
    with torch.no_grad():
        reconstruction = twin.decoder(twin.backbone(noisy))
    assert reconstruction.shape == views.shape
    expected = ((reconstruction.double() - views.double()) ** 2).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_bce_targets_the_clean_crop_in_pixel_units_and_other_sides_are_resized():
    torch.manual_seed(0)
    method = DAE(resnet18(small_images=True), DAE.Config(side=8, loss="bce"), global_batch=N).train()
    twin = copy.deepcopy(method)
    clean = _clean()
    views = (clean - method.mean) / method.std
    out = method(Batch.from_views([views], names=["crop"]), Step(index=2))
    noisy, _, _ = twin.corrupted(views, Step(index=2))
    with torch.no_grad():
        logits = F.interpolate(twin.decoder(twin.backbone(noisy)), size=(S, S), mode="bilinear")
    p = torch.sigmoid(logits.double())
    expected = -(clean * p.log() + (1 - clean) * (1 - p).log()).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-4)


@pytest.mark.parametrize("field, value", [("noise", ("blur",)), ("noise", ()), ("mask", 1.5),
                                          ("gaussian", -1.0), ("loss", "l1"), ("side", 0)])
def test_config_refusals_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        DAE.Config(**{field: value})


def test_one_sgd_step_lowers_the_loss_on_the_same_batch():
    torch.manual_seed(0)
    method = DAE(resnet18(small_images=True), DAE.Config(side=S), global_batch=N).train()
    batch = Batch.from_views([(_clean(seed=3) - method.mean) / method.std], names=["crop"])
    optimizer = torch.optim.SGD(method.parameters(), lr=0.01)
    loss = method(batch, Step(index=1)).loss
    loss.backward()
    optimizer.step()
    with torch.no_grad():  # a fresh Step: the same noise again
        assert method(batch, Step(index=1)).loss.item() < loss.item() - 1e-4
