"""How stable the top-k training examples are across LiSSA repeats.

LiSSA is stochastic: each of its R repeats (``SolverArguments.repeat``) draws its own mini-batches.
:func:`hf_pairdots.ihvp.lissa` reports how far the repeats' s_test estimates are apart
(``repeat_relative_spread``); what a reader sees, though, is the top-k list of training examples.
:func:`topk_overlap` measures whether that list survives the solver noise: score the training set
with every repeat's s_test (``lissa(..., keep_repeats=True)`` -> ``IHVPResult.repeats``,
then ``train_influence`` once per repeat) and compare the top-k sets. Pure functions, no state.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch
from torch import Tensor


def topk_overlap(score_matrix_per_repeat: Sequence[Tensor], k: int) -> list[float]:
    """Mean Jaccard similarity of the top-k sets across every pair of repeats, per query.

    For query q and repeats a < b: J = |T_a ∩ T_b| / |T_a ∪ T_b| with T_r the indices of the k
    largest entries of row q of repeat r's scores (the largest *signed* influence, as the
    explanations rank). The result is the mean of J over the R(R-1)/2 pairs: 1.0 = every repeat
    picks the same k examples; 0.0 = no two repeats share one.

    Args:
        score_matrix_per_repeat: R ≥ 2 tensors of shape ``(Q, N)`` (Q measurements x N training
            examples), e.g. ``train_influence(objective, data, repeats[r])``.
        k: top-k size, ≥ 1; capped at N (then every overlap is 1.0).

    Returns:
        Q floats in [0, 1]. Ties are broken by ``torch.topk`` (exact ties between distinct
        examples can make identical score matrices disagree only when k cuts through a tie).
        Cost: R top-k selections of ``(Q, N)`` plus R²/2 set intersections of size k per query.

    Raises:
        ValueError: fewer than two repeats, shapes that differ or are not 2-D, or k < 1.
    """
    mats = list(score_matrix_per_repeat)
    if len(mats) < 2:
        raise ValueError(f"topk_overlap needs the scores of at least 2 repeats, got {len(mats)}")
    shape = tuple(mats[0].shape)
    if len(shape) != 2 or any(tuple(m.shape) != shape for m in mats):
        raise ValueError(f"every score matrix must have one (Q, N) shape; got {[tuple(m.shape) for m in mats]}")
    if k < 1:
        raise ValueError(f"k={k}: must be >= 1")
    k = min(k, shape[1])
    tops = [[set(row) for row in torch.topk(m.detach(), k, dim=1).indices.tolist()] for m in mats]
    pairs = list(combinations(range(len(mats)), 2))
    out = []
    for q in range(shape[0]):
        jaccard = [len(tops[a][q] & tops[b][q]) / len(tops[a][q] | tops[b][q]) for a, b in pairs]
        out.append(sum(jaccard) / len(jaccard))
    return out
