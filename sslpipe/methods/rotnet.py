"""RotNet (Gidaris, Singh, Komodakis 2018, https://arxiv.org/abs/1803.07728): predict by how many
quarter turns a crop was rotated, a 4-way classification.

The targets are made here, on the device, from the loader's one square view (crop + flip only, as
the reference): `rotations="all"` stacks the four exact rotations of every crop into one batch of
4B (gidariss/FeatureLearningRotNet `dataloader.py`, and mmselfsup's `RotationWithLabels`), so that
every BatchNorm sees all four; `rotations="one"` turns each crop by one quarter-turn count drawn
from the step's generator (VISSL's `ImgRotatePil`; resume stays exact). `torch.rot90` is an exact
index permutation: no resampling, no corners. Label k is k quarter turns counter-clockwise (k = 1:
the reference's `flipud(transpose(img))`, numpy's `rot90`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from sslpipe.methods.base import Method, Step, StepOutput
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models import mlp
from sslpipe.pipeline.batch import Batch

TURNS = 4


@dataclass(frozen=True)
class RotNetConfig:
    rotations: Literal["all", "one"] = "all"  # all four of each crop (the reference), or one random
    # Hidden widths between the pooled features and the 4 logits: () is one Linear (VISSL's and
    # mmselfsup's ResNet-50 head); the reference AlexNet's fc block is 4096-4096.
    head: tuple[int, ...] = ()

    def __post_init__(self):
        if self.rotations not in ("all", "one"):
            raise ValueError(f"rotations must be all or one, got {self.rotations!r}")
        if self.head and min(self.head) < 1:
            raise ValueError(f"head widths must be >= 1, got {list(self.head)}")


def rotated(images: torch.Tensor, rotations: str, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, S, S) square images -> the rotated images and their int64 labels (quarter turns,
    counter-clockwise): (4B, C, S, S) and (4B,) ordered turn-major (all images at 0, then at 90, ...)
    for "all"; (B, C, S, S) and (B,) for "one", each image turned by a count drawn from `generator`."""
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"RotNet needs square views (a rotated copy keeps the shape), got "
                         f"{images.shape[-2]} x {images.shape[-1]}")
    batch = images.shape[0]
    if rotations == "all":
        labels = torch.arange(TURNS, device=images.device).repeat_interleave(batch)
        return torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(TURNS)]), labels
    labels = torch.randint(TURNS, (batch,), generator=generator, device=images.device)
    out = images
    for k in range(1, TURNS):  # a select per turn: no gather, no host sync
        out = torch.where((labels == k).view(-1, 1, 1, 1), torch.rot90(images, k, dims=(-2, -1)), out)
    return out, labels


class RotNet(Method):
    Config = RotNetConfig

    def __init__(self, backbone, config: RotNetConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        dims = [backbone.num_features, *config.head, TURNS]
        # mlp(): Linear + BN + ReLU per hidden layer, a plain Linear (with bias) last.
        self.classifier = mlp(dims)

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the rotations are made from one square crop per image")

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, S, S) view; loss = CE over the 4 rotations, mean over 4B (or B)."""
        images, labels = rotated(batch.views[0], self.config.rotations, step.generator)
        logits = self.classifier(self.backbone(images)).float()    # one BN batch over every rotation
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(1) == labels).float().mean().detach()
        return StepOutput(loss, {"rotation_accuracy": accuracy, "rotated_images": float(labels.numel())})

    def preview(self, batch: Batch, step: Step) -> list[list[tuple[str, torch.Tensor]]]:
        """Per image: its rotated copies (one, or the four) with their labels."""
        images, labels = rotated(batch.views[0], self.config.rotations, step.generator)
        copies = len(labels) // len(batch.views[0])
        per_image = images.view(copies, -1, *images.shape[1:]).transpose(0, 1)   # turn-major -> per image
        label = labels.view(copies, -1).t().tolist()
        return [[(f"label {k}: {90 * k} deg ccw", image) for k, image in zip(label[i], per_image[i])]
                for i in range(len(per_image))]
