"""The solve s_test = (H + λI)⁻¹ ∇θ m of Eq. 4-5 (App. B), for the training loss of
:mod:`hf_pairdots.loss`.

* :func:`choose_solver`: ``solver="auto"`` made concrete (CG or LiSSA, by estimated cost);
* :func:`resolve_damping_scale`: automatic damping λ and LiSSA scale σ from Lanczos estimates of
  the Hessian's extreme eigenvalues, and the definiteness check of a user-set λ;
* :func:`lowrank_hessian`: the top eigenpairs of H for the ``"lowrank"`` solver, once;
* :func:`compute_s_test`: s_test by LiSSA / CG / exact / low rank, with the relative residual of
  every row.

The solvers themselves (:mod:`hf_pairdots.ihvp`) see the Hessian only through ``hvp(V) -> H V``;
this module builds those products from the prepared training data, with the curvature of
``SolverOptions.curvature`` (the Hessian, or the Gauss-Newton matrix: :mod:`hf_pairdots.curvature`;
"Hessian" below means that matrix).

Devices: the policy of ``docs/ARCHITECTURE.md`` ("Devices").
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from . import ihvp
from .arguments import SolverArguments
from .constants import KFAC_CURVATURES
from .curvature import full_product, mean_product
from .kfac import KroneckerInverse, check_linear, fit_kronecker
from .loss import PreparedData, TrainLoss


CG_PASSES = 12
"""Full-data HVP passes that :func:`choose_solver` expects of CG: CG to tol 1e-3 plus the
residual check took 10, to 1e-4 12, on MiniLM-L6 / SST-2 with automatic damping."""


def choose_solver(options: SolverArguments, data: PreparedData) -> SolverArguments:
    """``solver="auto"`` made concrete (other solvers are returned unchanged).

    LiSSA when an option only LiSSA reads is set (``scale``, ``repeat > 1``, ``keep_repeats``).
    Otherwise CG when its estimated cost, :data:`CG_PASSES` passes over the n training examples,
    is at most LiSSA's, ``depth x batch_size x repeat`` examples, and LiSSA when it is not (its
    cost does not grow with n). At the defaults CG is chosen up to n = 2,133. Both cost about
    the same per example and HVP direction; CG is also deterministic and more accurate for the
    same work (0.1 % against 3.4 % relative error on MiniLM-L6, benchmarks/RESULTS.md (c)).
    """
    if options.solver != "auto":
        return options
    if options.scale is not None or options.repeat > 1 or options.keep_repeats:
        return dataclasses.replace(options, solver="lissa")
    cg_cost = CG_PASSES * data.size
    lissa_cost = options.depth * options.batch_size * options.repeat
    return dataclasses.replace(options, solver="cg" if cg_cost <= lissa_cost else "lissa")


def resolve_damping_scale(objective: TrainLoss, data: PreparedData,
                          options: SolverArguments) -> tuple[SolverArguments, dict]:
    """Fill in automatic ``damping``/``scale`` from Lanczos eigenvalue estimates, and
    check a user-set ``damping`` against λ_min.

    λ_min from the full-data Hessian; λ_max from three sampled mini-batch Hessians (the LiSSA
    recursion multiplies by those, and their spectra are wider). λ and σ then follow
    :func:`~hf_pairdots.ihvp.auto_damping_scale`, for LiSSA including the requirement that the
    recursion converges within ``depth``. A user-set damping must satisfy λ_min + λ > 0
    (:func:`~hf_pairdots.ihvp.check_positive_definite`, for every solver alike), except with
    ``solver="exact"``, which checks the exact spectrum of its explicit Hessian instead and needs
    no estimate. The Lanczos λ_min lies inside the spectrum (it can only be too high), so the
    check may pass a system whose true λ_min is slightly lower; CG's curvature test backs it up.

    Returns ``(options with both set, estimates)`` (``estimates``: ``lambda_min``,
    ``lambda_max`` and for LiSSA ``lambda_max_minibatch``; empty when nothing was estimated).
    Cost: about 2-10 x power_iters HVPs on the full data (comparable to 3-4 CG solves of 8
    queries; measured in ``benchmarks/RESULTS.md``, row (c)), plus, for an automatic LiSSA scale,
    3 x that on mini-batches. ``solver="auto"`` is made concrete first (:func:`choose_solver`).

    Raises:
    ``curvature="kfac"`` / ``"ekfac"``: nothing is estimated (the factors are positive
    semi-definite); an automatic damping is ``min_damping``. The parameters are checked to be
    Linear layers' (:func:`~hf_pairdots.kfac.check_linear`) before any other work.

    Raises:
        IndefiniteHessianError: a user-set ``damping`` is at most -λ_min (a ``ValueError``).
        UnsupportedModelError: K-FAC / EK-FAC over parameters outside ``nn.Linear`` layers.
    """
    if options.curvature in KFAC_CURVATURES:
        check_linear(objective)
        return dataclasses.replace(options, damping=options.min_damping if options.damping is None
                                   else options.damping), {}
    options = choose_solver(options, data)
    numel = objective.params.numel
    if options.damping is not None and options.solver == "exact":
        return options, {}  # exact_solve checks the eigenvalues of the explicit Hessian
    gen = torch.Generator().manual_seed(options.seed)
    device = objective.theta.device
    lo, hi = ihvp.extreme_eigenvalues(full_product(objective, data, options.curvature), numel,
                                      iters=options.power_iters, seed=options.seed, device=device,
                                      dtype=objective.theta.dtype)
    estimates = {"lambda_min": lo, "lambda_max": hi}
    if options.damping is not None:
        ihvp.check_positive_definite(lo, options.damping)
        if options.scale is not None or options.solver != "lissa":
            return options, estimates
    top = hi
    if options.solver == "lissa":
        for k in range(3):
            batches = data.sample(gen, options.batch_size)
            product = lambda u, b=batches: mean_product(objective, b, u, options.curvature)  # noqa: E731
            top = max(top, ihvp.extreme_eigenvalues(product, numel,
                                                    iters=options.power_iters, seed=options.seed + k + 1,
                                                    device=device, dtype=objective.theta.dtype)[1])
        estimates["lambda_max_minibatch"] = top
    depth = options.depth if options.solver == "lissa" else None
    damping, scale = ihvp.auto_damping_scale(lo, top, damping=options.min_damping, depth=depth)
    damping = damping if options.damping is None else options.damping
    scale = ihvp.auto_damping_scale(0.0, top, damping=damping)[1] if options.scale is None else options.scale
    return dataclasses.replace(options, damping=damping, scale=scale), estimates


def lowrank_hessian(objective: TrainLoss, data: PreparedData, options: SolverArguments) -> ihvp.LowRankHessian:
    """The top-``options.rank`` eigenpairs of the full-data Hessian, for the ``"lowrank"`` solver.

    Compute once, pass to every :func:`compute_s_test` call. The eigenvectors ``(P, rank)`` live
    on the parameters' device. Cost: 3 full-data HVPs of ``rank`` vectors each (block Lanczos,
    :func:`~hf_pairdots.ihvp.top_eigenpairs`); memory 3 x rank x P floats while it runs.
    """
    return ihvp.top_eigenpairs(full_product(objective, data, options.curvature), objective.params.numel, options.rank,
                               seed=options.seed,
                               device=objective.theta.device, dtype=objective.theta.dtype)


def compute_s_test(objective: TrainLoss, data: PreparedData, v: Tensor, options: SolverArguments | None = None,
                   residual_examples: int = 256, lowrank: ihvp.LowRankHessian | None = None,
                   eigenvalues: dict | None = None, kronecker: KroneckerInverse | None = None) -> ihvp.IHVPResult:
    """s_test = (H + λI)⁻¹ v for ``v`` of shape ``(Q, P)`` (rows: ∇θ m of Q measurements; App. B,
    the vector of Eq. 4-5, whose scores are I(z, m) = -s_testᵀ ∇θ L(z)).

    ``v`` may live on any device; it is moved to the parameters' device, where the whole solve
    runs. Returns an :class:`~hf_pairdots.ihvp.IHVPResult` with ``x`` of shape ``(Q, P)`` on the
    parameters' device (so are the per-repeat solutions below), ``diagnostics`` holding the
    solve-level values (solver, λ, σ, ..., and the eigenvalue estimates when made here: for
    automatic damping or scale, or to check a user-set damping) and, per query,
    :attr:`~hf_pairdots.ihvp.IHVPResult.relative_residual`
    ||(H + λI)s - v|| / ||v||, measured with the full-data Hessian for row-wise (cached) data and
    otherwise with the Hessian of ``residual_examples`` sampled training examples (all when the
    data is smaller; a sample's own Hessian differs from H, so read that value as an upper
    bound blurred by sampling). With LiSSA and ``options.keep_repeats`` also
    :attr:`~hf_pairdots.ihvp.IHVPResult.repeats`, the ``(R, Q, P)`` per-repeat solutions, for
    the top-k stability of :mod:`hf_pairdots.stability`.

    Each row is solved independently of the others: LiSSA's mini-batches are drawn from a
    generator seeded by ``options.seed`` whatever Q is, and so is the residual's sample, so row q
    of a solve with Q rows equals the solve of that row alone (up to float32 rounding of the
    vectorised products). The per-row cache of :class:`hf_pairdots.explain.Explainer` relies on it.

    Definiteness: every solver refuses an indefinite H + λI alike, with one error
    (:func:`~hf_pairdots.ihvp.check_positive_definite`): a user-set damping is checked against
    the Lanczos λ_min of :func:`resolve_damping_scale` before any solver runs (``exact`` checks
    the exact spectrum of its explicit Hessian instead), then CG and the low-rank closed form
    check what they see themselves.

    ``eigenvalues``: the estimates :func:`resolve_damping_scale` returned with ``options`` (which
    must then have ``damping``, and for LiSSA ``scale``, set): the definiteness check reuses their
    ``lambda_min`` instead of new Lanczos runs (the :class:`~hf_pairdots.explain.Explainer`
    resolves once and passes them to every solve). ``None``: resolved here.

    Cost: LiSSA depth x repeat mini-batch HVPs (Q vectors each); CG up to cg_max_iter full-data
    HVPs; exact P full-data HVPs and an O(P³) eigenvalue decomposition and solve; low-rank, beyond
    ``lowrank`` (computed here when not given, see :func:`lowrank_hessian`), one full-data HVP per
    CG iteration when ``options.lowrank_refine`` (preconditioned by the factor: fewer iterations
    than plain CG) and none otherwise; plus, without ``eigenvalues``, :func:`resolve_damping_scale`
    (also for a user-set damping, to check it; not for ``exact``).

    ``curvature="kfac"`` / ``"ekfac"``: s_test = (C + λI)⁻¹ v in closed form from the Kronecker
    factors (:mod:`hf_pairdots.kfac`; ``solver`` is not used). ``kronecker``: the factors fitted
    once by :func:`~hf_pairdots.kfac.fit_kronecker` with this curvature and λ (the Explainer fits
    them once); ``None``: fitted here (one to two passes over the data). The relative residual is
    then measured against C itself (it checks the float32 inverse, not how close C is to the GGN:
    that is measured in ``tests/test_kfac.py`` and ``benchmarks/RESULTS.md``).

    Raises:
        IndefiniteHessianError: H + λI is not positive definite (a ``ValueError``; names
            ``damping`` and the value to exceed).
        LissaDivergenceError: the LiSSA recursion diverged (names ``scale`` and ``damping``).
        FloatingPointError: s_test is not finite.
        ValueError: ``kronecker`` fitted with another curvature or damping than ``options``.
    """
    options = options or SolverArguments()
    if options.curvature in KFAC_CURVATURES:
        return _kronecker_s_test(objective, data, v, options, kronecker)
    options = choose_solver(options, data)
    v = v.to(objective.theta.device)
    estimates = {}
    if eigenvalues is None or options.damping is None or (options.solver == "lissa" and options.scale is None):
        options, estimates = resolve_damping_scale(objective, data, options)
    elif "lambda_min" in eigenvalues:
        ihvp.check_positive_definite(eigenvalues["lambda_min"], options.damping)
    full = full_product(objective, data, options.curvature)
    gen = torch.Generator().manual_seed(options.seed)
    if options.solver == "lissa":
        sampled = lambda h, t: mean_product(objective, data.sample(gen, options.batch_size), h, options.curvature)  # noqa: E731
        result = ihvp.lissa(sampled, v,
                            damping=options.damping, scale=options.scale, depth=options.depth, repeat=options.repeat,
                            keep_repeats=options.keep_repeats)
    elif options.solver == "cg":
        result = ihvp.conjugate_gradient(full, v, damping=options.damping, tol=options.cg_tol,
                                         max_iter=options.cg_max_iter)
    elif options.solver == "lowrank":
        result = ihvp.lowrank_solve(lowrank or lowrank_hessian(objective, data, options), v, damping=options.damping,
                                    hvp=full if options.lowrank_refine else None, tol=options.cg_tol,
                                    max_iter=options.cg_max_iter)
    else:
        result = ihvp.exact_solve(ihvp.explicit_hessian(full, objective.params.numel, dtype=v.dtype, device=v.device),
                                  v, damping=options.damping)
    result.diagnostics.update(estimates)
    # Row-wise (cached) data: the full-data Hessian costs one cheap pass. A 256-row sample's Hessian
    # made even an exact CG solve read 0.14-0.17 on MiniLM (all rows: < 1e-4).
    check = data.batches if data.rowwise else data.sample(torch.Generator().manual_seed(options.seed + 1),
                                                          residual_examples)
    result.relative_residual = ihvp.relative_residual(
        lambda u: mean_product(objective, check, u, options.curvature), result.x, v, options.damping)
    if not torch.isfinite(result.x).all():
        raise FloatingPointError(f"s_test is not finite ({options.solver}); see the diagnostics: {result.diagnostics}, "
                                 f"relative residual {result.relative_residual}")
    return result


def _kronecker_s_test(objective: TrainLoss, data: PreparedData, v: Tensor, options: SolverArguments,
                      kronecker: KroneckerInverse | None) -> ihvp.IHVPResult:
    """:func:`compute_s_test` for ``curvature="kfac"`` / ``"ekfac"``."""
    options, _ = resolve_damping_scale(objective, data, options)
    if kronecker is None:
        kronecker = fit_kronecker(objective, data, options.curvature, options.damping)
    elif (kronecker.curvature, kronecker.damping) != (options.curvature, options.damping):
        raise ValueError(f"kronecker was fitted for curvature={kronecker.curvature!r}, damping={kronecker.damping}; "
                         f"the options ask for {options.curvature!r}, {options.damping}")
    v = v.to(objective.theta.device)
    result = ihvp.IHVPResult(kronecker.solve(v), {"solver": options.curvature, "damping": options.damping})
    result.relative_residual = ihvp.relative_residual(kronecker.product, result.x, v, options.damping)
    if not torch.isfinite(result.x).all():
        raise FloatingPointError(f"s_test is not finite ({options.curvature}, damping {options.damping})")
    return result
