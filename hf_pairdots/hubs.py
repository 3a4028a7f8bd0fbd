"""Hubs: one training example "responsible" for a large share of the explained rows.

Raw influence (Eq. 5) is a dot product with the training example's gradient, so examples with a
large gradient (hard, atypical or mislabelled ones) come out on top for many unrelated queries
(Barshan et al. 2020, RelatIF; issue C37 of ``../shared/cases``). :func:`find_hub` counts, over
the explained rows' top-k lists, the example in the most lists; when it is in more than
:data:`HUB_SHARE` of at least :data:`HUB_MIN_ROWS` lists it is a *hub*, reported with its
training-gradient norm against the median of the listed examples' norms and the remedy
(``ExplainArguments(ranking="unit")``). Pure functions; the pipeline supplies the norms.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

HUB_SHARE = 0.10
"""A training example in more than this share of the top-k lists is flagged (issue 14's target:
no training example in more than 10 % of rows)."""

HUB_MIN_ROWS = 10
"""Fewer top-k lists than this are never flagged (a share of a handful of rows means little)."""


@dataclass
class Hub:
    """The training example found in the most top-k lists.

    Attributes:
        train_index: its row in the training set.
        count: the number of top-k lists (explained rows) it is in; rows: the number of lists.
        gradient_norm: ||∇θ L(z)||₂ over θ_S of this example, or ``None`` when not computed.
        median_gradient_norm: the median of that norm over every example in any of the lists.
    """

    train_index: int
    count: int
    rows: int
    gradient_norm: float | None = None
    median_gradient_norm: float | None = None

    @property
    def share(self) -> float:
        """count / rows, in [0, 1]."""
        return self.count / self.rows

    def with_norms(self, norms: Mapping[int, float]) -> Hub:
        """A copy with its gradient norm and the median of ``norms`` (train_index -> norm of
        every listed example, e.g. :meth:`~hf_pairdots.explain.Explainer.gradient_norms_of`)."""
        return Hub(self.train_index, self.count, self.rows, float(norms[self.train_index]),
                   float(statistics.median(norms.values())))

    def message(self, ranking: str) -> str:
        """The warning: which example, how often, its gradient norm, and what to do."""
        text = (f"training row {self.train_index} is in the top-k of {self.count} of {self.rows} explained rows "
                f"({self.share:.0%})")
        if self.gradient_norm is not None:
            ratio = self.gradient_norm / self.median_gradient_norm if self.median_gradient_norm else float("inf")
            text += (f"; its training-gradient norm is {self.gradient_norm:.3g}, {ratio:.1f}x the median "
                     f"{self.median_gradient_norm:.3g} of the listed examples")
        if ranking == "raw":
            text += ("; raw influence favours examples with large gradients (hard or mislabelled ones): check the "
                     "row, or rank with ExplainArguments(ranking='unit')")
        return text + "."

    def to_dict(self, ranking: str) -> dict:
        """The JSON entry of ``meta.json`` (``"hub"``): the fields, the share and the message."""
        return {**asdict(self), "share": self.share, "warning": self.message(ranking)}


def find_hub(top_lists: Sequence[Sequence[int]], *, share: float = HUB_SHARE,
             min_rows: int = HUB_MIN_ROWS) -> Hub | None:
    """The training example in more than ``share`` of the top-k lists, or ``None``.

    Args:
        top_lists: per explained row (a record's label entry), the ``train_index`` of its top-k
            training examples; an example counts once per list.
        share: the threshold, in [0, 1); min_rows: fewer lists than this give ``None``.

    Returns:
        The :class:`Hub` of the most frequent example (the smallest ``train_index`` among ties)
        when its share exceeds ``share``, else ``None``. Cost: one pass over the lists.

    Raises:
        ValueError: ``share`` outside [0, 1) or ``min_rows`` < 1.
    """
    if not 0 <= share < 1 or min_rows < 1:
        raise ValueError(f"find_hub: need 0 <= share < 1 and min_rows >= 1, got share={share}, min_rows={min_rows}")
    if len(top_lists) < min_rows:
        return None
    counts = Counter(index for top in top_lists for index in set(top))
    if not counts:
        return None
    index, count = min(counts.items(), key=lambda item: (-item[1], item[0]))
    return Hub(index, count, len(top_lists)) if count / len(top_lists) > share else None
