"""InstDisc / NPID (Wu et al. 2018, https://arxiv.org/abs/1805.01978): every image is its own class.
A memory bank keeps one 128-d feature per training image; each image's feature is contrasted with
its own bank row against K rows drawn at random, by NCE (the paper) or a softmax (the updated
model), and then moves its row: v_i <- normalize(0.5 v_i + 0.5 f_i).

Follows zhirongw/lemniscate.pytorch (main.py, lib/NCEAverage.py, lib/NCECriterion.py,
lib/LinearAverage.py). The bank's rows are the global sample indices, so the method needs the
number of training samples (`samples`, passed by the loop).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslpipe import distributed
from sslpipe.losses import bank_scores, bank_softmax, nce_loss, nce_normalizer
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.parts import MemoryBank
from sslpipe.methods.parts.state import Part
from sslpipe.methods.views import ViewsNeeded
from sslpipe.optim.schedules import constant
from sslpipe.pipeline.batch import Batch

Objective = Literal["nce", "softmax", "full_softmax"]


@dataclass(frozen=True)
class InstDiscConfig:
    # nce: the paper (NCE, Z estimated on the first batch); softmax: CE over the positive and the K
    # negatives (the README's updated model: 65,536 negatives, 58.5% linear); full_softmax: CE over
    # every bank row (lemniscate's --nce-k 0, its CIFAR setting; `negatives` is then not used).
    objective: Objective = "nce"
    negatives: int = 4096           # K, drawn uniformly (with replacement) for each sample
    temperature: float = 0.07
    bank_momentum: float = 0.5      # v <- normalize(m v + (1 - m) f)
    dim: int = 128                  # the feature (and bank row) size after the linear head

    def __post_init__(self):
        check_bank_settings(self.negatives, self.temperature, self.bank_momentum, self.dim)


def check_bank_settings(negatives: int, temperature: float, bank_momentum: float, dim: int) -> None:
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= bank_momentum < 1:
        raise ValueError(f"bank_momentum must be in [0, 1) (1 never moves the bank), got {bank_momentum}")
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")


def check_samples(samples: int | None, negatives: int | None) -> int:
    """The number of training samples, refused when missing, or not above `negatives` (None: not
    sampled)."""
    if samples is None:
        raise ValueError("a memory-bank method needs samples= (the number of training samples over all "
                         "shards, one bank row each); the training loop passes it")
    if samples < 2:
        raise ValueError(f"a memory bank needs at least 2 training samples, got samples={samples}")
    if negatives is not None and negatives >= samples:
        raise ValueError(f"method.negatives ({negatives}) must be fewer than the {samples} training samples "
                         f"(the bank's rows, drawn with replacement); lower it")
    return samples


def draw_rows(index: torch.Tensor, negatives: int, samples: int, step: Step) -> torch.Tensor:
    """(B, K+1) bank rows to score: column 0 each sample's own (`index`), then K drawn uniformly
    from the step's generator on the device (no host sync; the reference uses an alias sampler over
    uniform probabilities, the same distribution)."""
    noise = torch.randint(samples, (index.shape[0], negatives), generator=step.generator, device=index.device)
    return torch.cat([index.view(-1, 1), noise], dim=1)


class NormalizingConstant(Part):
    """NCE's Z, estimated once on the first batch as mean(exp(s/T)) x N and then fixed (the reference's
    `params[2]`, -1 until set). Replicated: the first batch's estimate is averaged over the processes
    (each holds the same number of samples), which is the reference's value, computed on its whole
    (DataParallel) batch. A host mirror says whether it is set, so later steps read it without a sync."""

    def __init__(self):
        super().__init__(per_rank=False)
        self.add_state("value", torch.tensor(-1.0))
        self._set = False

    def resolve(self, scores: torch.Tensor, temperature: float, samples: int) -> torch.Tensor:
        if not self._set:
            estimate = distributed.all_reduce_sum_(nce_normalizer(scores, temperature, samples))
            self.value.copy_(estimate / distributed.world_size())
            self._set = True
        return self.value

    def state_loaded(self) -> None:
        self._set = bool(self.value >= 0)  # once, when a checkpoint is loaded


class InstDisc(Method):
    Config = InstDiscConfig

    def __init__(self, backbone, config: InstDiscConfig, *, global_batch: int, samples: int | None = None):
        super().__init__(backbone)
        self.config = config
        sampled = config.objective != "full_softmax"
        self.samples = check_samples(samples, config.negatives if sampled else None)
        self.head = nn.Linear(backbone.num_features, config.dim)  # lemniscate: fc -> low_dim, then L2
        self.bank = MemoryBank(self.samples, config.dim)  # replicated: every process applies every update
        if config.objective == "nce":
            self.z = NormalizingConstant()

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="each image's one view is contrasted with its memory bank row")

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        return {"bank_momentum": constant(self.config.bank_momentum, total_steps)}

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, H, W) view; batch.index: its (B,) bank rows."""
        config, index = self.config, batch.index
        f = F.normalize(self.head(self.backbone(batch.views[0])).float(), dim=1)
        metrics = {}
        if config.objective == "full_softmax":
            # A copy: the bank is updated in place below, before the backward that needs its rows.
            with torch.autocast(device_type=f.device.type, enabled=False):
                scores = f @ self.bank.rows.detach().clone().t()  # (B, N)
            loss = bank_softmax(scores, config.temperature, target=index)
            positive = scores.gather(1, index.view(-1, 1))
        else:
            scores = bank_scores(f, self.bank(draw_rows(index, config.negatives, self.samples, step)))
            if config.objective == "nce":
                z = self.z.resolve(scores, config.temperature, self.samples)
                loss = nce_loss(scores, config.temperature, z, self.samples)
                metrics["nce_z"] = z.detach().clone()
            else:
                loss = bank_softmax(scores, config.temperature)
            positive = scores[:, :1]
        # After the loss (whose rows were copied out of the bank): each sample's row moves to it.
        self.bank.update(index, f, step["bank_momentum"])
        return StepOutput(loss, {"positive_score": positive.detach().mean(), **metrics, **health_metrics(f)})
