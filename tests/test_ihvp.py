"""Inverse-HVP solvers of :mod:`hf_pairdots.ihvp` against problems whose Hessian is known in closed form.

Cases: C01 (LiSSA divergence is detected, never NaN), C03 (no autograd history carried across
the recursion), C04 (the recursion applies the HVP to the running estimate: LiSSA equals the
damped exact solve). Definiteness: every solver refuses H + λI that is not positive definite
with one error and message, at the solver level and through ``compute_s_test`` on a tiny BERT
head whose Hessian is indefinite.
"""

import math
import warnings

import pytest
import torch

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import hvp
from hf_pairdots.explain import Explainer
from hf_pairdots.ihvp import (
    IndefiniteHessianError,
    LissaDivergenceError,
    auto_damping_scale,
    conjugate_gradient,
    exact_solve,
    explicit_hessian,
    extreme_eigenvalues,
    lissa,
    lowrank_solve,
    relative_residual,
    top_eigenpairs,
)
from hf_pairdots.loss import make_train_loss, prepare_data
from hf_pairdots.models import tiny_bert
from hf_pairdots.solve import compute_s_test, resolve_damping_scale

pytestmark = pytest.mark.usefixtures("one_torch_thread")

P, N, Q = 10, 200, 3
ALPHA = 0.05  # L2 coefficient inside the per-example loss
DAMPING = 0.01
F64 = torch.float64


def _data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, P, generator=gen, dtype=F64)
    theta = torch.randn(P, generator=gen, dtype=F64)
    y_reg = x @ torch.randn(P, generator=gen, dtype=F64) + 0.1 * torch.randn(N, generator=gen, dtype=F64)
    y_cls = (torch.rand(N, generator=gen, dtype=F64) < torch.sigmoid(x @ theta)).to(F64)
    v = torch.randn(Q, P, generator=gen, dtype=F64)
    return x, theta, y_reg, y_cls, v


def ridge_problem():
    """Mean of 1/2 (x_i.θ - y_i)^2 + α/2 ||θ||^2: H = XᵀX/n + αI exactly."""
    x, theta, y, _, v = _data()

    def loss(th):
        return (0.5 * (x @ th - y) ** 2).mean() + 0.5 * ALPHA * th @ th

    h = x.T @ x / N + ALPHA * torch.eye(P, dtype=F64)
    return loss, theta, h, v


def logistic_problem():
    """Mean of the logistic loss + α/2 ||θ||^2: H = Xᵀ diag(p(1-p)) X / n + αI."""
    x, theta, _, y, v = _data()

    def loss(th):
        z = x @ th
        return (torch.nn.functional.softplus(z) - y * z).mean() + 0.5 * ALPHA * th @ th

    p = torch.sigmoid(x @ theta)
    h = x.T @ (x * (p * (1 - p))[:, None]) / N + ALPHA * torch.eye(P, dtype=F64)
    return loss, theta, h, v


PROBLEMS = {"ridge": ridge_problem, "logistic": logistic_problem}


def damped_solution(h, v, damping=DAMPING):
    return torch.linalg.solve(h + damping * torch.eye(h.shape[0], dtype=h.dtype), v.T).T


def rel_err(a, b):
    return float((a - b).norm() / b.norm())


def indefinite_matrix(eigenvalues, seed=1):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=gen, dtype=F64))
    return q @ torch.diag(torch.as_tensor(eigenvalues, dtype=F64)) @ q.T


# --------------------------------------------------------------------------------------------
# C04: LiSSA and CG == exact damped solve on closed-form Hessians
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PROBLEMS)
def test_autograd_hvp_matches_closed_form_hessian(name):
    """The HVP the solvers are fed is itself right (closed-form H), for Q vectors at once."""
    loss, theta, h, v = PROBLEMS[name]()
    assert torch.allclose(hvp(loss, theta, v), v @ h, rtol=1e-10, atol=1e-12)
    assert torch.allclose(hvp(loss, theta, v[0]), h @ v[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", PROBLEMS)
@pytest.mark.parametrize("factor", [1.2, 3.0])
def test_C04_lissa_equals_damped_exact_solve(name, factor):
    """C04: the recursion applies the HVP to the running estimate h_{t-1}; with a deterministic
    full-batch HVP it converges to (H + λI)⁻¹ v for all Q right-hand sides. σ = factor x λ_max."""
    loss, theta, h, v = PROBLEMS[name]()
    scale = factor * float(torch.linalg.eigvalsh(h + DAMPING * torch.eye(P, dtype=F64)).max())
    result = lissa(lambda vec, step: hvp(loss, theta, vec), v, damping=DAMPING, scale=scale, depth=300)
    expected = damped_solution(h, v)
    assert result.x.shape == (Q, P)
    assert result.x.dtype == F64
    for q in range(Q):  # every right-hand side, not just the stacked norm
        assert rel_err(result.x[q], expected[q]) < 1e-6
    assert max(relative_residual(lambda u: u @ h, result.x, v, DAMPING)) < 1e-6
    assert result.diagnostics["solver"] == "lissa"
    assert result.diagnostics["scale"] == scale and result.diagnostics["damping"] == DAMPING


@pytest.mark.parametrize("name", PROBLEMS)
def test_C04_lissa_wrong_vector_would_be_caught(name):
    """The comparison above is discriminating: H⁻¹v differs from plausible wrong answers
    (v/σ-free Neumann terms on the original v, undamped solve) by far more than the tolerance."""
    loss, theta, h, v = PROBLEMS[name]()
    expected = damped_solution(h, v)
    # A recursion that multiplies the original v instead of h_{t-1}: h_t = v + h_{t-1} - (H+λ)v/σ.
    scale, h_wrong = 5.0, v.clone()
    for _ in range(50):
        h_wrong = v + h_wrong - (v @ h + DAMPING * v) / scale
    assert rel_err(h_wrong / scale, expected) > 0.5
    assert rel_err(damped_solution(h, v, damping=0.0), expected) > 1e-3


@pytest.mark.parametrize("name", PROBLEMS)
def test_C04_conjugate_gradient_equals_damped_exact_solve(name):
    loss, theta, h, v = PROBLEMS[name]()
    result = conjugate_gradient(lambda vec: hvp(loss, theta, vec), v, damping=DAMPING, tol=1e-10)
    expected = damped_solution(h, v)
    for q in range(Q):
        assert rel_err(result.x[q], expected[q]) < 1e-8
    assert result.diagnostics["iterations"] <= 3 * P  # CG on a P-dimensional system


def test_conjugate_gradient_drops_converged_rows_from_the_hvps():
    """A right-hand side that is an eigenvector converges in one step; it then takes no HVP,
    and the other row still reaches the exact solve."""
    eigenvalues = torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64)
    h = torch.diag(eigenvalues)
    v = torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    rows = []

    def counted(x):
        rows.append(x.shape[0])
        return x @ h

    result = conjugate_gradient(counted, v, damping=0.5, tol=1e-10)
    assert rows[0] == 2 and set(rows[1:]) == {1} and len(rows) == result.diagnostics["iterations"] == 5
    assert torch.allclose(result.x, v / (eigenvalues + 0.5), rtol=1e-10)


def test_conjugate_gradient_warns_when_it_stops_at_max_iter():
    """Five distinct eigenvalues need five CG steps: stopped after two it warns with the residual
    it reached; given enough steps it does not warn."""
    h = torch.diag(torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64))
    v = torch.ones(1, 5, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match="max_iter=2 with relative residual"):
        conjugate_gradient(lambda x: x @ h, v, damping=0.5, tol=1e-10, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conjugate_gradient(lambda x: x @ h, v, damping=0.5, tol=1e-10, max_iter=5)


def test_lissa_minibatch_hvp_is_close_to_exact():
    """Stochastic HVPs (ridge Hessian of a random mini-batch of 50 per step) + tail averaging +
    repeats: an unbiased estimate close to the exact solve (loose tolerance: it is noisy)."""
    x, _, _, _, v = _data()
    h = x.T @ x / N + ALPHA * torch.eye(P, dtype=F64)

    def sample(vec, step):
        rows = torch.randperm(N, generator=torch.Generator().manual_seed(step))[:50]
        xb = x[rows]
        return vec @ (xb.T @ xb / 50 + ALPHA * torch.eye(P, dtype=F64))

    result = lissa(sample, v, damping=DAMPING, scale=8.0, depth=400, repeat=2)
    assert rel_err(result.x, damped_solution(h, v)) < 0.1


# --------------------------------------------------------------------------------------------
# Regression: the final division by `scale`
# --------------------------------------------------------------------------------------------

def test_lissa_divides_by_scale():
    """h_T converges to σ (H + λI)⁻¹ v; the returned x must be h_T/σ. With σ = 5, a solver that
    forgot the division returns 5x the solution and fails here."""
    loss, theta, h, v = ridge_problem()
    expected = damped_solution(h, v)
    x5 = lissa(lambda vec, step: vec @ h, v, damping=DAMPING, scale=5.0, depth=600).x
    x20 = lissa(lambda vec, step: vec @ h, v, damping=DAMPING, scale=20.0, depth=2500).x
    assert rel_err(x5, expected) < 1e-6
    assert rel_err(x20, expected) < 1e-6  # independent of σ
    assert rel_err(5.0 * expected, x5) > 0.7
    # Scalar identity on H = I: the answer is v / (1 + λ), whatever the scale.
    v1 = torch.ones(1, 4, dtype=F64)
    x = lissa(lambda vec, step: vec, v1, damping=1.0, scale=5.0, depth=400).x
    assert torch.allclose(x, v1 / 2.0, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# C01: divergence is detected with a message that names scale and damping; never NaN
# --------------------------------------------------------------------------------------------

def _assert_names_knobs(err: LissaDivergenceError, scale, damping):
    msg = str(err)
    assert "scale" in msg and "damping" in msg
    assert f"{scale:g}" in msg and f"{damping:g}" in msg


def test_C01_scale_too_small_raises():
    """λ_max(H + λI) ≈ 1.4 > 2σ with σ = 0.5: the iterates oscillate and grow."""
    loss, theta, h, v = ridge_problem()
    with pytest.raises(LissaDivergenceError) as info:
        lissa(lambda vec, step: hvp(loss, theta, vec), v, damping=DAMPING, scale=0.5, depth=200)
    _assert_names_knobs(info.value, 0.5, DAMPING)


def test_C01_koh_thread_setup_raises_early():
    """C01's report: top eigenvalue (100) far above a default scale (10), damping 0.01: growth
    ~9^t. It must stop at the first check (step 10), long before overflow to NaN (depth 300)."""
    a = indefinite_matrix([100.0, 5, 3, 2, 1, 0.5, 0.3, 0.2, 0.1, 0.05])
    v = torch.ones(Q, P, dtype=F64)
    with pytest.raises(LissaDivergenceError, match="step 10 ") as info:
        lissa(lambda vec, step: vec @ a, v, damping=0.01, scale=10.0, depth=300)
    _assert_names_knobs(info.value, 10.0, 0.01)


def test_C01_indefinite_hessian_too_little_damping_raises():
    """Indefinite H (λ_min = -1) with damping 0.01: (H + λI)/σ has a negative eigenvalue and the
    recursion grows like (1 + 0.99/σ)^t in that direction."""
    a = indefinite_matrix([-1.0, -0.5, 0.1, 0.3, 0.6, 1.0, 1.4, 1.8, 2.4, 3.0])
    v = torch.randn(Q, P, generator=torch.Generator().manual_seed(3), dtype=F64)
    with pytest.raises(LissaDivergenceError) as info:
        lissa(lambda vec, step: vec @ a, v, damping=0.01, scale=5.0, depth=500)
    _assert_names_knobs(info.value, 5.0, 0.01)
    # CG refuses the same system too (non-positive curvature), naming damping.
    with pytest.raises(ValueError, match="damping"):
        conjugate_gradient(lambda vec: vec @ a, v, damping=0.01)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_C01_non_finite_hvp_never_returns_nan(bad):
    """An HVP that produces NaN/inf (overflowing model) raises instead of returning NaN."""
    v = torch.ones(2, 4, dtype=F64)
    with pytest.raises(LissaDivergenceError):
        lissa(lambda vec, step: vec * bad, v, damping=0.01, scale=10.0, depth=5)
    # NaN on the last step only (depth not a multiple of check_every): still caught.
    with pytest.raises(LissaDivergenceError):
        lissa(lambda vec, step: vec * (bad if step == 13 else 1.0), v, damping=0.01, scale=10.0, depth=13)


def test_lissa_rejects_bad_arguments():
    v = torch.ones(1, 3)
    for kwargs in (dict(scale=0.0), dict(scale=-1.0), dict(damping=-0.1), dict(depth=0), dict(repeat=0)):
        args = dict(damping=0.01, scale=1.0, depth=5, repeat=1) | kwargs
        with pytest.raises(ValueError):
            lissa(lambda vec, step: vec, v, **args)


# --------------------------------------------------------------------------------------------
# C03: no autograd history carried across steps, and detaching does not change the numbers
# --------------------------------------------------------------------------------------------

def _autograd_hvp(loss, theta):
    """A plain torch.autograd HVP that *keeps* its graph (create_graph=True on both passes):
    its outputs carry grad_fn, so LiSSA must detach them itself."""
    def product(vec, step=None):
        th = theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(loss(th), th, create_graph=True)
        return torch.stack([torch.autograd.grad(g @ row, th, create_graph=True)[0] for row in vec])
    return product


def test_C03_carried_estimate_has_no_history_with_autograd_hvp():
    loss, theta, h, v = ridge_problem()
    product = _autograd_hvp(loss, theta)
    assert product(v).grad_fn is not None  # the HVP output really carries a graph
    seen = []

    def sample(vec, step):
        seen.append((vec.requires_grad, vec.grad_fn))
        return product(vec)

    result = lissa(sample, v, damping=DAMPING, scale=5.0, depth=300)
    assert len(seen) == 300
    assert all(req is False and fn is None for req, fn in seen)  # every carried h_{t-1}
    assert result.x.requires_grad is False and result.x.grad_fn is None
    assert rel_err(result.x, damped_solution(h, v)) < 1e-6
    # CG and the residual accept the same autograd HVP and return plain tensors too.
    cg = conjugate_gradient(lambda vec: product(vec), v, damping=DAMPING, tol=1e-10)
    assert cg.x.grad_fn is None and rel_err(cg.x, damped_solution(h, v)) < 1e-8
    assert max(relative_residual(lambda vec: product(vec), cg.x, v, DAMPING)) < 1e-8


def test_C03_detaching_does_not_change_numbers():
    """Short-depth reference that keeps the whole graph (h_t differentiable through all steps)
    equals LiSSA's detached recursion to round-off; x = h_T/σ with tail_fraction → 0."""
    loss, theta, h, v = logistic_problem()
    product = _autograd_hvp(loss, theta)
    depth, scale = 8, 5.0
    ref = v.clone().requires_grad_(True)
    h_ref = ref
    for _ in range(depth):
        h_ref = ref + h_ref - (product(h_ref) + DAMPING * h_ref) / scale
    assert h_ref.grad_fn is not None
    result = lissa(lambda vec, step: product(vec), v, damping=DAMPING, scale=scale, depth=depth,
                   tail_fraction=1e-9)
    assert torch.allclose(result.x, h_ref.detach() / scale, rtol=1e-12, atol=1e-14)
    # ... and equals the closed-form truncated Neumann series σ⁻¹ Σ_{k≤T} (I - (H+λI)/σ)^k v.
    m = torch.eye(P, dtype=F64) - (h + DAMPING * torch.eye(P, dtype=F64)) / scale
    term, series = v.clone(), v.clone()
    for _ in range(depth):
        term = term @ m
        series = series + term
    assert torch.allclose(result.x, series / scale, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Eigenvalue estimates and automatic damping/scale
# --------------------------------------------------------------------------------------------

EIGS = [-1.0, -0.5, 0.1, 0.3, 0.6, 1.0, 1.4, 1.8, 2.4, 3.0]


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_extreme_eigenvalues_known_matrix(sign):
    """Power iteration on H and on λ_max I - H recovers both extremes, also when the dominant
    eigenvalue is negative (sign = -1: spectrum [-3, 1])."""
    a = sign * indefinite_matrix(EIGS)
    exact = torch.linalg.eigvalsh(a)
    lo, hi = extreme_eigenvalues(lambda u: u.to(F64) @ a, P, iters=200)
    assert lo == pytest.approx(float(exact[0]), abs=1e-6)
    assert hi == pytest.approx(float(exact[-1]), abs=1e-6)
    # Few iterations approach the extremes from inside the spectrum (callers add a margin).
    lo20, hi20 = extreme_eigenvalues(lambda u: u.to(F64) @ a, P, iters=20)
    assert float(exact[0]) - 1e-6 <= lo20 <= hi20 <= float(exact[-1]) + 1e-6


def test_auto_damping_scale_puts_spectrum_in_unit_interval():
    a = indefinite_matrix(EIGS)
    lo, hi = extreme_eigenvalues(lambda u: u.to(F64) @ a, P, iters=50)
    damping, scale = auto_damping_scale(lo, hi)
    assert damping > 1.0  # lifts λ_min = -1
    spectrum = torch.linalg.eigvalsh((a + damping * torch.eye(P, dtype=F64)) / scale)
    assert float(spectrum.min()) > 0 and float(spectrum.max()) < 1
    # ... so LiSSA with these knobs converges to the damped solve of the indefinite system.
    v = torch.randn(Q, P, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = lissa(lambda vec, step: vec @ a, v, damping=damping, scale=scale, depth=600).x
    assert rel_err(x, damped_solution(a, v, damping)) < 1e-6
    # Positive definite input: damping stays the floor, top eigenvalue below 1.
    d2, s2 = auto_damping_scale(0.5, 4.0, damping=0.01)
    assert d2 == 0.01 and (4.0 + d2) / s2 < 1


# --------------------------------------------------------------------------------------------
# exact_solve with explicit_hessian
# --------------------------------------------------------------------------------------------

def test_exact_solve_with_explicit_hessian_of_quadratic():
    """f(θ) = 1/2 θᵀAθ + bᵀθ has Hessian A everywhere; explicit_hessian rebuilds it column by
    column from HVPs (chunk < P exercises the chunking) and exact_solve matches linalg.solve."""
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(P, P, generator=gen, dtype=F64)
    a = m @ m.T / P + 0.1 * torch.eye(P, dtype=F64)
    b = torch.randn(P, generator=gen, dtype=F64)
    theta = torch.randn(P, generator=gen, dtype=F64)

    def f(th):
        return 0.5 * th @ a @ th + b @ th

    # explicit_hessian builds float32 unit vectors; cast them for this float64 quadratic.
    hess = explicit_hessian(lambda u: hvp(f, theta, u.to(F64)), P, chunk=4)
    assert hess.shape == (P, P)
    assert torch.allclose(hess.to(F64), a, rtol=1e-10, atol=1e-12)
    v = torch.randn(Q, P, generator=gen, dtype=F64)
    result = exact_solve(hess, v, damping=0.3)
    assert result.x.dtype == F64 and result.x.shape == (Q, P)
    assert torch.allclose(result.x, damped_solution(a, v, 0.3), rtol=1e-10)
    assert result.diagnostics == {"solver": "exact", "damping": 0.3}
    # Float32 right-hand sides come back float32 but are solved in float64.
    x32 = exact_solve(hess.float(), v.float(), damping=0.3).x
    assert x32.dtype == torch.float32
    assert rel_err(x32.double(), damped_solution(a, v, 0.3)) < 1e-5
    assert math.isfinite(float(x32.sum()))


def test_lowrank_full_rank_equals_exact_and_truncation_is_damping_only():
    """Low-rank solver: with every eigenpair but one it matches the exact damped solve; the
    dropped direction sees 1/damping, as documented."""
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(12, 12, generator=gen, dtype=F64)
    h = a @ a.T / 12 + 0.1 * torch.eye(12, dtype=F64)
    v = torch.randn(Q, 12, generator=gen, dtype=F64).float()
    factor = top_eigenpairs(lambda u: (u.to(F64) @ h).float(), 12, rank=11)
    evals, evecs = torch.linalg.eigh(h)
    assert torch.allclose(factor.eigenvalues.double().sort().values, evals[1:], rtol=1e-4)
    approx = lowrank_solve(factor, v, damping=0.5).x.double()
    # Exact answer for H with its smallest eigenvalue replaced by 0 (the truncated direction).
    truncated = h - evals[0] * torch.outer(evecs[:, 0], evecs[:, 0])
    exact = torch.linalg.solve(truncated + 0.5 * torch.eye(12, dtype=F64), v.double().T).T
    assert torch.allclose(approx, exact, rtol=1e-3, atol=1e-5)
    with pytest.raises(ValueError, match="damping"):
        lowrank_solve(factor, v, damping=0.0)


def _decaying_indefinite(p: int = 200, seed: int = 5):
    """A symmetric H with eigenvalues 5·0.8^i of alternating sign (largest magnitudes 5, -4, 3.2,
    ...) in a random basis: indefinite, like a fine-tuned transformer's top-layer Hessian."""
    gen = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(p, p, generator=gen, dtype=F64))
    values = 5 * 0.8 ** torch.arange(p, dtype=F64) * torch.tensor([1.0, -1.0], dtype=F64).repeat(p // 2)
    return basis @ torch.diag(values) @ basis.T, values


def test_block_lanczos_top_eigenpairs_of_an_indefinite_matrix():
    """top_eigenpairs returns the eigenpairs of largest |λ|, negative ones included: the top 10
    of 200 to 1e-3 relative from 3 batched HVP calls, orthonormal vectors with H u = λ u."""
    h, values = _decaying_indefinite()
    calls = []

    def product(u):
        calls.append(u.shape)
        return (u.to(F64) @ h).float()

    factor = top_eigenpairs(product, 200, rank=20, seed=1)
    assert calls == [(20, 200)] * 3  # 3 blocks, 20 vectors each
    assert 10 <= len(factor.eigenvalues) <= 20  # only converged Ritz pairs are kept
    top = values[values.abs().argsort(descending=True)[:10]]
    found = factor.eigenvalues.double()[:10]
    assert torch.allclose(found, top, rtol=1e-3)
    u = factor.eigenvectors.double()[:, :10]
    assert torch.allclose(u.T @ u, torch.eye(10, dtype=F64), atol=1e-5)
    assert float((h @ u - u * found).norm() / found.abs().max()) < 1e-2


@pytest.mark.parametrize("decay, kept, iterations", [(0.7, 7, (12, 23)), (0.97, 0, (43, 43))])
def test_lowrank_refined_equals_exact_and_is_never_slower_than_cg(decay, kept, iterations):
    """With the full HVP, the low-rank solve is CG preconditioned by the factor: it reaches the
    damped exact solve to 1e-6 on an indefinite H. Spectrum 5·decay^i with 20 eigenvalues -0.1
    and rank 10 from 3 blocks: decay 0.7: 7 converged Ritz pairs, 12 HVPs instead of CG's 23;
    decay 0.97: no Ritz pair converges within 3 blocks, none is kept, and it is plain CG (with
    the 10 unconverged pairs deflated it took 59 HVPs, CG 43). The closed form alone is 40 % and
    93 % off (directions outside the kept pairs see only the damping)."""
    gen = torch.Generator().manual_seed(2)
    basis, _ = torch.linalg.qr(torch.randn(200, 200, generator=gen, dtype=F64))
    values = 5 * decay ** torch.arange(200, dtype=F64)
    values[-20:] = -0.1
    h = basis @ torch.diag(values) @ basis.T
    v = torch.randn(Q, 200, generator=gen, dtype=F64).float()
    damping = 1.5 * 0.1 + 0.01  # H + λI ≻ 0, as auto_damping_scale picks it

    def product(u):
        return (u.to(F64) @ h).float()

    exact = damped_solution(h, v.double(), damping)
    factor = top_eigenpairs(product, 200, rank=10, seed=0)
    assert len(factor.eigenvalues) == kept and bool((factor.residuals <= 0.1).all())
    closed = lowrank_solve(factor, v, damping=damping)
    assert 0.3 < rel_err(closed.x.double(), exact) < 1.0
    refined = lowrank_solve(factor, v, damping=damping, hvp=product, tol=1e-6)
    plain = conjugate_gradient(product, v, damping=damping, tol=1e-6)
    assert rel_err(refined.x.double(), exact) < 1e-5 and rel_err(plain.x.double(), exact) < 1e-5
    assert (refined.diagnostics["iterations"], plain.diagnostics["iterations"]) == iterations
    assert refined.diagnostics["rank"] == kept and "iterations" not in closed.diagnostics


def test_extreme_eigenvalues_with_hundreds_of_zero_eigenvalues():
    """A 2-label softmax layer has a degenerate Hessian (420 of 770 eigenvalues zero in the
    peers benchmark); asking ARPACK for both ends at once failed there. The shifted second run
    finds both ends: λ_min ≈ 0 and λ_max to 1e-3 relative."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(350, 770, generator=g, dtype=torch.float64) / 30
    h = (a.T @ a).float()
    true = torch.linalg.eigvalsh(h.double())
    assert int((true.abs() < 1e-6).sum()) == 420
    lo, hi = extreme_eigenvalues(lambda v: v @ h, 770, iters=20)
    assert abs(lo) < 1e-4 * float(true[-1])
    assert hi == pytest.approx(float(true[-1]), rel=1e-3)


def test_extreme_eigenvalues_indefinite_both_ends():
    """An indefinite spectrum with its largest magnitude at the negative end: both ends found."""
    values = torch.cat([torch.linspace(-3.0, -1.0, 5), torch.zeros(40), torch.linspace(0.1, 2.0, 55)])
    q, _ = torch.linalg.qr(torch.randn(100, 100, generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    h = (q @ torch.diag(values.double()) @ q.T).float()
    lo, hi = extreme_eigenvalues(lambda v: v @ h, 100, iters=20)
    assert lo == pytest.approx(-3.0, rel=1e-2) and hi == pytest.approx(2.0, rel=1e-2)


# --------------------------------------------------------------------------------------------
# Definiteness: one check, one error, for every solver
# --------------------------------------------------------------------------------------------

def _assert_refusal(err: IndefiniteHessianError, damping: float):
    msg = str(err)
    assert isinstance(err, ValueError)  # a bad argument, as CG's refusal always was
    assert f"damping={damping:g}" in msg and f"Set damping above {-err.lambda_min:.3g}" in msg
    assert err.damping == damping and err.lambda_min + damping <= 0


def test_every_solver_refuses_an_indefinite_system_with_one_error():
    """H with λ_min = -1 and damping 0.7: H + λI has the eigenvalue -0.3. The exact solve (which
    used to solve it and flip signs) and the full-rank low-rank solve see the exact λ_min and
    raise the identical message; CG raises the same error with the Rayleigh quotient of its
    non-positive-curvature direction, an upper bound on λ_min below -damping. With damping 1.5
    (H + λI ≻ 0) all of them return the damped solve."""
    a = indefinite_matrix(EIGS)
    v = torch.randn(Q, P, generator=torch.Generator().manual_seed(4), dtype=F64)
    factor = top_eigenpairs(lambda u: (u.to(F64) @ a).float(), P, rank=P)
    assert len(factor.eigenvalues) == P
    with pytest.raises(IndefiniteHessianError) as exact:
        exact_solve(a, v, damping=0.7)
    with pytest.raises(IndefiniteHessianError) as low:
        lowrank_solve(factor, v.float(), damping=0.7)
    with pytest.raises(IndefiniteHessianError) as cg:
        conjugate_gradient(lambda u: u @ a, v, damping=0.7)
    for info in (exact, low, cg):
        _assert_refusal(info.value, 0.7)
    assert exact.value.lambda_min == pytest.approx(-1.0, abs=1e-12)
    assert str(low.value) == str(exact.value) and "at or below -1 " in str(exact.value)
    assert -1.0 - 1e-12 <= cg.value.lambda_min <= -0.7
    expected = damped_solution(a, v, 1.5)
    assert rel_err(exact_solve(a, v, damping=1.5).x, expected) < 1e-12
    assert rel_err(conjugate_gradient(lambda u: u @ a, v, damping=1.5, tol=1e-10).x, expected) < 1e-8
    assert rel_err(lowrank_solve(factor, v.float(), damping=1.5).x.double(), expected) < 1e-5


def test_lowrank_closed_form_needs_positive_damping_outside_the_kept_pairs():
    """Outside the kept eigenvectors the closed form sees only the damping (H taken as 0 there):
    damping 0 with fewer pairs than parameters is a singular system, refused by the same check."""
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(12, 12, generator=gen, dtype=F64)
    h = m @ m.T / 12 + 0.1 * torch.eye(12, dtype=F64)
    factor = top_eigenpairs(lambda u: (u.to(F64) @ h).float(), 12, rank=6)
    assert 0 < len(factor.eigenvalues) < 12 and float(factor.eigenvalues.min()) > 0
    with pytest.raises(IndefiniteHessianError) as info:
        lowrank_solve(factor, torch.ones(1, 12), damping=0.0)
    _assert_refusal(info.value, 0.0)
    assert info.value.lambda_min == 0.0


HEAD_TRAIN = ["a good movie", "a bad movie", "great fun", "boring and slow", "the plot was great", "awful acting",
              "a lovely film", "a dull story", "fun and warm", "a terrible mess", "the best scene", "the worst scene"]
HEAD_LABELS = [1, 0] * 6


@pytest.fixture(scope="module")
def head_problem(tok):
    """A tiny BERT (hidden 8) whose head Hessian (pooler + classifier, P = 90, 12 examples) is
    indefinite: λ_min ≈ -0.475. Closed form: torch.func.hessian of the mean loss, float64."""
    model = tiny_bert(hidden_size=8, num_attention_heads=2, intermediate_size=16, initializer_range=0.5, seed=0)
    objective = make_train_loss(model, "head")
    data = prepare_data(objective, tok, HEAD_TRAIN, HEAD_LABELS, batch_size=4, max_length=16)
    hessian = torch.func.hessian(
        lambda th: torch.cat([objective.per_example_loss(th, b) for b in data.batches]).mean())(objective.theta)
    v = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(0))
    return objective, data, hessian.double(), v


# power_iters = P: the Lanczos estimate of λ_min is exact, so every refusal names the same value.
HEAD_SOLVERS = {
    "exact": dict(solver="exact"),
    "cg": dict(solver="cg", cg_tol=1e-6),
    "lowrank closed form": dict(solver="lowrank", rank=90, lowrank_refine=False),
    "lowrank refined": dict(solver="lowrank", rank=90, cg_tol=1e-6),
    "lissa": dict(solver="lissa", scale=8.0, depth=400, batch_size=12),  # mini-batch = all 12: exact HVPs
}


def test_compute_s_test_every_solver_refuses_damping_below_minus_lambda_min(head_problem):
    """damping 0.1 < 0.475 = -λ_min: exact (which used to solve the indefinite system), CG,
    low-rank (closed form and refined) and LiSSA raise the same error with the same message,
    naming damping and the value to exceed. With damping 1 each agrees with the closed form,
    the check reusing one set of estimates (``eigenvalues``) instead of new Lanczos runs."""
    objective, data, hessian, v = head_problem
    lambda_min = float(torch.linalg.eigvalsh(hessian)[0])
    assert -0.5 < lambda_min < -0.45
    messages = {}
    for name, solver in HEAD_SOLVERS.items():
        with pytest.raises(IndefiniteHessianError) as info:
            compute_s_test(objective, data, v, SolverOptions(**solver, damping=0.1, power_iters=90))
        _assert_refusal(info.value, 0.1)
        assert info.value.lambda_min == pytest.approx(lambda_min, rel=1e-5), name
        messages[name] = str(info.value)
    assert len(set(messages.values())) == 1 and f"at or below {lambda_min:.3g} " in messages["exact"]
    expected = torch.linalg.solve(hessian + torch.eye(90, dtype=F64), v.double().T).T
    _, eigenvalues = resolve_damping_scale(objective, data, SolverOptions(solver="cg", damping=1.0, power_iters=90))
    assert eigenvalues["lambda_min"] == pytest.approx(lambda_min, rel=1e-5)
    for name, solver in HEAD_SOLVERS.items():
        x = compute_s_test(objective, data, v, SolverOptions(**solver, damping=1.0), eigenvalues=eigenvalues).x
        assert rel_err(x.double(), expected) < 1e-5, name
    with pytest.raises(IndefiniteHessianError):  # the reused estimate is checked against the damping too
        compute_s_test(objective, data, v, SolverOptions(solver="cg", damping=0.1), eigenvalues=eigenvalues)


def test_explainer_refuses_indefinite_damping_before_any_query(head_problem, tok):
    """The Explainer checks a user-set damping when it resolves the solver, at construction."""
    objective, *_ = head_problem
    args = ExplainArguments(queries="all", max_length=16, batch_size=4,
                            solver=SolverOptions(solver="cg", damping=0.1, power_iters=90))
    with pytest.raises(IndefiniteHessianError) as info:
        Explainer(objective.model, tok, HEAD_TRAIN, HEAD_LABELS, args)
    _assert_refusal(info.value, 0.1)
