"""Helpers shared by several test modules (import with ``from testing_utils import ...``).

Reference implementations that the library does not need live here, next to the tests that
compare the library's fast routes against them.
"""

from __future__ import annotations

import torch
from torch import Tensor


def train_influence_by_gradients(objective, data, s_test: Tensor) -> Tensor:
    """The scores of :func:`hf_pairdots.influence.train_influence` by explicit per-example
    gradients: I(z_i, m_q) = -s_qᵀ ∇θ L(z_i; θ) (Eq. 4-5), the reference for the JVP route.

    Args:
        objective: the training loss (``per_example_loss(theta, batch) -> (B,)``, ``theta``).
        data: its prepared training data (``batches`` with an ``index`` entry, ``size``).
        s_test: ``(Q, P)``, on any device (moved to the parameters').

    Returns:
        ``(Q, n)`` on the CPU, in the order of the prepared texts. Cost: one backward pass per
        training example.
    """
    s_test = s_test.to(objective.theta.device)
    out = torch.empty(s_test.shape[0], data.size, dtype=s_test.dtype, device=s_test.device)
    for batch in data.batches:
        for j, index in enumerate(batch["index"].tolist()):
            g = torch.func.grad(lambda th: objective.per_example_loss(th, batch)[j])(objective.theta)
            out[:, index] = -(s_test @ g)
    return out.cpu()
