"""Optimizer tools used by the methods, the training loop and the evaluation protocols: LARS,
parameter groups (weight-decay / LARS exclusion, fixed learning rates) and per-step schedules.

`OPTIMIZERS` is the registry behind a recipe's `optim.name`: name -> builder
`(param_groups, lr, momentum, weight_decay, eta, beta2) -> torch.optim.Optimizer` (each takes
what it uses: LARS's trust coefficient `eta`, Adam's `momentum` as beta1 and `beta2`).
"""

from __future__ import annotations

import torch

from sslpipe.optim.lars import LARS
from sslpipe.optim.param_groups import apply_schedule, param_groups
from sslpipe.optim.schedules import SCALE_RULES, constant, cosine_to_one, scale_lr, warmup_cosine


def _lars(groups, *, lr: float, momentum: float, weight_decay: float, eta: float,
          beta2: float) -> torch.optim.Optimizer:
    return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta)


def _sgd(groups, *, lr: float, momentum: float, weight_decay: float, eta: float,
         beta2: float) -> torch.optim.Optimizer:
    # foreach: torch's default on CUDA tensors, said so that a CPU run counts the same launches
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


def _adam(groups, *, lr: float, momentum: float, weight_decay: float, eta: float,
          beta2: float) -> torch.optim.Optimizer:
    # Weight decay as an L2 term in the gradient (torch's Adam, Caffe's and the CPC/colorization codes').
    return torch.optim.Adam(groups, lr=lr, betas=(momentum, beta2), weight_decay=weight_decay, foreach=True)


OPTIMIZERS = {"lars": _lars, "sgd": _sgd, "adam": _adam}

__all__ = ["LARS", "OPTIMIZERS", "SCALE_RULES", "apply_schedule", "constant", "cosine_to_one",
           "param_groups", "scale_lr", "warmup_cosine"]
