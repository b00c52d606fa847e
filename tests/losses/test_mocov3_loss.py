"""`moco_v3_ctr` against float64 loops over the queries and their candidate keys."""

import math

import pytest
import torch

from sslpipe.losses import moco_v3_ctr


def _naive(q, k, temperature):
    """One process: mean over i of -log softmax_j(q_i . k_j / T)[i], times 2T, in float64 loops."""
    q, k = q.double().tolist(), k.double().tolist()

    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v]

    q, k = [unit(v) for v in q], [unit(v) for v in k]
    total = 0.0
    for i, qi in enumerate(q):
        logits = [sum(a * b for a, b in zip(qi, kj)) / temperature for kj in k]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(x - top) for x in logits))
        total += log_z - logits[i]
    return total / len(q) * 2 * temperature


@pytest.mark.parametrize("temperature", [1.0, 0.2])
def test_moco_v3_ctr_is_the_scaled_cross_entropy_against_every_key(temperature):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    loss = moco_v3_ctr(q, k, temperature)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(_naive(q, k, temperature), rel=1e-5)


def test_moco_v3_ctr_scale_2t_makes_the_gradient_independent_of_the_loss_value_scale():
    # With T = 1 the factor is 2: the same as 2 * the plain cross-entropy of the cosines.
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    qn, kn = torch.nn.functional.normalize(q, dim=1), torch.nn.functional.normalize(k, dim=1)
    plain = torch.nn.functional.cross_entropy(qn @ kn.t(), torch.arange(4))
    torch.testing.assert_close(moco_v3_ctr(q, k, 1.0), 2 * plain)


def test_moco_v3_ctr_keys_get_no_gradient_and_inputs_of_any_dtype():
    g = torch.Generator().manual_seed(2)
    q = torch.randn(4, 3, generator=g).requires_grad_()
    k = torch.randn(4, 3, generator=g).requires_grad_()
    moco_v3_ctr(q, k, 1.0).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None
    half = moco_v3_ctr(q.detach().bfloat16(), k.detach().bfloat16(), 1.0)
    assert half.dtype == torch.float32


def test_moco_v3_ctr_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="moco_v3_ctr"):
        moco_v3_ctr(torch.randn(4, 3), torch.randn(5, 3), 1.0)
