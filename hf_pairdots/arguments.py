"""Options dataclasses: validated on construction, round-trip through JSON.

Every check raises ``ValueError`` with a message that names the argument and the fix.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .io import atomic_write_text

SOLVERS = ("auto", "lissa", "cg", "exact", "lowrank")
QUERY_SETS = ("misclassified", "all", "indices")
LABEL_ROLES = ("predicted", "gold")


class _Serializable:
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict):
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path):
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        return cls.from_dict(json.loads(text))


def _positive(owner: str, **values) -> None:
    for name, value in values.items():
        if value is not None and value <= 0:
            raise ValueError(f"{owner}.{name}={value}: must be > 0")


@dataclass
class SolverOptions(_Serializable):
    """How to solve (H + λI) s = ∇θ m (App. B).

    Attributes:
        solver: ``"auto"`` (default: CG or LiSSA, whichever is estimated to touch fewer training
            examples; LiSSA when ``scale``, ``repeat > 1`` or ``keep_repeats`` is set; see
            :func:`hf_pairdots.solve.choose_solver`), ``"lissa"`` (the paper),
            ``"cg"`` or ``"exact"`` (exact builds the P x P Hessian, for small parameter sets
            only), or ``"lowrank"`` (top-``rank`` eigenpairs computed once and reused for every
            query, see ``lowrank_refine``).
        damping: λ; ``None`` = ``min_damping`` plus 1.5 x minus the smallest Hessian eigenvalue
            (power-iteration estimate), so that H + λI is positive definite.
        scale: σ of LiSSA; ``None`` = 1.5 x (largest mini-batch eigenvalue + λ), so that the
            spectrum of (H + λI)/σ lies inside (0, 1).
        min_damping: smallest λ used when ``damping`` is automatic.
        depth, repeat: LiSSA recursion steps T and independent runs R (results averaged).
        batch_size: training examples per stochastic HVP in LiSSA.
        seed: mini-batch sampling and power-iteration start.
        power_iters: HVPs per power iteration (eigenvalue estimates).
        cg_tol, cg_max_iter: CG stopping rule (relative residual, iterations).
        rank: eigenpairs kept by the low-rank solver.
        lowrank_refine: low-rank solver only: use the eigenpairs as the preconditioner and
            starting point of CG on the full Hessian, run to ``cg_tol`` (default), or, ``False``,
            return the closed-form inverse of the low-rank approximation (no HVP per query;
            directions outside the top ``rank`` see only the damping).
        keep_repeats: LiSSA only: keep the R per-repeat solutions (``diagnostics["repeats"]``,
            ``(R, Q, P)``) for the top-k stability check of :mod:`hf_pairdots.stability`.
            With ``repeat > 1`` the spread of the repeats is reported either way, and
            :class:`~hf_pairdots.explain.Explainer` keeps the repeats itself to report the top-k
            overlap (``diagnostics["topk_overlap"]``).
        cache_dir: folder of an :class:`hf_pairdots.cache.STestCache` where
            :class:`~hf_pairdots.explain.Explainer` keeps s_test and the training scores of every
            measurement row and reads them back on a later run (``None`` = no cache). Neither this
            nor ``keep_repeats`` is part of the cache key.
        curvature: the matrix C of (C + λI) s = ∇θ m (:mod:`hf_pairdots.curvature`): ``"hessian"``
            (default: the Hessian of the mean training loss, indefinite near a fine-tuned optimum, so
            the automatic λ exceeds -λ_min) or ``"ggn"`` (the Gauss-Newton matrix Jᵀ H_out J,
            positive semi-definite: the automatic λ stays near ``min_damping``; same cost per product).
    """

    solver: str = "auto"
    damping: float | None = None
    scale: float | None = None
    min_damping: float = 0.01
    depth: int = 200
    repeat: int = 1
    batch_size: int = 128
    seed: int = 0
    power_iters: int = 20
    cg_tol: float = 1e-3
    cg_max_iter: int = 300
    rank: int = 50
    lowrank_refine: bool = True
    keep_repeats: bool = False
    cache_dir: str | None = None
    # Curvature of the solve (grouped here for an easy merge).
    curvature: str = "hessian"

    def __post_init__(self):
        from .constants import CURVATURES  # local: keep this module import-light

        if self.curvature not in CURVATURES:
            raise ValueError(f"SolverOptions.curvature={self.curvature!r}: use one of {CURVATURES}")
        for name in ("keep_repeats", "lowrank_refine"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"SolverOptions.{name}={getattr(self, name)!r}: must be True or False")
        if self.cache_dir is not None:
            self.cache_dir = str(self.cache_dir)
        if self.solver not in SOLVERS:
            raise ValueError(f"SolverOptions.solver={self.solver!r}: use one of {SOLVERS}")
        _positive("SolverOptions", scale=self.scale, depth=self.depth, repeat=self.repeat,
                  batch_size=self.batch_size, power_iters=self.power_iters, cg_tol=self.cg_tol,
                  cg_max_iter=self.cg_max_iter, rank=self.rank)
        if self.damping is not None and self.damping < 0:
            raise ValueError(f"SolverOptions.damping={self.damping}: must be >= 0 (or None for automatic)")
        if self.min_damping < 0:
            raise ValueError(f"SolverOptions.min_damping={self.min_damping}: must be >= 0")


@dataclass
class ExplainArguments(_Serializable):
    """What to explain and how (Sec. 4.1, error analysis).

    Attributes:
        queries: ``"misclassified"`` (dev errors, the paper's error analysis), ``"all"``, or
            ``"indices"`` (``query_indices``).
        query_indices: rows of the query split, with ``queries="indices"``.
        max_queries: explain at most this many (the first ones, in row order); ``None`` = all.
        labels: which labels to explain per query: ``"predicted"`` and/or ``"gold"``.
        top_k: responsible training examples kept per explained label.
        params: parameter subset θ_S (see :func:`hf_pairdots.autograd.select_parameters`);
            ``"auto"``: the LoRA adapters of a peft model, else pooler + classifier (``"head"``).
        saliency_mode, saliency_target: see :mod:`hf_pairdots.saliency`.
        salient_by: which word is "most salient" and what Eq. 5 measures: ``"value"`` (the
            paper: largest signed s(x_t), m = s(x_t)) or ``"magnitude"`` (largest |s(x_t)|,
            m = |s(x_t)|).
        eraser: how Eq. 8 erases a word: ``"unk"``, ``"mask"`` or ``"zero"``.
        max_length: truncation length in tokens (truncation is reported per query).
        batch_size: examples per forward pass.
        output_subdir: sub-folder of the Trainer's ``output_dir`` for the outputs.
        edit: also propose a WordNet edit of every top-k training example (Sec. 4.2-4.3):
            ``"fix"`` (gold row: ↑I(z, w_y); predicted row: ↓I(z, w_y'); synonyms and
            antonyms), ``"attack"`` (gold row: ↓I(z, w_y); predicted row: ↑I(z, w_y');
            synonyms only), or ``None``.
        edit_top_k: propose edits for only the first this many of the top-k examples
            (``None`` = all of them); each edit costs about (1 + T) x max_candidates forward passes.
        num_sampled, max_candidates, seed: the edit search's T random positions, substitutes
            per position, and seed (see :mod:`hf_pairdots.augment.search`).
        solver: :class:`SolverOptions`.
        suspicious: also list this many training examples with the largest self-influence
            ∇θL(z)ᵀ(H + λI)⁻¹∇θL(z) (:func:`hf_pairdots.influence.self_influence`: the examples
            the model finds surprising, typically mislabelled ones) in ``suspicious.json`` and the
            report, and check how they sit in the ranking by influence on the query split's loss
            (:func:`hf_pairdots.influence.tail_disagreement`); 0 (default) = off. Cost with
            ``suspicious_params="classifier"``: about one forward pass over the training and query
            sets, one explicit Hessian of the classifier and one dev-loss solve over ``params``.
        suspicious_params: θ_S of the self-influence (default ``"classifier"``: exact and cheap,
            2 s for 2,000 SST-2 sentences on MiniLM-L6, where it put 35.5 % flipped labels in its
            top decile at a 5 % base rate and ``"head"`` did no better on the same rows, at about
            one CG solve per training example; benchmarks/RESULTS.md, "Noisy labels").
        ranking: how the top-k training examples of a measurement are chosen
            (:func:`hf_pairdots.influence.rank_scores`): ``"unit"`` (default: I(z, m) / ||∇θ L(z)||₂
            over θ_S, unit-normalised training gradients, which keeps a few large-gradient examples
            from topping every list) or ``"raw"`` (Eq. 5's I(z, m), the paper). Records keep the raw
            I(z, m). ``"unit"`` costs one per-example gradient pass over the training set, once per
            Explainer (14 s, 0.03 training epochs, for 2,000 SST-2 sentences on MiniLM-L6's head,
            where it lowered the largest share of rows one example explains from 12.2 % to 9.4 %;
            docs/explanations.md).
    """

    queries: str = "misclassified"
    query_indices: list[int] | None = None
    max_queries: int | None = 30
    labels: tuple[str, ...] = LABEL_ROLES
    top_k: int = 5
    params: str | list[str] = "auto"
    saliency_mode: str = "gradient"
    saliency_target: str = "prob"
    salient_by: str = "value"
    eraser: str = "unk"
    max_length: int = 128
    batch_size: int = 64
    output_subdir: str = "pairdots"
    edit: str | None = None
    edit_top_k: int | None = None
    num_sampled: int = 5
    max_candidates: int = 20
    seed: int = 0
    solver: SolverOptions = field(default_factory=SolverOptions)
    suspicious: int = 0
    suspicious_params: str | list[str] = "classifier"
    # Ranking of the training examples (grouped here for an easy merge).
    ranking: str = "unit"

    def __post_init__(self):
        from .constants import RANKINGS
        from .saliency import MODES, TARGETS  # local: keep this module import-light

        if isinstance(self.solver, dict):
            self.solver = SolverOptions.from_dict(self.solver)
        self.labels = tuple(self.labels)
        checks = {
            "queries": (self.queries, QUERY_SETS),
            "saliency_mode": (self.saliency_mode, MODES),
            "saliency_target": (self.saliency_target, TARGETS),
            "eraser": (self.eraser, ("unk", "mask", "zero")),
            "salient_by": (self.salient_by, ("value", "magnitude")),
            "edit": (self.edit, (None, "fix", "attack")),
            "ranking": (self.ranking, RANKINGS),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"ExplainArguments.{name}={value!r}: use one of {allowed}")
        if not self.labels or any(r not in LABEL_ROLES for r in self.labels):
            raise ValueError(f"ExplainArguments.labels={self.labels!r}: use a non-empty subset of {LABEL_ROLES}")
        if self.queries == "indices" and not self.query_indices:
            raise ValueError("ExplainArguments.query_indices: give the rows to explain when queries='indices'")
        _positive("ExplainArguments", max_queries=self.max_queries, top_k=self.top_k,
                  max_length=self.max_length, batch_size=self.batch_size, max_candidates=self.max_candidates,
                  edit_top_k=self.edit_top_k)
        if self.num_sampled < 0:
            raise ValueError(f"ExplainArguments.num_sampled={self.num_sampled}: must be >= 0")
        if isinstance(self.suspicious, bool) or not isinstance(self.suspicious, int) or self.suspicious < 0:
            raise ValueError(f"ExplainArguments.suspicious={self.suspicious!r}: give the number of training examples "
                             "to list (an int >= 0; 0 = off)")
