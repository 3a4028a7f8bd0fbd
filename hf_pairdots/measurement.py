"""Measurements m(θ) of a test example and their gradients ∇θ m, the left side of Eq. 4-5.

* :func:`loss_measurement_gradient`: ∇θ L(z_test) for Koh & Liang's I_up,loss (Eq. 4 chained);
* :func:`saliency_measurement` / :func:`saliency_measurement_gradient`: the saliency w_y(e) of
  Eq. 5 as a function of θ_S and its gradient (double backward through Eq. 2).
  :meth:`~hf_pairdots.loss.TrainLoss.saliency_gradients` picks the cheapest exact route for
  several measurements of one text.

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .autograd import ParameterSet
from .modeling import find_embedding_block, model_device
from .saliency import embedding_gradient, token_saliency

if TYPE_CHECKING:  # for annotations only: loss.py imports this module
    from .loss import TrainLoss


def loss_measurement_gradient(objective: TrainLoss, batch: dict) -> Tensor:
    """∇θ L(z_test; θ) for each test example of a prepared batch, shape ``(Q, P)``, on the
    parameters' device.

    With it, I(z, L_test) = -∇θL_testᵀ H⁻¹ ∇θL(z) is Koh & Liang's I_up,loss.
    Cost: Q backward passes.
    """
    return torch.stack([
        torch.func.grad(lambda th, i=i: objective.per_example_loss(th, batch)[i])(objective.theta)
        for i in range(len(batch["labels"]))
    ])


def saliency_measurement(model: nn.Module, params: ParameterSet, batch: dict, label: int,
                         token_positions: Sequence[int], *, mode: str = "gradient", target: str = "prob"):
    """m(θ) = saliency of the tokens ``token_positions`` of one test example for ``label``.

    The measurement of Eq. 5: the (summed) token saliency s(x_t) = Σ_j ∂S_y/∂e_t,j of
    Sec. 3.1, as a function of the flat θ_S, ``(P,) -> ()``; a word's measurement is the sum of
    its word pieces' saliencies. ``batch`` holds one example (tensors ``(1, L)``, on any device:
    moved to the model's). ``θ`` must live on the model's device.
    """
    block = find_embedding_block(model)
    device = model_device(model)
    y = torch.tensor([label], device=device)
    positions = torch.as_tensor(list(token_positions), dtype=torch.long, device=device)

    def measure(theta: Tensor) -> Tensor:
        grad, emb, _ = embedding_gradient(model, batch, y, target=target, params=params.unflatten(theta), block=block)
        return token_saliency(grad, emb, mode)[0, positions].sum()
    return measure


def saliency_measurement_gradient(model: nn.Module, params: ParameterSet, batch: dict, label: int,
                                  token_positions: Sequence[int], **kwargs) -> Tensor:
    """∇θ w_y(e) of Eq. 5, shape ``(P,)`` on the parameters' device: gradient of
    :func:`saliency_measurement`.

    Cost: one forward, one backward and one double-backward pass of the full model.
    """
    measure = saliency_measurement(model, params, batch, label, token_positions, **kwargs)
    return torch.func.grad(measure)(params.flat())
