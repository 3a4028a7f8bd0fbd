"""The curvature matrix C of the s_test solve (C + λI) s = ∇θ m, as matrix products.

* ``"hessian"`` (default): C = H, the Hessian of the mean training loss over θ_S
  (:func:`hf_pairdots.loss.mean_hvp`). Near a fine-tuned model's optimum it is indefinite, so the
  automatic damping λ must exceed -λ_min(H).
* ``"ggn"``: the generalised Gauss-Newton matrix

      G = (1/n) Σ_i J_iᵀ H_out,i J_i,   J_i = ∂f(z_i; θ)/∂θ  (C x P),
      H_out,i = ∇²_f ℓ(f; y_i)  (C x C; for cross-entropy diag(p_i) - p_i p_iᵀ),

  the Hessian without the term that weighs the network's second derivatives by the loss
  gradient. H_out is positive semi-definite for cross-entropy, hence G too, so the damping only
  needs to be the floor ``min_damping`` (Martens 2020, "New insights and perspectives on the
  natural gradient method"; Bae et al. 2022, "If influence functions are the answer...").

Each product is one forward-mode pass (J v), one Hessian-vector product of the loss on the
logits (H_out J v, C numbers per example) and one reverse pass (Jᵀ u) per batch and direction,
vectorised over directions for a vectorised loss (the cached top of :mod:`hf_pairdots.features`):
about the cost of an HVP. Products live on the parameters' device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .constants import PRODUCT_CURVATURES
from .loss import PreparedData, TrainLoss, mean_hvp


def check_curvature(curvature: str) -> None:
    """Raises ValueError for a curvature outside :data:`~hf_pairdots.constants.PRODUCT_CURVATURES`
    (``"kfac"`` / ``"ekfac"`` have no product here: they are inverted by :mod:`hf_pairdots.kfac`)."""
    if curvature not in PRODUCT_CURVATURES:
        raise ValueError(f"curvature={curvature!r}: products are defined for {PRODUCT_CURVATURES}")


def batch_ggn(objective: TrainLoss, batch: dict, v: Tensor) -> Tensor:
    """G_B V for one prepared batch: ``v`` ``(Q, P)`` or ``(P,)`` -> same shape, G_B the
    Gauss-Newton matrix of the batch's *mean* loss, (1/B) Σ_i J_iᵀ H_out,i J_i.

    ``H_out`` is the Hessian of :meth:`~hf_pairdots.loss.TrainLoss.output_loss` in the logits,
    taken by autodiff (so any loss on the logits is handled as it is defined). Cost: one JVP, one
    logits-space HVP and one VJP of the batch per direction.
    """
    theta = objective.theta
    rows = v if v.dim() == 2 else v[None]
    with torch.inference_mode(False), torch.enable_grad():
        logits_of = lambda t: objective.logits(t, batch)  # noqa: E731
        logits, pull_back = torch.func.vjp(logits_of, theta)
        logits = logits.detach()
        out_grad = torch.func.grad(lambda z: objective.output_loss(z, batch).mean())

        def one(u: Tensor) -> Tensor:
            jv = torch.func.jvp(logits_of, (theta,), (u,))[1]
            h_out_jv = torch.func.jvp(out_grad, (logits,), (jv,))[1]
            return pull_back(h_out_jv)[0]

        out = torch.func.vmap(one)(rows) if objective.vectorized else torch.stack([one(u) for u in rows])
    return out if v.dim() == 2 else out[0]


def mean_ggn(objective: TrainLoss, batches: list[dict], v: Tensor) -> Tensor:
    """G V for the Gauss-Newton matrix of the mean loss over the examples of ``batches`` (the
    counterpart of :func:`~hf_pairdots.loss.mean_hvp`). Cost: about one HVP pass over them."""
    total = sum(len(b["labels"]) for b in batches)
    out = torch.zeros_like(v)
    for batch in batches:
        out += len(batch["labels"]) / total * batch_ggn(objective, batch, v)
    return out


def mean_product(objective: TrainLoss, batches: list[dict], v: Tensor, curvature: str = "hessian") -> Tensor:
    """C V over the examples of ``batches``, C the Hessian (``"hessian"``) or the Gauss-Newton
    matrix (``"ggn"``) of their mean loss; ``v`` ``(Q, P)`` or ``(P,)``.

    Raises:
        ValueError: an unknown ``curvature``.
    """
    check_curvature(curvature)
    return mean_hvp(objective, batches, v) if curvature == "hessian" else mean_ggn(objective, batches, v)


def full_product(objective: TrainLoss, data: PreparedData, curvature: str = "hessian"):
    """``V -> C V`` over all of ``data`` (one pass per call), for the solvers of :mod:`hf_pairdots.ihvp`."""
    check_curvature(curvature)
    return lambda v: mean_product(objective, data.batches, v, curvature)
