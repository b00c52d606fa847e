"""What autograd keeps for the backward of one step, estimated at start-up.

A recipe too large for its GPUs fails only at its first step, after the minutes of start-up, with
a bare CUDA out-of-memory error; `memory_warning(activation_bytes(...), device)` says so before,
and names the settings to change (`recipe_memory_warning` does both for a recipe as the loop runs
it). The bytes are measured, not modelled: the backbone runs on the `meta` device (shapes and
dtypes, no memory, no compute) while a saved-tensors hook adds up what autograd keeps, once at 1
and once at 2 images per view size; activations are linear in the batch.

    estimate = activation_bytes("resnet50", False, [(224, 2), (96, 6)], 512, torch.bfloat16)
    # 69.5e9 bytes (64.7 GiB): SwAV's multi-crop at 4096 images on 8 GPUs
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.overrides import TorchFunctionMode

from sslpipe.models import build_backbone

if TYPE_CHECKING:
    from sslpipe.pipeline.spec import PipelineSpec
    from sslpipe.train.config import Config

GIB = 2**30
# Of a GPU's memory, the share the saved activations may take: the rest of the step's peak is
# the weights, gradients and optimizer state, the backward's gradients in flight, cuDNN
# workspaces, DALI's decode and prefetch buffers and the photometric stage on its side stream,
# and the caching allocator's fragmentation: several GiB at the batch sizes that come near.
FRACTION = 0.8


def activation_bytes(backbone_name: str, small_images: bool, views: list[tuple[int, int]],
                     batch_per_process: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes autograd saves for the backward of the backbone in one training step of one process.

    `views`: (size, count) per view group, e.g. `[(224, 2), (96, 6)]` for SwAV's multi-crop:
    `count` batches of (batch_per_process, 3, size, size) go through the backbone with gradients.
    `dtype`: the compute dtype, bfloat16 under bf16 autocast (float32 without). Under autocast a
    convolution's input and a BatchNorm's input are saved in that dtype (BN keeps fp32 statistics),
    as in a model cast to it, which is what runs here. Not counted: the parameters (held anyway), the
    autocast copy of the weights (one per step, ~50 MB for ResNet-50) and the heads' activations
    (a few (B, D) matrices, well under 1% of a ResNet's).
    """
    with torch.device("meta"), _SkipRandomInit():
        backbone = build_backbone(backbone_name, small_images=small_images)
    backbone = backbone.to(dtype).train()
    counts: dict[int, int] = {}
    for size, count in views:  # one backbone call per size, as `encode_groups` makes
        counts[size] = counts.get(size, 0) + count
    total = 0
    for size, count in counts.items():
        one, two = (_saved_bytes(backbone, torch.empty(n, 3, size, size, device="meta", dtype=dtype))
                    for n in (1, 2))
        per_image = two - one
        total += (one - per_image) + per_image * batch_per_process * count  # BN statistics: once per call
    return total


def memory_warning(estimate_bytes: int, device: torch.device | str, fraction: float = FRACTION) -> str | None:
    """A warning naming the settings to change when `estimate_bytes` (per process, from
    `activation_bytes`) exceeds `fraction` of the GPU's memory; None within it, or off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    properties = torch.cuda.get_device_properties(device)
    total = properties.total_memory
    if estimate_bytes <= fraction * total:
        return None
    return (f"sslpipe: warning: the backbone's saved activations alone need about "
            f"{estimate_bytes / GIB:.1f} GiB per process, {estimate_bytes / total:.0%} of the "
            f"{total / GIB:.1f} GiB of {device} ({properties.name}): the first step will likely run out "
            f"of memory. Lower data.batch_size (global: each process takes batch_size / processes), "
            f"launch on more GPUs, or take fewer or smaller views (the counts and sizes of data.pipeline's "
            f"views)")


def recipe_memory_warning(config: Config, spec: PipelineSpec, processes: int, device: torch.device | str,
                          mixed_precision: str) -> str | None:
    """`memory_warning` for `config` as the loop runs it: `data.batch_size / processes` images of
    each of `spec`'s views per process, in the dtype of Accelerate's `mixed_precision` ("bf16",
    "fp16", "no"). Off CUDA, None without estimating (a CPU run has no device memory to run out of)."""
    if torch.device(device).type != "cuda":
        return None
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision, torch.float32)
    estimate = activation_bytes(config.model.backbone, config.model.small_images,
                                [(g.size, g.count) for g in spec.groups], config.data.batch_size // processes,
                                dtype)
    return memory_warning(estimate, device)


def _saved_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves in `model(images)`, parameters left out."""
    # A meta tensor has no data pointer: its storage's handle tells shared storages apart (an
    # in-place ReLU's output is also the next convolution's saved input).
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters:
            saved[storage._cdata] = storage.nbytes()
        return tensor  # held by the graph through the forward: no handle is reused meanwhile

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = model(images)
    del output
    return sum(saved.values())


class _SkipRandomInit(TorchFunctionMode):
    """No-op for the `*normal_` initialisers: values do not exist on meta, and torch's meta
    `normal_` imports torch._dynamo on first use (~2 s at start-up)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "").endswith("normal_"):
            return args[0]
        return func(*args, **(kwargs or {}))
