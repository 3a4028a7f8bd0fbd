"""Kronecker-factored curvature for wide parameter sets: ``curvature="kfac"`` and ``"ekfac"``.

The Gauss-Newton matrix G of :mod:`hf_pairdots.curvature` over every ``nn.Linear`` layer of θ_S is
replaced by a block-diagonal (one block per layer) Kronecker-factored approximation, computed by
``curvlinops-for-pytorch`` (not hand-written here):

* ``"kfac"``: G_l ≈ A_l ⊗ B_l, A_l the mean outer product of the layer's inputs (with a 1 appended:
  weight and bias form one block), B_l that of the loss-Hessian-weighted output gradients (the
  type-2 Fisher, i.e. the exact output Hessian H_out, as the GGN uses). Linear layers applied to
  every token share their weight: the "expand" approximation of Eschenhagen et al. 2023 (inputs
  averaged over positions, padding included; batches are length-sorted, so padding is < 8 tokens).
  Martens & Grosse 2015, "Optimizing neural networks with Kronecker-factored approximate curvature".
* ``"ekfac"``: the same eigenbasis Q_A ⊗ Q_B with the eigenvalues refitted to the mean squared
  per-example gradient in that basis (George et al. 2018; the curvature kronfluence uses,
  Grosse et al. 2023, "Studying large language model generalization with influence functions").

s_test = (C + λI)⁻¹ v is then a closed form per layer (eigendecompositions of A_l and B_l; exact
damping λI, not split between the factors), with no HVP iterations. For one example and a single
Linear layer both are exact: C = G.

Cost: fitting K-FAC is one forward and C backward passes (C classes) over the training data
(1.25 training epochs for MiniLM-L6 at N = 2,000, ``benchmarks/RESULTS.md``); EK-FAC adds a second
such pass with per-example gradients in the eigenbasis (4.4 epochs in all). The
eigendecompositions are O(d³) per layer (d ≤ 1,536 for MiniLM-L6). A solve costs four d x d
matrix products per layer and query. Memory: the factors, Σ_l (d_in² + d_out²) floats (EK-FAC also
one eigenvalue per parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .constants import KFAC_CURVATURES
from .errors import UnsupportedModelError
from .loss import CachedTopLoss, PreparedData, TrainLoss
from .modeling import SINGLE_LABEL, first_position_only, model_inputs


def linear_parameter_owners(model: nn.Module, names: tuple[str, ...]) -> dict[str, str]:
    """``{parameter name: name of the nn.Linear that holds it}`` for ``names``.

    Raises:
        UnsupportedModelError: some parameters lie outside ``nn.Linear`` modules (embeddings,
            LayerNorm, GPT-2's ``Conv1D``, ...), which a Kronecker factorisation does not cover;
            the message names them and the ``"linear"`` preset, which selects exactly the Linear ones.
    """
    modules = dict(model.named_modules())
    owners, outside = {}, []
    for name in names:
        owner = name.rpartition(".")[0]
        if isinstance(modules.get(owner), nn.Linear):
            owners[name] = owner
        else:
            outside.append(name)
    if outside:
        raise UnsupportedModelError(
            f"curvature='kfac'/'ekfac' covers nn.Linear layers only; {len(outside)} chosen parameters are not in one "
            f"(e.g. {outside[:3]}); use params='linear' (every Linear layer of the encoder and the head) or a list "
            "of Linear layers' parameter names")
    return owners


class _Network(nn.Module):
    """The logits ``(B, C)`` of a prepared batch as a module of the real parameters (curvlinops
    differentiates with respect to those and hooks the Linear modules)."""

    def __init__(self, objective: TrainLoss):
        super().__init__()
        self.cached = isinstance(objective, CachedTopLoss)
        self.net = objective.head if self.cached else objective.model
        self.device = objective.device

    def forward(self, batch: dict) -> Tensor:
        if self.cached:
            return self.net(batch["features"]).float()
        with first_position_only(self.net):
            return self.net(**model_inputs(batch, self.device)).logits.float()


@dataclass
class KroneckerInverse:
    """``V -> (C + λI)⁻¹ V`` for the K-FAC / EK-FAC matrix C of θ_S (see the module docstring).

    Attributes:
        curvature: ``"kfac"`` or ``"ekfac"``.
        damping: λ.
        operator: the curvlinops inverse operator (parameter order of θ_S).
        forward: the curvlinops curvature operator itself (``C V``), for tests and diagnostics.
    """

    curvature: str
    damping: float
    operator: object
    forward: object

    def solve(self, v: Tensor) -> Tensor:
        """``(Q, P)`` or ``(P,)`` right-hand sides -> (C + λI)⁻¹ v of the same shape (float32)."""
        return _apply(self.operator, v)

    def product(self, v: Tensor) -> Tensor:
        """C v for ``(Q, P)`` or ``(P,)`` v (C without the damping)."""
        return _apply(self.forward, v)


def _apply(operator, v: Tensor) -> Tensor:
    rows = (v if v.dim() == 2 else v[None]).detach()
    with torch.no_grad():
        out = (operator @ rows.T.contiguous()).T
    return out if v.dim() == 2 else out[0]


def fit_kronecker(objective: TrainLoss, data: PreparedData, curvature: str, damping: float) -> KroneckerInverse:
    """Fit K-FAC or EK-FAC on all of ``data`` and invert it with damping λ = ``damping``.

    Runs in eval mode as the model is (the model's mode and weights are not changed: curvlinops
    only reads activations and gradients through hooks, which are removed afterwards).

    Raises:
        ValueError: unknown ``curvature``, ``damping`` < 0, or a model whose problem type is not
            single-label classification (the loss curvlinops fits is cross-entropy).
        UnsupportedModelError: θ_S holds parameters outside ``nn.Linear`` layers
            (:func:`check_linear`); checked before any pass over the data.
    """
    from curvlinops import EKFACLinearOperator, KFACInverseLinearOperator, KFACLinearOperator

    if curvature not in KFAC_CURVATURES:
        raise ValueError(f"curvature={curvature!r}: use one of {KFAC_CURVATURES}")
    if damping < 0:
        raise ValueError(f"damping={damping}: must be >= 0")
    network = check_linear(objective)
    batches = [(batch, batch["labels"]) for batch in data.batches]
    kind = EKFACLinearOperator if curvature == "ekfac" else KFACLinearOperator
    with torch.inference_mode(False), torch.enable_grad():
        forward = kind(network, nn.CrossEntropyLoss(), list(objective.params.tensors), batches,
                       fisher_type="type-2", separate_weight_and_bias=False, check_deterministic=False,
                       num_data=data.size, num_per_example_loss_terms=1, batch_size_fn=lambda b: len(b["labels"]))
        forward.compute_kronecker_factors()
        if curvature == "ekfac":
            forward.compute_eigenvalue_correction()
        inverse = KFACInverseLinearOperator(forward, damping=float(damping), use_exact_damping=True)
    return KroneckerInverse(curvature, float(damping), inverse, forward)


def check_linear(objective: TrainLoss) -> _Network:
    """The module curvlinops fits, after checking that θ_S lies in ``nn.Linear`` layers and that
    the loss is cross-entropy.

    Label smoothing leaves the fit unchanged: the Hessian of -Σ_k q_k log p_k in the logits is
    diag(p) - ppᵀ for every target distribution q, so the Fisher of the smoothed loss is the plain
    one's. Class weights scale each example's term by Σ_k q_k w_k, which curvlinops' fit does not
    take.

    Raises:
        ValueError: the model's problem type is not single-label classification, or the loss
            has class weights.
        UnsupportedModelError: from :func:`linear_parameter_owners`.
    """
    if objective.problem_type != SINGLE_LABEL:
        raise ValueError(f"curvature='kfac'/'ekfac' supports single-label classification only, not "
                         f"{objective.problem_type!r}; use curvature='ggn'")
    if objective.class_weights is not None:
        raise ValueError("curvature='kfac'/'ekfac' fits the unweighted cross-entropy; with class_weights use "
                         "curvature='ggn' or 'hessian'")
    network = _Network(objective)
    names = tuple(("model." + n) if network.cached else n for n in objective.params.names)  # TopHead holds .model
    linear_parameter_owners(network.net, names)
    return network
