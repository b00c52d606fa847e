"""CMC, Contrastive Multiview Coding (Tian, Krishnan, Isola 2020, https://arxiv.org/abs/1906.05849):
the L and ab channels of one crop are two views of the image. One encoder per view, a memory bank
per view; the L feature is contrasted with the ab bank's rows and the ab feature with the L bank's
(its own row the positive, K rows drawn at random the negatives), by a softmax over K+1 (the
recommended `--softmax`) or NCE; then both banks move their rows to the features.

Follows HobbitLong/CMC (train_CMC.py, NCE/NCEAverage.py, NCE/NCECriterion.py, models/resnet.py).
The backbone is the split network `sslpipe.models.cmc.CMCSplit` (`model.backbone: cmc_resnet50`,
or `cmc_resnet50_ycbcr` for Y vs CbCr): it converts the RGB view itself, so evaluation and export
use it like any backbone, on the concatenation of both encoders' features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch.nn.functional as F
from torch import nn

from sslpipe.losses import bank_scores, bank_softmax, nce_loss
from sslpipe.methods.base import Method, Step, StepOutput, health_metrics
from sslpipe.methods.instdisc import NormalizingConstant, check_bank_settings, check_samples, draw_rows
from sslpipe.methods.parts import MemoryBank
from sslpipe.methods.views import ViewsNeeded
from sslpipe.models.cmc import CMCSplit
from sslpipe.optim.schedules import constant
from sslpipe.pipeline.batch import Batch


@dataclass(frozen=True)
class CMCConfig:
    objective: Literal["softmax", "nce"] = "softmax"  # softmax: CE over K+1 (--softmax); nce: Z fixed
    negatives: int = 16384          # K (--nce_k); the released weights used 4096
    temperature: float = 0.07
    bank_momentum: float = 0.5
    dim: int = 128                  # feat_dim

    def __post_init__(self):
        check_bank_settings(self.negatives, self.temperature, self.bank_momentum, self.dim)


class CMC(Method):
    Config = CMCConfig

    def __init__(self, backbone, config: CMCConfig, *, global_batch: int, samples: int | None = None):
        if not isinstance(backbone, CMCSplit):
            raise ValueError(f"needs CMC's split network as the backbone (model.backbone: cmc_resnet18, "
                             f"cmc_resnet50, or their _ycbcr variants), not {type(backbone).__name__}")
        super().__init__(backbone)
        self.config = config
        self.samples = check_samples(samples, config.negatives)
        self.head_l = nn.Linear(backbone.l.num_features, config.dim)
        self.head_ab = nn.Linear(backbone.ab.num_features, config.dim)
        self.bank_l = MemoryBank(self.samples, config.dim)    # memory_l
        self.bank_ab = MemoryBank(self.samples, config.dim)   # memory_ab
        if config.objective == "nce":
            self.z_l, self.z_ab = NormalizingConstant(), NormalizingConstant()

    def views_needed(self) -> ViewsNeeded:
        return ViewsNeeded(count=1, why="the two views are the L and ab channels of one crop, split inside "
                                        "the backbone")

    def schedules(self, total_steps: int) -> dict[str, np.ndarray]:
        return {"bank_momentum": constant(self.config.bank_momentum, total_steps)}

    def forward(self, batch: Batch, step: Step) -> StepOutput:
        """batch.views: one (B, 3, H, W) RGB view (ImageNet-normalized); batch.index: its bank rows."""
        config, index = self.config, batch.index
        h_l, h_ab = self.backbone.encode(batch.views[0])
        z_l = F.normalize(self.head_l(h_l).float(), dim=1)
        z_ab = F.normalize(self.head_ab(h_ab).float(), dim=1)
        rows = draw_rows(index, config.negatives, self.samples, step)  # the same rows for both directions
        scores_l = bank_scores(z_l, self.bank_ab(rows))   # out_l: L against the ab bank
        scores_ab = bank_scores(z_ab, self.bank_l(rows))  # out_ab: ab against the L bank
        metrics = {}
        if config.objective == "nce":
            zl = self.z_l.resolve(scores_l, config.temperature, self.samples)
            zab = self.z_ab.resolve(scores_ab, config.temperature, self.samples)
            loss_l = nce_loss(scores_l, config.temperature, zl, self.samples)
            loss_ab = nce_loss(scores_ab, config.temperature, zab, self.samples)
            metrics = {"nce_z_l": zl.detach().clone(), "nce_z_ab": zab.detach().clone()}
        else:
            loss_l = bank_softmax(scores_l, config.temperature)
            loss_ab = bank_softmax(scores_ab, config.temperature)
        # After the losses (whose rows were copied out of the banks), as NCEAverage's update.
        self.bank_l.update(index, z_l, step["bank_momentum"])
        self.bank_ab.update(index, z_ab, step["bank_momentum"])
        return StepOutput(loss_l + loss_ab, {"loss_l": loss_l.detach(), "loss_ab": loss_ab.detach(),
                                             "positive_score_l": scores_l[:, 0].detach().mean(),
                                             "positive_score_ab": scores_ab[:, 0].detach().mean(),
                                             **metrics, **health_metrics(z_l)})
