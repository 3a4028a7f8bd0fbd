"""Kronecker-factored curvature (:mod:`hf_pairdots.kfac`, curvlinops) against closed forms.

References: the explicit Gauss-Newton matrix of tests/test_curvature.py (explicit Jacobians); for
one example and one Linear layer on a single position K-FAC and EK-FAC equal it exactly (with
weight and bias in one block), so their damped solves must equal the explicit one.
"""

import pytest
import torch
from torch import nn

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.errors import UnsupportedModelError
from hf_pairdots.explain import Explainer
from hf_pairdots.influence import mean_loss_gradient, train_influence
from hf_pairdots.kfac import fit_kronecker
from hf_pairdots.loss import FullModelLoss, make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert
from hf_pairdots.solve import compute_s_test, resolve_damping_scale

from test_curvature import LABELS, TEXTS, explicit_ggn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DAMPING = 0.05


@pytest.fixture(scope="module")
def bert():
    """Tiny BERT (2 layers, hidden 16, 3 labels), float32, eval mode."""
    return tiny_bert(num_labels=3, hidden_size=16, intermediate_size=32, initializer_range=0.2, seed=3)


def damped_solve(g: torch.Tensor, v: torch.Tensor, damping: float = DAMPING) -> torch.Tensor:
    g = g.double()
    return torch.linalg.solve(g + damping * torch.eye(len(g), dtype=g.dtype), v.double().T).T


def relative_error(x: torch.Tensor, reference: torch.Tensor) -> float:
    return float((x.double() - reference).norm() / reference.norm())


@pytest.mark.parametrize("curvature", ["kfac", "ekfac"])
@pytest.mark.parametrize("loss", ["cached", "full"])
def test_one_example_one_linear_layer_is_exact(bert, tok, curvature, loss):
    """θ_S = the classifier (one Linear on the pooled output), n = 1: (C + λI)⁻¹ v = (G + λI)⁻¹ v."""
    params = select_parameters(bert, "classifier")
    objective = make_train_loss(bert, params) if loss == "cached" else FullModelLoss(bert, params)
    data = prepare_data(objective, tok, TEXTS[2:3], LABELS[2:3], max_length=16)
    v = torch.randn(3, params.numel, generator=torch.Generator().manual_seed(0))
    expected = damped_solve(explicit_ggn(objective, data), v)
    result = compute_s_test(objective, data, v, SolverOptions(curvature=curvature, damping=DAMPING))
    assert relative_error(result.x, expected) < 1e-5
    assert result.diagnostics == {"solver": curvature, "damping": DAMPING}
    assert max(result.relative_residual) < 1e-5


def test_ekfac_is_at_least_as_faithful_as_kfac(bert, tok):
    """Several examples, θ_S = every Linear layer: neither is exact; EK-FAC's eigenvalues are the
    best diagonal in K-FAC's eigenbasis (George et al. 2018), so its Frobenius distance to the
    explicit GGN is at most K-FAC's. (Their damped solves are not ordered so: here 6.1 % against
    5.7 % relative error; both must stay near the exact solve.)"""
    objective = FullModelLoss(bert, select_parameters(bert, "linear"))
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=3, max_length=16)
    g = explicit_ggn(objective, data).double()
    v = torch.randn(4, objective.params.numel, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for curvature in ("kfac", "ekfac"):
        fitted = fit_kronecker(objective, data, curvature, DAMPING)
        approx = fitted.product(torch.eye(objective.params.numel)).double()
        errors[curvature] = (float((approx - g).norm() / g.norm()),
                             relative_error(fitted.solve(v.float()), damped_solve(g, v)))
    assert errors["ekfac"][0] < errors["kfac"][0]
    assert errors["kfac"][0] > 1e-3  # not exact here: the comparison means something
    assert max(errors["kfac"][1], errors["ekfac"][1]) < 0.15


def test_influence_sign_equals_the_other_curvatures(bert, tok):
    """On the exact case the scores -s_testᵀ ∇θL(z) are the GGN's, sign included; over every
    Linear layer and 8 examples the Explainer's K-FAC scores still agree in sign with the GGN's."""
    params = select_parameters(bert, "classifier")
    objective = make_train_loss(bert, params)
    data = prepare_data(objective, tok, TEXTS[2:3], LABELS[2:3], max_length=16)
    v = torch.randn(2, params.numel, generator=torch.Generator().manual_seed(2))
    scores = {c: train_influence(objective, data, compute_s_test(objective, data, v, SolverOptions(
        curvature=c, damping=DAMPING, solver="exact")).x) for c in ("ggn", "kfac")}
    assert torch.allclose(scores["kfac"], scores["ggn"], rtol=1e-4, atol=1e-7)

    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    wide = {}
    for curvature in ("ggn", "kfac"):
        solver = SolverOptions(curvature=curvature, damping=DAMPING, solver="cg", cg_tol=1e-6)
        explainer = Explainer(bert, tok, TEXTS, LABELS, ExplainArguments(params="linear", max_length=16, solver=solver))
        queries = prepare_data(explainer.objective, tok, ["a good movie", "awful"], [1, 0], max_length=16)
        wide[curvature] = explainer.solve(mean_loss_gradient(explainer.objective, queries)[None]).scores[0]
    assert not bert.training
    assert all(torch.equal(p, before[n]) for n, p in bert.named_parameters())
    assert float(torch.corrcoef(torch.stack([wide["ggn"], wide["kfac"]]))[0, 1]) > 0.5


def test_fitting_keeps_eval_mode_and_weights(bert, tok):
    objective = FullModelLoss(bert, select_parameters(bert, "linear"))
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4, max_length=16)
    before = {n: p.detach().clone() for n, p in bert.named_parameters()}
    fit_kronecker(objective, data, "ekfac", DAMPING)
    assert not bert.training
    assert all(torch.equal(p, before[n]) for n, p in bert.named_parameters())
    assert all(p.grad is None for p in bert.parameters())


def test_linear_preset_selects_exactly_the_linear_layers(bert):
    chosen = select_parameters(bert, "linear")
    expected = {f"{m}.{p}" for m, module in bert.named_modules() if isinstance(module, nn.Linear)
                for p, _ in module.named_parameters(recurse=False)}
    assert set(chosen.names) == expected
    assert not any("embeddings" in n or "LayerNorm" in n for n in chosen.names)


def test_non_linear_parameters_are_refused_before_work(bert, tok):
    objective = FullModelLoss(bert, select_parameters(bert, "all"))
    data = prepare_data(objective, tok, TEXTS, LABELS, max_length=16)
    with pytest.raises(UnsupportedModelError, match="params='linear'.*") as error:
        resolve_damping_scale(objective, data, SolverOptions(curvature="kfac"))
    assert "embeddings" in str(error.value)
    with pytest.raises(UnsupportedModelError, match="nn.Linear"):
        fit_kronecker(objective, data, "ekfac", DAMPING)


def test_automatic_damping_is_the_floor_and_a_mismatched_fit_is_refused(bert, tok):
    objective = make_train_loss(bert, "head")
    data = prepare_data(objective, tok, TEXTS, LABELS, max_length=16)
    options, estimates = resolve_damping_scale(objective, data, SolverOptions(curvature="ekfac", min_damping=0.02))
    assert (options.damping, estimates) == (0.02, {})
    fitted = fit_kronecker(objective, data, "kfac", 0.02)
    with pytest.raises(ValueError, match="fitted for curvature='kfac'"):
        compute_s_test(objective, data, torch.zeros(1, objective.params.numel), options, kronecker=fitted)
