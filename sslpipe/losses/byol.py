"""BYOL's regression loss (Grill et al. 2020, https://arxiv.org/abs/2006.07733, Eq. 2).

Follows `regression_loss` and `l2_normalize` in google-deepmind/deepmind-research
byol/utils/helpers.py, as `ByolExperiment.loss_fn` (byol_experiment.py) uses them: per sample
||q/||q|| - z'/||z'|| ||^2 = 2 - 2 cos(q, z'), the two directions added per sample, then the
mean over the batch. BYOL's loss is `regression_loss(p1, z2) + regression_loss(p2, z1)`, in [0, 8].
"""

import torch
from torch import Tensor


def _l2_normalize(x: Tensor) -> Tensor:
    # As the official l2_normalize: x * rsqrt(max(sum(x^2), 1e-12)).
    return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True).clamp_min(1e-12))


def regression_loss(p: Tensor, z: Tensor) -> Tensor:
    """mean_i ||p_i/||p_i|| - z_i/||z_i|| ||^2 (= 2 - 2 cos(p_i, z_i)).

    Args:
        p: (N, D) online predictions of one view.
        z: (N, D) target projections of the other view. Detached here: the target network learns
            only by EMA, never by gradient (the official code differentiates with respect to the
            online parameters only; its stop_gradient says the same).

    Returns:
        Scalar in [0, 4], float32 (autocast off; the inputs are cast to float32).
    """
    if p.ndim != 2 or p.shape != z.shape:
        raise ValueError(f"regression_loss expects p and z of one (N, D) shape, got {tuple(p.shape)} and "
                         f"{tuple(z.shape)}")
    with torch.autocast(device_type=p.device.type, enabled=False):
        difference = _l2_normalize(p.float()) - _l2_normalize(z.detach().float())
        return difference.square().sum(dim=-1).mean()
