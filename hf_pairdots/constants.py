"""The choice lists of hf_pairdots: every option that takes one of a fixed set of strings.

Each set is a ``Literal`` type (what the options dataclasses declare, and what
``transformers.HfArgumentParser`` turns into ``choices``) and a tuple of its values (what the
checks print). The modules that use a set re-export its tuple under the name it had there
(``hf_pairdots.saliency.MODES``, ``hf_pairdots.influence.ERASERS``, ...). This module imports
nothing from hf_pairdots, so every module may import it.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "ANTONYM_LABEL_RULES", "EDIT_MODES", "ERASERS", "LABEL_ROLES", "LAST_PREFIX", "MODES", "PRESETS", "QUERY_SETS",
    "ROLES", "SALIENT_BY", "SOLVERS", "TARGETS",
    "AntonymLabel", "EditMode", "Eraser", "Preset", "QuerySet", "Role", "SaliencyMode", "SaliencyTarget",
    "SalientBy", "Solver",
]

Solver = Literal["auto", "lissa", "cg", "exact", "lowrank"]
SOLVERS: tuple[str, ...] = get_args(Solver)
"""s_test solvers (:class:`~hf_pairdots.arguments.SolverArguments` ``solver``)."""

QuerySet = Literal["misclassified", "all", "indices"]
QUERY_SETS: tuple[str, ...] = get_args(QuerySet)
"""Which rows of the query split are explained (``queries``)."""

Role = Literal["gold", "predicted"]
ROLES: tuple[str, ...] = get_args(Role)
"""The label rows of a query: its gold label y and the model's predicted label y' (gold first)."""

LABEL_ROLES: tuple[str, ...] = ("predicted", "gold")
"""The label rows explained by default (``labels``), in the records' order: predicted first."""

SaliencyMode = Literal["gradient", "grad_x_input", "l2", "occlusion"]
MODES: tuple[str, ...] = get_args(SaliencyMode)
"""A word's saliency (:func:`hf_pairdots.saliency.saliency`): a reduction of ∂S/∂e (Sec. 3.1), or
``"occlusion"``, the drop of S_y when the word is erased (no gradient)."""

SaliencyTarget = Literal["prob", "logprob", "margin"]
TARGETS: tuple[str, ...] = get_args(SaliencyTarget)
"""The score S_y whose gradient saliency takes (:func:`hf_pairdots.saliency.saliency`)."""

SalientBy = Literal["value", "magnitude"]
SALIENT_BY: tuple[str, ...] = get_args(SalientBy)
"""Which word is the most salient one: largest signed s(x_t) (the paper) or largest |s(x_t)|."""

Eraser = Literal["unk", "mask", "zero"]
ERASERS: tuple[str, ...] = get_args(Eraser)
"""How Eq. 8 erases a word of a training example (:func:`hf_pairdots.influence.erased_variants`)."""

EditMode = Literal["fix", "attack"]
EDIT_MODES: tuple[str, ...] = get_args(EditMode)
"""Values of ``edit`` besides ``None`` (no edits): the edit goals of Sec. 4.3 or Sec. 4.2."""

Preset = Literal["auto", "all", "top", "head", "classifier", "lora", "linear"]
PRESETS: tuple[str, ...] = get_args(Preset)
"""Fixed parameter-subset names; ``"last:K"`` (the last K encoder layers + head) is accepted besides
these (:func:`hf_pairdots.autograd.select_parameters`)."""

LAST_PREFIX = "last:"
"""The prefix of the ``"last:K"`` parameter subset."""

AntonymLabel = Literal["keep", "flip"]
ANTONYM_LABEL_RULES: tuple[str, ...] = get_args(AntonymLabel)
"""The label of an antonym edit: kept (the paper) or flipped (binary tasks)."""

# Curvature and ranking options of the influence solve (kept together for an easy merge).
__all__ += ["CURVATURES", "KFAC_CURVATURES", "PRODUCT_CURVATURES", "RANKINGS", "Curvature", "Ranking"]

Curvature = Literal["hessian", "ggn", "kfac", "ekfac"]
CURVATURES: tuple[str, ...] = get_args(Curvature)
"""The curvature matrix of the s_test solve: the Hessian of the mean training loss, or its
Gauss-Newton part Jᵀ H_out J (positive semi-definite; both :mod:`hf_pairdots.curvature`), or the
Kronecker-factored approximations of the latter over Linear layers (:mod:`hf_pairdots.kfac`)."""
PRODUCT_CURVATURES: tuple[str, ...] = ("hessian", "ggn")
"""Curvatures used through matrix-vector products by the iterative solvers."""
KFAC_CURVATURES: tuple[str, ...] = ("kfac", "ekfac")
"""Curvatures inverted in closed form from Kronecker factors (no HVP iterations)."""

Ranking = Literal["raw", "unit"]
RANKINGS: tuple[str, ...] = get_args(Ranking)
"""How training examples are ranked for a measurement (:func:`hf_pairdots.influence.rank_scores`):
by Eq. 5's I(z, m), or by I(z, m) / ||∇θ L(z)||₂ (unit-normalised training gradients)."""

# The training problems of a ``*ForSequenceClassification`` head (``config.problem_type``).
__all__ += ["MULTI_LABEL", "PROBLEM_TYPES", "REGRESSION", "SINGLE_LABEL"]

SINGLE_LABEL, MULTI_LABEL, REGRESSION = "single_label_classification", "multi_label_classification", "regression"
PROBLEM_TYPES: tuple[str, ...] = (SINGLE_LABEL, MULTI_LABEL, REGRESSION)
"""The values of ``config.problem_type`` a ``*ForSequenceClassification`` head trains with
(:func:`hf_pairdots.modeling.problem_type`)."""
