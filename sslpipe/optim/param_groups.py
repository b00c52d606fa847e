"""Optimizer parameter groups: weight-decay / LARS exclusion and fixed learning rates.

`param_groups(model, ...)` splits the trainable parameters into at most four groups (excluded
or not, fixed learning rate or not) that `torch.optim.SGD` and `sslpipe.optim.lars.LARS`
accept as they are; `apply_schedule(optimizer, lr, wd)` writes one step's schedule values into
them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, *, weight_decay: float, exclude_bias_and_norm: bool,
                 fixed_lr_prefixes: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Groups of `model`'s trainable parameters, in module order, none empty.

    Every group has the keys `params`, `names` (the parameters' qualified names), `weight_decay`,
    `lars_exclude` and `fixed_lr`:

    - With `exclude_bias_and_norm`, every parameter with `ndim <= 1` goes to a group with
      `weight_decay=0.0` and `lars_exclude=True` (no weight decay, no LARS trust ratio), as in
      SimCLR, BYOL, MoCo v3 and DINO. Without it (SimSiam: wd on BN too) all groups get
      `weight_decay` and `lars_exclude=False`.
    - Parameters whose name starts with one of `fixed_lr_prefixes` get `fixed_lr=True`: the
      schedule leaves their learning rate at its initial value (SimSiam's predictor). The test
      is a plain `str.startswith`; write "predictor." to leave out "predictor2.weight".
    """
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if isinstance(fixed_lr_prefixes, str):
        fixed_lr_prefixes = (fixed_lr_prefixes,)
    prefixes = tuple(fixed_lr_prefixes)

    groups: dict[tuple[bool, bool], dict[str, Any]] = {}  # insertion order = first appearance
    for name, p in model.named_parameters():  # module order; shared parameters appear once
        if not p.requires_grad:
            continue
        # Biases and normalisation weights (BatchNorm/LayerNorm/GroupNorm gamma and beta) are
        # exactly the 1-D parameters, while conv and linear weights are >= 2-D (0-D scalars such
        # as a learnable temperature count as excluded too). MoCo v3 (`p.ndim > 1`), DINO
        # (`len(param.shape) == 1`) and Barlow Twins decide by shape; SimCLR and BYOL match names
        # ("batch_normalization", "bias"; "b", "norm"), which selects the same tensors in their
        # models. The shape rule needs no module types or naming conventions.
        excluded = exclude_bias_and_norm and p.ndim <= 1
        fixed = name.startswith(prefixes) if prefixes else False
        group = groups.get((excluded, fixed))
        if group is None:
            group = groups[(excluded, fixed)] = {
                "params": [], "names": [], "weight_decay": 0.0 if excluded else float(weight_decay),
                "lars_exclude": excluded, "fixed_lr": fixed,
            }
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def apply_schedule(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float | None = None) -> None:
    """Set this step's learning rate and (when given) weight decay in every parameter group.

    Groups with `fixed_lr` keep `group["initial_lr"]` (recorded from `group["lr"]` the first time,
    for every group, the key torch's LR schedulers use). `weight_decay` is written only into the
    groups without `lars_exclude`: excluded parameters (biases, norms) keep no weight decay.
    """
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
        group["lr"] = group["initial_lr"] if group.get("fixed_lr", False) else lr
        if weight_decay is not None and not group.get("lars_exclude", False):
            group["weight_decay"] = weight_decay
