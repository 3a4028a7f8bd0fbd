"""What a query's prediction, its error and its explained outputs are, per training problem
(``config.problem_type``: :data:`~hf_pairdots.constants.PROBLEM_TYPES`).

The paper (Sec. 4.1) explains a single-label classifier's dev errors through two labels, the
wrong prediction y' and the gold y, with S_y the softmax probability. The same measurement for
the other heads of ``*ForSequenceClassification``:

* **multi-label** (independent sigmoid labels, trained with BCE): S_y = sigmoid(logit_y); a
  label is predicted when S_y >= :data:`THRESHOLD`; a query is an error when some label's
  prediction disagrees with the gold multi-hot row, and each such label is explained: role
  ``"predicted"`` for a label predicted but not gold (a false positive, the y' of the paper),
  ``"gold"`` for a gold label not predicted (a false negative, its y);
* **regression** (one output, trained with MSE): S = f(x), the predicted value; one explained
  row per query (role ``"predicted"``, output 0); the errors of a split are the rows whose
  absolute error |f(x) - target| exceeds the split's root-mean-square error, the largest first
  (:func:`regression_errors`).

Every function here works on the model's scores of one text (``(K,)``,
:func:`~hf_pairdots.modeling.output_scores`) and its gold label as the dataset holds it: a class
id, a multi-hot row, a float target, or ``None`` when the split is unlabelled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .constants import MULTI_LABEL, REGRESSION, SINGLE_LABEL

__all__ = ["THRESHOLD", "explained_outputs", "gold_problem", "is_error", "prediction", "regression_errors"]

THRESHOLD = 0.5
"""A multi-label label is predicted when its sigmoid probability is at least this."""


def prediction(kind: str, scores: Tensor):
    """The model's prediction from its scores ``(K,)``: the argmax class id (single-label), the
    multi-hot row of the labels with S_y >= :data:`THRESHOLD` (multi-label, ``list[int]``), or
    the predicted value (regression, ``float``)."""
    if kind == SINGLE_LABEL:
        return int(scores.argmax())
    if kind == MULTI_LABEL:
        return [int(p >= THRESHOLD) for p in scores.tolist()]
    return float(scores[0])


def gold_problem(kind: str, gold, num_labels: int) -> str | None:
    """Why a query's gold label cannot be compared with the model's outputs (the reason a query
    is skipped), or ``None`` when it can (``None`` gold, unlabelled, can)."""
    if gold is None:
        return None
    if kind == SINGLE_LABEL:
        return None if 0 <= gold < num_labels else f"label {gold} outside the model's {num_labels} labels"
    if kind == REGRESSION:
        finite = isinstance(gold, (int, float)) and math.isfinite(gold)
        return None if finite else f"target {gold!r} is not a finite number"
    row = list(gold) if isinstance(gold, (list, tuple)) else None
    if row is None or len(row) != num_labels or not all(0 <= float(v) <= 1 for v in row):
        return f"label {gold!r} is not a multi-hot row of the model's {num_labels} labels"
    return None


def is_error(kind: str, scores: Tensor, gold) -> bool:
    """Whether a labelled query is misclassified: argmax != gold (single-label), or some label's
    thresholded prediction differs from its gold value (multi-label; a gold value counts as on
    when >= :data:`THRESHOLD`). Regression has no per-example rule: :func:`regression_errors`.

    Raises:
        ValueError: ``kind`` is regression.
    """
    if kind == REGRESSION:
        raise ValueError("is_error: regression errors are relative to the split; use regression_errors")
    if kind == SINGLE_LABEL:
        return int(scores.argmax()) != gold
    return bool(_wrong_labels(scores, gold))


def regression_errors(values: Tensor, golds: Sequence, rows: Sequence[int], max_queries: int | None) -> list[int]:
    """The regression errors among ``rows`` (labelled, scorable rows of a split), in row order:
    the rows whose absolute error |f(x) - target| exceeds the root-mean-square error over
    ``rows``, at most ``max_queries`` of them (the largest errors; ``None``: all).

    ``values`` ``(N,)``: the predictions of every row; ``golds``: the targets of every row.
    The threshold is scale-free (about a third of the rows under Gaussian errors) and never
    selects anything when every prediction is exact.
    """
    if not rows:
        return []
    errors = {i: abs(float(values[i]) - float(golds[i])) for i in rows}
    rmse = math.sqrt(sum(e * e for e in errors.values()) / len(errors))
    above = sorted((i for i, e in errors.items() if e > rmse), key=lambda i: -errors[i])
    return sorted(above[:max_queries])


def explained_outputs(kind: str, scores: Tensor, gold, roles: Sequence[str], attack: bool = False) -> dict[int, str]:
    """``{output index: role}`` of the rows explained for one query, in the records' order.

    * single-label: the wrong label y' (the prediction; with ``attack`` and a correct prediction,
      the runner-up, since y' of Eq. 10 must be wrong) as ``"predicted"`` and y as ``"gold"``,
      the roles of ``roles`` in that order, a label named by two roles once (its first);
    * multi-label: each wrong label (see :func:`is_error`), ``"predicted"`` for a false positive,
      ``"gold"`` for a false negative, in label order, the roles of ``roles``; a query without a
      wrong label (selected by ``queries="all"``/``"indices"``, or unlabelled) explains its
      predicted labels as ``"predicted"``, or the most probable one when none is predicted;
    * regression: ``{0: "predicted"}``.

    Args:
        scores: ``(K,)`` the model's scores of the query (:func:`~hf_pairdots.modeling.output_scores`).
        gold: its gold label, ``None`` when unlabelled.
        roles: ``ExplainArguments.labels``, a subset of ``("predicted", "gold")``.
    """
    if kind == REGRESSION:
        return {0: "predicted"}
    if kind == MULTI_LABEL:
        return _multi_label_outputs(scores, gold, roles)
    ranked = scores.argsort(descending=True).tolist()
    wrong = ranked[0]
    if attack and wrong == gold and len(ranked) > 1:
        wrong = ranked[1]
    named = {"predicted": wrong, "gold": gold}
    explained: dict[int, str] = {}
    for role in roles:
        if named[role] is not None:
            explained.setdefault(named[role], role)
    return explained


def _wrong_labels(scores: Tensor, gold) -> dict[int, str]:
    """``{label: "predicted" | "gold"}`` of the labels whose prediction differs from ``gold``."""
    on = [p >= THRESHOLD for p in scores.tolist()]
    return {y: "predicted" if on[y] else "gold" for y, g in enumerate(gold) if on[y] != (float(g) >= THRESHOLD)}


def _multi_label_outputs(scores: Tensor, gold, roles: Sequence[str]) -> dict[int, str]:
    wrong = {} if gold is None else _wrong_labels(scores, gold)
    if wrong:
        return {y: role for y, role in wrong.items() if role in roles}
    on = [y for y, p in enumerate(scores.tolist()) if p >= THRESHOLD]
    return {y: "predicted" for y in (on or [int(torch.argmax(scores))])}
