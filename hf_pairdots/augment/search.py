"""The two-stage search for perturbed training examples (Sec. 4.2-4.3, Eq. 9-12).

An *objective* says which saliency w(e) to move and in which direction:

=================  =============  =========  ==========================  =====================
name               measurement    direction  substitutes                 paper
=================  =============  =========  ==========================  =====================
``attack_down``    w_y  (gold)    decrease   synonyms                    Eq. 9, ↓I(z, w_y)
``attack_up``      w_y' (wrong)   increase   synonyms                    Eq. 10, ↑I(z, w_y')
``fix_up``         w_y  (gold)    increase   synonyms + antonyms         Sec. 4.3, ↑I(z, w_y)
``fix_down``       w_y' (wrong)   decrease   synonyms + antonyms         Sec. 4.3, ↓I(z, w_y')
=================  =============  =========  ==========================  =====================

Eq. 10 is printed as an arg *min* of I(z, z̃, w_y') although the text says the edit should
*increase* w_y'; we follow the text (arg max), which is also what ↑ means in Table 4.

Stage 1 (Eq. 11) picks the word position t by its Eq. 8 influence: replacing x_t (as by UNK)
changes m by about -I(x_t, m), so to decrease m take the word with the largest I(x_t, m), to
increase it the smallest; only words that have WordNet substitutes compete. Stage 2 (Eq. 12)
scores every substitute of x_t by Eq. 7 in one batched call and keeps the best. Against local
optima, T = 5 other positions are sampled (seeded) and all their substitutes scored the same
way; the best of everything is kept. Work is bounded: at most (1 + T) positions, each with at
most ``max_candidates`` substitutes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..influence import Objective, perturbation_influence, word_influence
from .lexicon import Lexicon


@dataclass(frozen=True)
class SearchObjective:
    """Which label's saliency to move (``"gold"`` or ``"predicted"``), the sign of the wanted
    change (+1 increase, -1 decrease), the WordNet relations allowed, and whether the edited
    example replaces the original (attack) or is added to the training set (fixing)."""

    name: str
    role: str
    direction: int
    relations: tuple[str, ...]
    replace: bool


OBJECTIVES = {
    "attack_down": SearchObjective("attack_down", "gold", -1, ("synonym",), True),
    "attack_up": SearchObjective("attack_up", "predicted", +1, ("synonym",), True),
    "fix_up": SearchObjective("fix_up", "gold", +1, ("synonym", "antonym"), False),
    "fix_down": SearchObjective("fix_down", "predicted", -1, ("synonym", "antonym"), False),
}


@dataclass
class Edit:
    """One word substitution in a training example, with its predicted effect.

    ``predicted_change`` is I(z, z̃, m) of Eq. 7 (change of the measurement per unit of ε when z
    is swapped for z̃); ``score`` is ``direction x predicted_change`` (larger is better for the
    objective); ``stage`` is ``"two-stage"`` or ``"sampled"`` (found at a random position) or
    ``"random"`` (the baseline, no influence used).
    """

    text: str
    position: int
    original: str
    replacement: str
    relation: str
    predicted_change: float | None
    score: float | None
    stage: str

    def char_span(self, original_text: str) -> tuple[int, int]:
        """Character span of the replaced word in the *original* text."""
        start = 0
        for i, word in enumerate(original_text.split()):
            start = original_text.index(word, start)
            if i == self.position:
                return start, start + len(word)
            start += len(word)
        raise IndexError(self.position)


def substitute(text: str, position: int, replacement: str) -> str:
    """``text`` with whitespace word ``position`` replaced (words re-joined by single spaces)."""
    words = text.split()
    return " ".join(words[:position] + [replacement] + words[position + 1:])


def _candidate_positions(lexicon: Lexicon, words: Sequence[str], relations, max_candidates):
    return {t: c for t, w in enumerate(words) if (c := lexicon.candidates(w, relations, max_candidates=max_candidates))}


def best_edit(objective: Objective, tokenizer, lexicon: Lexicon, text: str, label: int, s_test: torch.Tensor,
              goal: SearchObjective, *, num_sampled: int = 5, max_candidates: int = 20,
              generator: torch.Generator | None = None, eraser: str = "unk", max_length: int = 128,
              word_scores: torch.Tensor | None = None) -> Edit | None:
    """The edit of one training example z = (text, label) chosen by Eq. 11-12 (+ T sampled positions).

    Args:
        objective, tokenizer: as for :func:`hf_pairdots.influence.word_influence`.
        lexicon: WordNet substitutes.
        s_test: ``(1, P)`` s_test of the measurement m (the salient word's saliency).
        goal: one of :data:`OBJECTIVES`.
        num_sampled: T, the random extra positions (paper: 5).
        max_candidates: substitutes tried per position.
        generator: seeded ``torch.Generator`` for the sampled positions.
        word_scores: the ``(W,)`` Eq. 8 scores of the text for this measurement, when already
            computed (saves one pass).

    Returns:
        The best :class:`Edit`, or ``None`` when no word of the text has a substitute.
        Cost: one forward-mode pass over W + 1 erased variants (Eq. 8) and one over at most
        (1 + T) x max_candidates substituted variants (Eq. 7).
    """
    words = text.split()
    options = _candidate_positions(lexicon, words, goal.relations, max_candidates)
    if not options:
        return None
    per_word = word_scores if word_scores is not None else \
        word_influence(objective, tokenizer, text, label, s_test, eraser=eraser, max_length=max_length)[0]
    # Eq. 11: to decrease m remove the word that raises it most; to increase m, the one that lowers it most.
    chosen = max(options, key=lambda t: -goal.direction * float(per_word[t]))
    others = [t for t in options if t != chosen]
    generator = generator or torch.Generator().manual_seed(0)
    sampled = [others[i] for i in torch.randperm(len(others), generator=generator)[:num_sampled].tolist()]
    trials = [(t, rep, rel) for t in [chosen, *sampled] for rep, rel in options[t]]
    change = perturbation_influence(objective, tokenizer, text, label, [substitute(text, t, r) for t, r, _ in trials],
                                    s_test, max_length=max_length)[0]
    best = int(torch.argmax(goal.direction * change))
    t, replacement, relation = trials[best]
    return Edit(substitute(text, t, replacement), t, words[t], replacement, relation, float(change[best]),
                float(goal.direction * change[best]), "two-stage" if t == chosen else "sampled")


def random_edit(lexicon: Lexicon, text: str, goal: SearchObjective, generator: torch.Generator,
                max_candidates: int = 20) -> Edit | None:
    """The random-substitution baseline: a random position that has substitutes and a random
    substitute, with the same relations as ``goal``. ``None`` when no word has a substitute.
    ``predicted_change`` and ``score`` are NaN-free zeros: no influence is computed."""
    options = _candidate_positions(lexicon, text.split(), goal.relations, max_candidates)
    if not options:
        return None
    positions = sorted(options)
    t = positions[int(torch.randint(len(positions), (1,), generator=generator))]
    replacement, relation = options[t][int(torch.randint(len(options[t]), (1,), generator=generator))]
    return Edit(substitute(text, t, replacement), t, text.split()[t], replacement, relation, None, None, "random")
