"""ResNet backbones: torchvision's exact state-dict layout, initialisation, shapes, memory formats."""

import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from sslpipe.errors import SslpipeError
from sslpipe.models import build_backbone, resnet18, resnet50
from sslpipe.models.resnet import BasicBlock, Bottleneck

# key -> shape of torchvision's resnet18() / resnet50(), transcribed from torchvision/models/resnet.py.
TORCHVISION = json.loads((Path(__file__).parent / "torchvision_resnet_keys.json").read_text())
BUILDERS = {"resnet18": resnet18, "resnet50": resnet50}
NUM_FEATURES = {"resnet18": 512, "resnet50": 2048}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: intra-op threads only add OpenMP spin-waits, which crawl on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    built.cache_clear()


@functools.cache
def built(name: str, **options) -> nn.Module:
    """One model per (name, options), shared by the tests that only read it; ResNet-50 is slow to init."""
    torch.manual_seed(0)
    return BUILDERS[name](**options).eval()


def layout(model: nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in model.state_dict().items()}


@pytest.mark.parametrize("name", BUILDERS)
def test_state_dict_matches_torchvision(name):
    got = layout(built(name, num_classes=1000))
    assert list(got) == list(TORCHVISION[name])  # same keys in the same order
    assert got == TORCHVISION[name]


@pytest.mark.parametrize("name", BUILDERS)
def test_without_classes_there_is_no_fc(name):
    model = built(name)
    expected = {k: v for k, v in TORCHVISION[name].items() if not k.startswith("fc.")}
    assert layout(model) == expected
    assert isinstance(model.fc, nn.Identity)
    assert model.num_features == NUM_FEATURES[name]


@pytest.mark.parametrize("name", BUILDERS)
def test_small_images_changes_only_the_stem_conv(name):
    model = built(name, num_classes=1000, small_images=True)
    expected = dict(TORCHVISION[name], **{"conv1.weight": [64, 3, 3, 3]})
    assert layout(model) == expected
    assert isinstance(model.maxpool, nn.Identity)
    assert isinstance(built(name).maxpool, nn.MaxPool2d)


def test_parameter_counts_match_torchvision():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(built("resnet18", num_classes=1000)) == 11_689_512
    assert count(built("resnet50", num_classes=1000)) == 25_557_032


def test_fc_is_a_plain_linear():
    fc = resnet18(num_classes=10).fc
    assert type(fc) is nn.Linear and fc.in_features == 512 and fc.out_features == 10 and fc.bias is not None


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("zero", [False, True])
def test_initialisation(name, zero):
    model = built(name, zero_init_residual=zero) if zero else built(name)
    last_bn = set()
    for block_name, block in model.named_modules():
        if isinstance(block, (BasicBlock, Bottleneck)):
            last_bn.add(f"{block_name}.{'bn2' if isinstance(block, BasicBlock) else 'bn3'}")
    assert len(last_bn) == (8 if name == "resnet18" else 16)
    for module_name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.bias == 0)
            assert torch.all(m.weight == (0 if zero and module_name in last_bn else 1)), module_name
        elif isinstance(m, nn.Conv2d):  # kaiming normal, fan_out, relu: std = sqrt(2 / fan_out)
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            if m.weight.numel() >= 4096:
                std = m.weight.std().item()
                assert abs(std / (2 / fan_out) ** 0.5 - 1) < 0.1, module_name


def test_zero_init_makes_blocks_identity_like():
    """With the last BN gamma zeroed, each block is relu(shortcut) at init."""
    model = built("resnet18", zero_init_residual=True)
    x = torch.randn(2, 64, 8, 8).relu()
    block = model.layer1[0]
    assert torch.equal(block(x), x)


@pytest.mark.parametrize(
    ("name", "size", "small", "batch"),
    [("resnet18", 224, False, 1), ("resnet18", 32, True, 2), ("resnet50", 64, False, 2),
     ("resnet50", 32, True, 2)],
)
def test_output_shapes(name, size, small, batch):
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    model = build_backbone(name, small_images=small).eval()
    with torch.no_grad():
        assert model(x).shape == (batch, NUM_FEATURES[name])
        model.fc = nn.Linear(model.num_features, 7)  # what resnet50(num_classes=7) has
        assert model(x).shape == (batch, 7)


def test_small_images_stem_keeps_resolution():
    model = built("resnet18", small_images=True)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        assert stem.shape == (1, 64, 32, 32)
        assert model.layer4(model.layer3(model.layer2(model.layer1(stem)))).shape == (1, 512, 4, 4)


@pytest.mark.parametrize(("name", "size"), [("resnet18", 64), ("resnet50", 32)])
def test_channels_last_matches_contiguous(name, size):
    torch.manual_seed(0)
    model = BUILDERS[name](num_classes=10).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        got = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_channels_last_trains():
    torch.manual_seed(0)
    model = resnet18(small_images=True).to(memory_format=torch.channels_last).train()
    x = torch.randn(2, 3, 16, 16).to(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_is_deterministic():
    model = built("resnet18", small_images=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_unknown_backbone_names_the_choices():
    with pytest.raises(SslpipeError, match=r"'resnet34'.*resnet18, resnet18_layernorm, resnet50"):
        build_backbone("resnet34")


def test_the_layer_norm_resnet_has_group_norms_of_one_group_and_refuses_other_norms():
    net = build_backbone("resnet50_layernorm")
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert len(norms) == 53 and all(m.num_groups == 1 for m in norms)  # every BatchNorm of a ResNet-50
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    batch_norm_only = ("running_mean", "running_var", "num_batches_tracked")
    assert set(net.state_dict()) == {k for k in resnet50().state_dict() if not k.endswith(batch_norm_only)}
    with pytest.raises(ValueError, match="norm must be batch or layer, got 'group'"):
        resnet18(norm="group")


@pytest.mark.parametrize("make", [resnet18, resnet50])
def test_dilation_keeps_the_keys_and_weights_and_trades_stride_for_resolution(make):
    """output_stride 8 or 16 as torchvision's replace_stride_with_dilation: the same state dict
    loads, the stages before the dilated ones compute the same, the map is 4x or 2x finer, and the
    dilation grows by the stride it replaces from each dilated stage's second block on."""
    torch.manual_seed(0)
    plain = make().eval()
    x = torch.randn(1, 3, 64, 64)
    for stride in (16, 8):
        dilated = make(output_stride=stride).eval()
        dilated.load_state_dict(plain.state_dict())
        assert dilated.output_stride == stride
        with torch.no_grad():
            assert dilated.feature_map(x).shape[-1] == 64 // stride
            early = [m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))) for m in (plain, dilated)]
            assert torch.equal(*early)
        convs = [m for m in dilated.layer4.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
        assert convs[0].dilation == ((1, 1) if stride == 16 else (2, 2))
        assert convs[-1].dilation[0] == 32 // stride
        assert all(c.stride == (1, 1) and c.padding == c.dilation for c in convs)
    with pytest.raises(ValueError, match="output_stride"):
        make(output_stride=4)
