"""The two-stage search for perturbed training examples (Sec. 4.2-4.3, Eq. 9-12).

A search has one *edit goal* (:class:`~hf_pairdots.augment.goals.EditGoal`, the table of
:mod:`hf_pairdots.augment.goals`): ``attack_down`` (Eq. 9, ↓I(z, w_y)), ``attack_up`` (Eq. 10,
↑I(z, w_y')), ``fix_up`` (Sec. 4.3, ↑I(z, w_y)) or ``fix_down`` (Sec. 4.3, ↓I(z, w_y')): which
saliency w(e) to move, in which direction, with which WordNet relations. Groups of goals
(Table 4's "Combined", ``attack_combined``; both fixing directions, ``fix``) are resolved when
edits are collected into a dataset (:mod:`hf_pairdots.augment.dataset`).

**Sign.** With this package's convention (positive I(z, z̃, m) means swapping z for z̃ raises
m, Eq. 7), Eq. 9 is printed as an arg *max* of I(z, z̃, w_y) although the text says the edit
should *decrease* w_y, and Eq. 10 as an arg *min* although the edit should *increase* w_y'.
Both printed signs are flipped the same way (as if I were measured on removal). We follow the
text and the arrows of Table 4: a goal with direction d maximises ``d x I(z, z̃, m)``.

**Stage 1 (Eq. 11)** picks the word position t by its Eq. 8 influence I(x_t, m). Erasing x_t
changes m by about -I(x_t, m), so to decrease m the word with the largest I(x_t, m) is taken
(Eq. 11 as printed), to increase m the one with the smallest. Only words that have WordNet
substitutes *and* lie inside the model's input (not cut by ``max_length``) compete.
**Stage 2 (Eq. 12)** scores every substitute of x_t by Eq. 7, all of them in one batched
:func:`~hf_pairdots.influence.perturbation_influence` call, and keeps the best. Against local
optima, T = ``num_sampled`` (paper: 5) other candidate positions are drawn without replacement
with a seeded generator and each is scored the same way (one batched call per position); the
best of everything is kept (ties go to the two-stage choice, then to the earlier position).

**Bounded work.** A search makes at most 1 + T calls to ``perturbation_influence``, each with
at most ``max_candidates`` variants, plus one Eq. 8 pass over the text's W + 1 erased variants
when ``word_scores`` is not given. A text without candidates costs no model call and yields no
edit with a reason (:attr:`SearchResult.reason`); nothing loops.

**Labels.** The edited example keeps the training label, as in the paper (z̃ = (x̃, y)); Eq. 7
is evaluated with that label. An antonym can make the label wrong in fixing mode; what to do
then is decided when the dataset is built (``antonym_label`` in
:func:`hf_pairdots.augment.dataset.collect_edits`).

**Baseline.** :func:`random_edit` draws a candidate position and a substitute uniformly, with
the goal's relations and the same candidate sets: one word, no influence.

:func:`exhaustive_search` scores every (position, substitute) pair; it is the reference the
two-stage search approximates (tests measure how often they agree).

**Devices.** ``s_test`` may live anywhere (the Eq. 7-8 passes run on the model's device); the
scores a search reads are on the CPU, and the generators are CPU generators (positions are
drawn host-side, the same on every device).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ..influence import perturbation_influence, word_influence
from ..loss import TrainLoss
from ..records import ProposedEdit
from ..text import EncodedText
from .goals import GOAL_GROUPS, GOALS, EditGoal, edit_goal
from .lexicon import Lexicon

__all__ = [
    "GOALS",
    "GOAL_GROUPS",
    "OBJECTIVES",
    "OBJECTIVE_GROUPS",
    "Edit",
    "EditGoal",
    "SearchObjective",
    "SearchResult",
    "Trial",
    "candidate_positions",
    "exhaustive_search",
    "random_edit",
    "search_edit",
    "substitute",
    "word_spans",
]


SearchObjective = EditGoal
"""Old name of :class:`~hf_pairdots.augment.goals.EditGoal` (kept as an alias)."""

OBJECTIVES = GOALS
"""Old name of :data:`~hf_pairdots.augment.goals.GOALS` (kept as an alias)."""

OBJECTIVE_GROUPS = {name: group.goals for name, group in GOAL_GROUPS.items()}
"""Old view of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS` (kept as an alias): dataset-level
objective -> the names of the goals it alternates, rank by rank."""

_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"""[.!?]["')\]}]*$""")
_ABBREVIATION = re.compile(r"""["'(\[{]*(?:(?:[A-Za-z]\.)+|(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Mt|vs)\.)""")


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the whitespace words of ``text`` (the words of ``text.split()``)."""
    return [m.span() for m in _WORD.finditer(text)]


def substitute(text: str, position: int, replacement: str) -> str:
    """``text`` with whitespace word ``position`` replaced; every other character is kept.

    Raises:
        IndexError: ``position`` is not a word of ``text``.
    """
    spans = word_spans(text)
    if not 0 <= position < len(spans):
        raise IndexError(f"word {position} of a text with {len(spans)} words")
    start, end = spans[position]
    return text[:start] + replacement + text[end:]


@dataclass
class Edit:
    """One word substitution in a training example, with its predicted effect.

    ``text`` is the edited text (only the word's characters differ from the original);
    ``position`` the whitespace-word index; ``char_start``/``char_end`` the replaced word's span
    in the *original* text. ``predicted_change`` is I(z, z̃, m) of Eq. 7 (change of the
    measurement per unit of ε when z is swapped for z̃); ``score`` is ``direction x
    predicted_change`` (larger is better for the objective); both are ``None`` for the random
    baseline. ``stage`` is ``"two-stage"`` (Eq. 11-12), ``"sampled"`` (found at one of the T
    random positions), ``"exhaustive"`` (:func:`exhaustive_search`) or ``"random"``.
    """

    text: str
    position: int
    original: str
    replacement: str
    relation: str
    predicted_change: float | None
    score: float | None
    stage: str
    char_start: int = -1
    char_end: int = -1

    def to_proposed(self, objective: str) -> ProposedEdit:
        """The typed ``edit`` of an explanation record's top-k entry, made for ``objective``."""
        return ProposedEdit(objective=objective, text=self.text, position=self.position,
                            char_start=self.char_start, char_end=self.char_end, original=self.original,
                            replacement=self.replacement, relation=self.relation,
                            predicted_change=self.predicted_change, stage=self.stage)

    def to_record(self, objective: str) -> dict:
        """JSON-ready dict, the ``edit`` field of an explanation record's top-k entry
        (:meth:`to_proposed` as a dict)."""
        return self.to_proposed(objective).to_dict()


@dataclass(frozen=True)
class Trial:
    """One scored variant: position, substitute, relation and its Eq. 7 value I(z, z̃, m)."""

    position: int
    replacement: str
    relation: str
    predicted_change: float


@dataclass
class SearchResult:
    """What a search did.

    Attributes:
        edit: the kept :class:`Edit`, or ``None``.
        reason: why there is no edit (``None`` when there is one).
        chosen_position: Eq. 11's t (``None`` when no position had candidates).
        sampled_positions: the T random extra positions, in draw order.
        trials: every scored variant, in scoring order.
        calls: number of ``perturbation_influence`` calls made (Eq. 7 batches).
    """

    edit: Edit | None
    reason: str | None = None
    chosen_position: int | None = None
    sampled_positions: list[int] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    calls: int = 0


def candidate_positions(lexicon: Lexicon, text: str, relations: Sequence[str], *, max_candidates: int = 20,
                        scored_words: set[int] | None = None) -> dict[int, list[tuple[str, str]]]:
    """Word position -> its ``(substitute, relation)`` pairs (at most ``max_candidates``, WordNet
    order), for the positions that have any. ``scored_words``: restrict to these positions (the
    words the model sees); ``None`` = all. A capitalised word is taken for a name (no
    candidates, unless the lexicon has ``edit_proper_nouns``) when it does not start a sentence
    (:func:`_sentence_starts`). Cost: one WordNet lookup per word, no model call."""
    if max_candidates < 1:
        raise ValueError(f"max_candidates={max_candidates}: must be >= 1")
    words = text.split()
    starts = _sentence_starts(words)
    options = {}
    for t, word in enumerate(words):
        if scored_words is not None and t not in scored_words:
            continue
        found = lexicon.candidates(word, tuple(relations), max_candidates=max_candidates, sentence_initial=starts[t])
        if found:
            options[t] = found
    return options


def _sentence_starts(words: Sequence[str]) -> list[bool]:
    """Whether each whitespace word starts a sentence: the first word, and each word after one
    ending in ``.``, ``!`` or ``?`` (closing quotes or brackets may follow) that is not an
    initial or a title ("J.", "U.S.", "Mr.")."""
    return [t == 0 or (bool(_SENTENCE_END.search(words[t - 1])) and not _ABBREVIATION.fullmatch(words[t - 1]))
            for t in range(len(words))]


def _proper_nouns(lexicon: Lexicon, text: str, positions: set[int]) -> list[str]:
    """``'word' (why)`` for each word at ``positions`` that the lexicon takes for a proper noun."""
    words = text.split()
    starts = _sentence_starts(words)
    found = []
    for t in sorted(positions):
        why = lexicon.proper_noun_reason(words[t], sentence_initial=starts[t])
        if why is not None:
            found.append(f"{words[t]!r} ({why})")
    return found


def _seen_words(tokenizer, text: str, max_length: int) -> set[int]:
    """Indices of the whitespace words that have at least one token inside ``max_length``."""
    return set(EncodedText.encode(tokenizer, text, max_length).scored)


def _no_candidate_reason(lexicon: Lexicon, text: str, relations, max_candidates: int, seen: set[int]) -> str:
    what = " or ".join(f"{r}s" for r in relations)
    beyond = [t for t in range(len(text.split())) if t not in seen]
    if beyond and candidate_positions(lexicon, text, relations, max_candidates=max_candidates,
                                      scored_words=set(beyond)):
        return f"every word with WordNet {what} lies past max_length (truncated, not seen by the model)"
    names = _proper_nouns(lexicon, text, seen)
    if names:
        return (f"no word has WordNet {what} but proper nouns, which are not edited: {', '.join(names)}; "
                f"Lexicon(edit_proper_nouns=True) edits them")
    return f"no word has WordNet {what} (stop words, numbers, punctuation and unknown words have none)"


def _prepare(objective, tokenizer, lexicon, text, goal, max_candidates, max_length, s_test):
    """Common checks; returns ``(goal, s_test (1, P), options, reason)``."""
    goal = edit_goal(goal)
    if s_test.dim() == 1:
        s_test = s_test.unsqueeze(0)
    if s_test.dim() != 2 or s_test.shape[0] != 1:
        raise ValueError(f"s_test must have shape (P,) or (1, P); got {tuple(s_test.shape)}")
    if s_test.shape[1] != objective.params.numel:
        raise ValueError(f"s_test has {s_test.shape[1]} entries, the objective's parameters {objective.params.numel}")
    if not text.split():
        return goal, s_test, {}, "empty or whitespace-only text"
    seen = _seen_words(tokenizer, text, max_length)
    options = candidate_positions(lexicon, text, goal.relations, max_candidates=max_candidates, scored_words=seen)
    if not options:
        return goal, s_test, {}, _no_candidate_reason(lexicon, text, goal.relations, max_candidates, seen)
    return goal, s_test, options, None


def _score_position(objective, tokenizer, text, label, s_test, t, options, max_length) -> list[Trial]:
    """Eq. 7 for every substitute of position t, in one batched call (Eq. 12)."""
    variants = [substitute(text, t, replacement) for replacement, _ in options[t]]
    change = perturbation_influence(objective, tokenizer, text, label, variants, s_test, max_length=max_length)[0]
    if not torch.isfinite(change).all():
        raise FloatingPointError(f"Eq. 7 gave non-finite values at word {t} of {text[:60]!r}; check s_test")
    return [Trial(t, rep, rel, float(c)) for (rep, rel), c in zip(options[t], change.tolist())]


def _best(trials: list[Trial], direction: int) -> Trial:
    """The trial with the largest ``direction x change``; the first one on ties."""
    return max(trials, key=lambda trial: direction * trial.predicted_change)


def _edit(text: str, trial: Trial, direction: int | None, stage: str) -> Edit:
    start, end = word_spans(text)[trial.position]
    change = None if direction is None else trial.predicted_change
    return Edit(substitute(text, trial.position, trial.replacement), trial.position, text[start:end],
                trial.replacement, trial.relation, change, None if direction is None else direction * change,
                stage, start, end)


def search_edit(objective: TrainLoss, tokenizer, lexicon: Lexicon, text: str, label: int, s_test: torch.Tensor,
                goal: EditGoal | str, *, num_sampled: int = 5, max_candidates: int = 20,
                generator: torch.Generator | None = None, eraser: str = "unk", max_length: int = 128,
                word_scores: torch.Tensor | None = None) -> SearchResult:
    """Edit one training example z = (text, label) by Eq. 11-12 plus T sampled positions.

    Args:
        objective, tokenizer: as for :func:`hf_pairdots.influence.word_influence`.
        lexicon: WordNet substitutes (:class:`~hf_pairdots.augment.lexicon.Lexicon`).
        text, label: the training example; the edit keeps ``label``.
        s_test: ``(1, P)`` or ``(P,)`` s_test of the measurement m (the salient word's saliency
            for the label the goal moves: y for ``attack_down``/``fix_up``, y' otherwise), on any
            device (normally the model's).
        goal: an :class:`~hf_pairdots.augment.goals.EditGoal` or its name (:data:`GOALS`).
        num_sampled: T, the random extra positions (paper: 5); 0 = the pure two-stage search.
        max_candidates: substitutes tried per position (WordNet order).
        generator: seeded CPU ``torch.Generator`` for the sampled positions (default: seed 0).
        eraser, max_length: as for :func:`~hf_pairdots.influence.word_influence`.
        word_scores: the ``(W,)`` Eq. 8 scores of the text for this measurement, when already
            computed (the explanation computes them; saves one pass), on any device.

    Returns:
        :class:`SearchResult`; ``edit`` is ``None`` and ``reason`` says why when no word of the
        text (inside ``max_length``) has a substitute.

    Cost: at most 1 + T batched Eq. 7 calls of at most ``max_candidates`` + 1 examples, plus one
    Eq. 8 pass over W + 1 examples when ``word_scores`` is ``None``.

    Example:
        >>> result = search_edit(obj, tok, Lexicon(), "a good movie", 1, s, "attack_down")  # doctest: +SKIP
        >>> result.edit.text, result.edit.stage  # doctest: +SKIP
        ('a good film', 'two-stage')
    """
    goal, s_test, options, reason = _prepare(objective, tokenizer, lexicon, text, goal, max_candidates,
                                             max_length, s_test)
    if reason is not None:
        return SearchResult(None, reason)
    if num_sampled < 0:
        raise ValueError(f"num_sampled={num_sampled}: must be >= 0")
    if word_scores is None:
        word_scores = word_influence(objective, tokenizer, text, label, s_test, eraser=eraser,
                                     max_length=max_length)[0]
    word_scores = torch.as_tensor(word_scores).detach().cpu().reshape(-1)
    if len(word_scores) != len(text.split()):
        raise ValueError(f"word_scores has {len(word_scores)} entries for {len(text.split())} words")
    # Eq. 11: to decrease m take the word whose presence raises m most; to increase it, lowers it most.
    chosen = max(options, key=lambda t: -goal.direction * float(word_scores[t]))
    others = [t for t in options if t != chosen]
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    order = torch.randperm(len(others), generator=generator)[:num_sampled].tolist() if others else []
    sampled = [others[i] for i in order]
    trials = []
    for t in [chosen, *sampled]:
        trials.extend(_score_position(objective, tokenizer, text, label, s_test, t, options, max_length))
    best = _best(trials, goal.direction)
    edit = _edit(text, best, goal.direction, "two-stage" if best.position == chosen else "sampled")
    return SearchResult(edit, None, chosen, sampled, trials, calls=1 + len(sampled))


def exhaustive_search(objective: TrainLoss, tokenizer, lexicon: Lexicon, text: str, label: int,
                      s_test: torch.Tensor, goal: EditGoal | str, *, max_candidates: int = 20,
                      max_length: int = 128) -> SearchResult:
    """The optimum of Eq. 9/10 over every (position, substitute) pair: the reference the
    two-stage search approximates. Cost: one Eq. 7 call per candidate position (|L(x_t)| x N
    variants in all); use it to evaluate the search, not to build datasets."""
    goal, s_test, options, reason = _prepare(objective, tokenizer, lexicon, text, goal, max_candidates,
                                             max_length, s_test)
    if reason is not None:
        return SearchResult(None, reason)
    trials = []
    for t in options:
        trials.extend(_score_position(objective, tokenizer, text, label, s_test, t, options, max_length))
    return SearchResult(_edit(text, _best(trials, goal.direction), goal.direction, "exhaustive"), None,
                        None, [], trials, calls=len(options))


def random_edit(lexicon: Lexicon, text: str, goal: EditGoal | str, generator: torch.Generator,
                max_candidates: int = 20, *, tokenizer=None, max_length: int = 128) -> Edit | None:
    """The random-substitution baseline: a uniformly drawn candidate position and a uniformly
    drawn substitute, with the relations of ``goal`` (synonyms only for attacks) and the same
    candidate sets as the search (``max_candidates``; with ``tokenizer``, only words inside
    ``max_length``). Same budget as the search: one word of one example. No model call;
    ``predicted_change`` and ``score`` are ``None``. Returns ``None`` when no word has a
    substitute."""
    goal = edit_goal(goal)
    if not text.split():
        return None
    seen = None if tokenizer is None else _seen_words(tokenizer, text, max_length)
    options = candidate_positions(lexicon, text, goal.relations, max_candidates=max_candidates, scored_words=seen)
    if not options:
        return None
    positions = sorted(options)
    t = positions[int(torch.randint(len(positions), (1,), generator=generator))]
    replacement, relation = options[t][int(torch.randint(len(options[t]), (1,), generator=generator))]
    return _edit(text, Trial(t, replacement, relation, math.nan), None, "random")
