"""Per-step schedules as arrays indexed by the global step (as in DINO's `cosine_scheduler`).

A training loop reads `schedule[step]` for the learning rate, weight decay or EMA momentum of
each step; resuming from a checkpoint only needs the step. Conventions:

- Warmup is linear from `warmup_start` at step 0 towards `base`, which is reached at step
  `warmup_steps`, the first cosine step (so `base` is not repeated, unlike DINO's `linspace`).
- The cosine part runs over the remaining `n` steps with progress t / (n - 1), so its first value
  is `base` and its last value is exactly `final`. DINO, SimCLR and BYOL use t / n, which stops
  one step short of `final`; the difference per step is O(1/n^2) of the range.
"""

from __future__ import annotations

import math
import operator

import numpy as np

SCALE_RULES = ("linear", "sqrt", "none")


def _count(name: str, value: int, minimum: int) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _cosine(start: float, end: float, n: int) -> np.ndarray:
    """`n` values from `start` to `end` (both included) along half a cosine; [start] if n == 1."""
    progress = np.arange(n, dtype=np.float64) / max(n - 1, 1)
    return end + (start - end) * 0.5 * (1.0 + np.cos(np.pi * progress))


def warmup_cosine(base: float, final: float, total_steps: int, warmup_steps: int = 0,
                  warmup_start: float = 0.0) -> np.ndarray:
    """Linear warmup from `warmup_start` to `base` over `warmup_steps`, then cosine to `final`.

    Returns `total_steps` float64 values: `[warmup_start + (base - warmup_start) * t / warmup_steps
    for t < warmup_steps]` followed by the cosine from `base` (at step `warmup_steps`) to `final`
    (at step `total_steps - 1`). With a single cosine step that step is `base`; with
    `warmup_steps == total_steps` the schedule is all warmup and never reaches `base`.
    """
    total_steps = _count("total_steps", total_steps, 1)
    warmup_steps = _count("warmup_steps", warmup_steps, 0)
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps ({total_steps}), got {warmup_steps}")
    warmup = warmup_start + (base - warmup_start) * np.arange(warmup_steps, dtype=np.float64) / max(
        warmup_steps, 1)
    return np.concatenate([warmup, _cosine(base, final, total_steps - warmup_steps)])


def cosine_to_one(base: float, total_steps: int) -> np.ndarray:
    """EMA (target network) momentum: `1 - (1 - base) * (cos(pi * t / T) + 1) / 2`, T = total - 1.

    BYOL's tau schedule and MoCo v3's momentum schedule: `base` at step 0 (e.g. 0.99 or 0.996),
    exactly 1.0 at the last step (a single step gives [base]).
    """
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"base must be in [0, 1], got {base}")
    total_steps = _count("total_steps", total_steps, 1)
    return _cosine(base, 1.0, total_steps)


def constant(value: float, total_steps: int) -> np.ndarray:
    """`total_steps` copies of `value` (float64)."""
    total_steps = _count("total_steps", total_steps, 1)
    return np.full(total_steps, value, dtype=np.float64)


def scale_lr(base_lr: float, batch_size: int, rule: str, reference: int = 256) -> float:
    """The learning rate for a batch size.

    - "linear": `base_lr * batch_size / reference` (Goyal et al.; SimCLR 0.3 * B / 256, BYOL,
      MoCo, SimSiam 0.05 * B / 256).
    - "sqrt": `base_lr * sqrt(batch_size)` (SimCLR's 0.075 * sqrt(B); `reference` is not used).
    - "none": `base_lr`.
    """
    batch_size = _count("batch_size", batch_size, 1)
    reference = _count("reference", reference, 1)
    if rule == "linear":
        return float(base_lr) * batch_size / reference
    if rule == "sqrt":
        return float(base_lr) * math.sqrt(batch_size)
    if rule == "none":
        return float(base_lr)
    raise ValueError(f"rule must be one of {', '.join(SCALE_RULES)}; got {rule!r}")
