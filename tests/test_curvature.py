"""The curvature products of the s_test solve (:mod:`hf_pairdots.curvature`).

References: the Gauss-Newton matrix written out as (1/n) Σ_i J_iᵀ (diag(p_i) - p_i p_iᵀ) J_i from
explicit Jacobians of the logits; the Hessian itself where the logits are linear in θ_S (the
classifier alone: there G = H exactly); an explicit (G + λI)⁻¹ v for the solvers.
"""

import pytest
import torch

from hf_pairdots import ihvp
from hf_pairdots.arguments import SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.curvature import batch_ggn, full_product, mean_ggn, mean_product
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, full_hvp, make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert
from hf_pairdots.solve import compute_s_test, resolve_damping_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["a good movie", "bad film", "the acting was great and the plot was fun", "boring", "i hated it",
         "fine , i guess", "really awful mess", "wonderful"]
LABELS = [1, 0, 1, 0, 0, 1, 0, 1]


@pytest.fixture(scope="module")
def bert():
    """Tiny BERT (2 layers, hidden 16, 3 labels), float32, eval mode."""
    return tiny_bert(num_labels=3, hidden_size=16, intermediate_size=32, initializer_range=0.2, seed=3)


def explicit_ggn(objective, data) -> torch.Tensor:
    """(1/n) Σ_i J_iᵀ (diag(p_i) - p_i p_iᵀ) J_i, J_i the (C, P) Jacobian of example i's logits."""
    total = torch.zeros(objective.params.numel, objective.params.numel)
    for batch in data.batches:
        jac = torch.func.jacrev(lambda t: objective.logits(t, batch))(objective.theta).detach()  # (B, C, P)
        p = objective.logits(objective.theta, batch).softmax(-1).detach()
        h_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        total += torch.einsum("bcp,bcd,bdq->pq", jac, h_out, jac)
    return total / data.size


@pytest.mark.parametrize("kind", ["top", "full"])
def test_ggn_product_equals_explicit_jacobian_form(bert, tok, kind):
    """G V from autodiff products = (1/n) Σ J_iᵀ H_out,i J_i V with explicit Jacobians, for the
    cached head and for the full-model loss; also for a single (P,) vector."""
    if kind == "top":
        objective = make_train_loss(bert, "head")
        assert isinstance(objective, CachedTopLoss)
    else:
        objective = FullModelLoss(bert, select_parameters(bert, "head"))
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    v = torch.randn(3, objective.params.numel, generator=torch.Generator().manual_seed(0))
    expected = v @ explicit_ggn(objective, data)  # G is symmetric
    got = mean_ggn(objective, data.batches, v)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6 * float(expected.abs().max()))
    assert torch.allclose(full_product(objective, data, "ggn")(v[0]), expected[0], rtol=1e-4,
                          atol=1e-6 * float(expected.abs().max()))


def test_ggn_is_symmetric_psd_and_differs_from_the_indefinite_hessian(bert, tok):
    """On the head (pooler tanh + classifier) G is symmetric positive semi-definite, while the
    Hessian of the same loss has a clearly negative eigenvalue at this untrained point."""
    objective = make_train_loss(bert, "head")
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    g = ihvp.explicit_hessian(full_product(objective, data, "ggn"), objective.params.numel).double()
    h = ihvp.explicit_hessian(full_hvp(objective, data), objective.params.numel).double()
    assert torch.allclose(g, g.T, atol=1e-6 * float(g.abs().max()))
    eig_g, eig_h = torch.linalg.eigvalsh((g + g.T) / 2), torch.linalg.eigvalsh((h + h.T) / 2)
    assert float(eig_g[0]) > -1e-6 * float(eig_g[-1])
    assert float(eig_h[0]) < -1e-3 * float(eig_h[-1])


def test_ggn_equals_hessian_when_the_logits_are_linear_in_theta(bert, tok):
    """θ_S = classifier only: the logits are affine in θ_S, so the residual term vanishes, G = H."""
    objective = make_train_loss(bert, "classifier")
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    v = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(1))
    hv, gv = mean_product(objective, data.batches, v, "hessian"), mean_product(objective, data.batches, v, "ggn")
    assert torch.allclose(gv, hv, rtol=1e-4, atol=1e-6 * float(hv.abs().max()))
    assert torch.allclose(batch_ggn(objective, data.batches[0], v[1]), batch_ggn(objective, data.batches[0], v)[1])


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_s_test_with_ggn_solves_the_damped_gauss_newton_system(bert, tok, solver):
    objective = make_train_loss(bert, "head")
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    g = explicit_ggn(objective, data).double()
    v = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(2))
    damping = 0.05
    result = compute_s_test(objective, data, v, SolverOptions(solver=solver, damping=damping, curvature="ggn",
                                                              cg_tol=1e-6, cg_max_iter=2000))
    expected = torch.linalg.solve(g + damping * torch.eye(len(g), dtype=g.dtype), v.double().T).T
    assert float((result.x.double() - expected).norm() / expected.norm()) < 1e-3
    assert max(result.relative_residual) < 1e-3


def test_automatic_damping_with_ggn_stays_near_the_floor(bert, tok):
    """G ⪰ 0, so λ = min_damping + 1.5 max(0, -λ_min) stays at the floor (up to Lanczos round-off),
    where the Hessian of the same loss needs more."""
    objective = make_train_loss(bert, "head")
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    ggn, estimates = resolve_damping_scale(objective, data, SolverOptions(solver="cg", curvature="ggn"))
    hessian, _ = resolve_damping_scale(objective, data, SolverOptions(solver="cg"))
    assert estimates["lambda_min"] > -1e-4
    assert ggn.damping == pytest.approx(0.01, abs=1e-4)
    assert hessian.damping > 0.01 + 1e-3


def test_curvature_option_is_checked_and_round_trips():
    with pytest.raises(ValueError, match="curvature"):
        SolverOptions(curvature="fisher")
    options = SolverOptions(curvature="ggn")
    assert SolverOptions.from_json(options.to_json()) == options
    with pytest.raises(ValueError, match="curvature"):
        mean_product(None, [], torch.zeros(1), "fisher")
