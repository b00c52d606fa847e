"""The start-up estimate of saved activations: measured on meta, it matches a real forward's."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sslpipe.models import build_backbone
from sslpipe.pipeline.spec import load_spec
from sslpipe.train import memory
from sslpipe.train.config import load_config
from sslpipe.train.memory import FRACTION, GIB, activation_bytes, memory_warning, recipe_memory_warning

ROOT = Path(__file__).parents[2]

H100 = SimpleNamespace(total_memory=81559 * 2**20, name="NVIDIA H100 80GB HBM3")  # as nvidia-smi reports


def real_saved_bytes(model, images, autocast=False):
    """What autograd saves in a real CPU forward: distinct storages by address, parameters left out."""
    parameters = {p.data_ptr() for p in model.parameters()}
    saved = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        model(images)
    return sum(saved.values())


@pytest.mark.parametrize("name, small_images", [("resnet18", False), ("resnet18", True), ("resnet50", False)])
def test_the_meta_estimate_equals_a_real_fp32_forward(name, small_images):
    torch.manual_seed(0)
    model = build_backbone(name, small_images=small_images).train()
    real = real_saved_bytes(model, torch.randn(2, 3, 64, 64))
    estimate = activation_bytes(name, small_images, [(64, 1)], 2, torch.float32)
    assert estimate == pytest.approx(real, rel=0.01)


def test_per_image_bytes_match_a_real_bf16_autocast_forward():
    # Per image, not in all: autocast also saves one bf16 copy of the weights (not counted).
    # BatchNorm under autocast saves its bf16 input, as the bf16 model on meta does.
    model = build_backbone("resnet18").train()
    real = [real_saved_bytes(model, torch.randn(n, 3, 64, 64).bfloat16(), autocast=True) for n in (2, 4)]
    estimate = [activation_bytes("resnet18", False, [(64, 1)], n, torch.bfloat16) for n in (2, 4)]
    assert estimate[1] - estimate[0] == real[1] - real[0]
    assert activation_bytes("resnet18", False, [(64, 1)], 2, torch.float32) > 1.8 * estimate[0]


def test_linear_in_the_batch_and_the_view_count():
    def estimate(views, batch):
        return activation_bytes("resnet18", True, views, batch, torch.bfloat16)

    one, two, eight = estimate([(32, 1)], 1), estimate([(32, 1)], 2), estimate([(32, 1)], 8)
    assert eight - two == 6 * (two - one) > 0
    assert estimate([(32, 2)], 4) == estimate([(32, 1)], 8) == estimate([(32, 1), (32, 1)], 4)
    assert estimate([(32, 1), (16, 2)], 4) > estimate([(32, 1)], 4)


def test_swav_multicrop_resnet50_at_512_images_per_gpu():
    # SwAV's recipe at batch 4096 on one 8-GPU node: 512 images x (2 x 224 + 6 x 96) per GPU.
    estimate = activation_bytes("resnet50", False, [(224, 2), (96, 6)], 512, torch.bfloat16)
    assert 64 * GIB < estimate < 65.5 * GIB  # 64.7 GiB: 41.7 MiB per 224 px image, 7.7 per 96 px


def test_the_warning_names_the_settings_beyond_the_gpus_share(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    swav_8_gpus = activation_bytes("resnet50", False, [(224, 2), (96, 6)], 512, torch.bfloat16)
    warning = memory_warning(swav_8_gpus, "cuda:0")
    assert warning.startswith("sslpipe: warning:") and "64.7 GiB per process" in warning
    assert "79.6 GiB of cuda:0 (NVIDIA H100 80GB HBM3)" in warning
    for setting in ("data.batch_size", "more GPUs", "data.pipeline"):
        assert setting in warning
    assert memory_warning(swav_8_gpus // 2, "cuda:0") is None  # 16 GPUs: 256 images each
    limit = int(FRACTION * H100.total_memory)
    assert memory_warning(limit, "cuda") is None and memory_warning(limit + 1, "cuda") is not None
    assert memory_warning(10 * H100.total_memory, "cpu") is None
    assert memory_warning(10 * H100.total_memory, torch.device("cpu")) is None


def test_the_recipe_warning_as_the_loop_runs_it(monkeypatch):
    config = load_config(ROOT / "recipes" / "swav_r50_imagenet.yaml")
    spec = load_spec(config.data.pipeline)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: H100)
    assert "64.7 GiB per process" in recipe_memory_warning(config, spec, 8, "cuda:0", "bf16")
    assert recipe_memory_warning(config, spec, 16, "cuda:0", "bf16") is None  # 2 nodes
    # fp32: under 2x, since the max-pool's int64 indices are the same in either dtype
    assert "127.1 GiB per process" in recipe_memory_warning(config, spec, 8, "cuda:0", "no")
    monkeypatch.setattr(memory, "activation_bytes", None)  # off CUDA nothing is estimated
    assert recipe_memory_warning(config, spec, 1, "cpu", "no") is None
