"""Edited training examples as ``datasets.Dataset`` with provenance, and training sets with the
edits applied (Sec. 4.2-4.3 of Meng et al., 2020).

Where the edits come from: explanation records written with ``ExplainArguments(edit=...)``
(:mod:`hf_pairdots.explain`). In every record, each explained label row carries its top-k
training examples, and each of those carries the edit the two-stage search proposed for that
row's goal (:meth:`~hf_pairdots.augment.goals.EditGoal.for_role`; gold row y: ``attack_down`` /
``fix_up``; row of a wrong label y': ``attack_up`` / ``fix_down``).

:func:`collect_edits` picks up to ``per_query`` edits per query for a dataset-level objective
(:data:`~hf_pairdots.augment.goals.GOAL_GROUPS`): one edit goal, or two alternated
rank by rank (``attack_combined``: down #1, up #1, down #2, ...; ``fix``: up #1, down #1, ...).
Rules, each a choice:

- A row is used for an objective only when its label agrees with the objective's role: gold
  objectives need ``label == gold``, y' objectives ``label != gold``. (For a correctly classified
  query, explain.py must explain the runner-up label as y'; rows that do not are skipped and
  reported in :attr:`EditCollection.shortfalls`.)
- **Attack** (edits replace training rows): a training row is edited at most once in the whole
  dataset; a query whose candidate was taken by an earlier query (lower ``query_index``) moves
  on to its next-ranked candidate. **Fixing** (edits are added): the same training row edited
  into the same text for two queries is added once; different edits of one row are all kept.
- **Labels**: the edited example keeps its training label, as in the paper (z̃ = (x̃, y)), and
  the predicted influence change was computed with that label. An antonym can make it wrong
  (fixing only; attacks use synonyms). ``antonym_label="flip"`` (binary tasks only) gives
  antonym edits the other label instead and marks them ``label_flipped``; their
  ``predicted_influence_change`` then still describes the kept-label example.
- Label ids outside the ``ClassLabel`` are rejected (``ValueError``) before anything is built.

Columns of an edits dataset: the training set's columns, copied from the source row, with
``text`` edited (and ``label`` possibly flipped), then :data:`PROVENANCE`. :func:`apply_edits`
returns the training set to retrain on: fixing -> every training row, then the added rows;
attack -> the same rows in the same order with the source rows replaced. Untouched rows have
``edited = False``, ``label_flipped = False`` and null in every other provenance column.
:func:`random_baseline` builds the random-substitution control with the same budget.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import datasets
import torch

from ..constants import ANTONYM_LABEL_RULES
from ..records import Explanation, ProposedEdit, TrainAttribution, as_explanation
from .goals import GOALS, goal_group
from .lexicon import Lexicon
from .search import random_edit

__all__ = [
    "ANTONYM_LABEL_RULES",
    "PROVENANCE",
    "EditCollection",
    "apply_edits",
    "check_labels",
    "collect_edits",
    "edit_counts",
    "edits_from_proposals",
    "explain_labels",
    "explain_mode",
    "random_baseline",
]

PROVENANCE = {
    "edited": datasets.Value("bool"),
    "source_train_index": datasets.Value("int64"),
    "query_index": datasets.Value("int64"),
    "objective": datasets.Value("string"),
    "position": datasets.Value("int64"),
    "char_start": datasets.Value("int64"),
    "char_end": datasets.Value("int64"),
    "original_word": datasets.Value("string"),
    "replacement": datasets.Value("string"),
    "relation": datasets.Value("string"),
    "predicted_influence_change": datasets.Value("float64"),
    "stage": datasets.Value("string"),
    "label_flipped": datasets.Value("bool"),
    "seed": datasets.Value("int64"),
}
"""Provenance columns. ``source_train_index``: row of the training set that was edited;
``query_index``: the explained query (test/dev row) the edit serves; ``objective``: a search
objective (``attack_down``, ``attack_up``, ``fix_up``, ``fix_down``); ``position``: whitespace
word index; ``char_start``/``char_end``: the word's span in the *original* text (in the edited
text the replacement starts at ``char_start``); ``original_word``/``replacement``/``relation``
(``synonym``/``antonym``); ``predicted_influence_change``: I(z, z̃, m) of Eq. 7 (null for the
random baseline); ``stage``: ``two-stage``, ``sampled`` or ``random``; ``seed``: the search
seed."""


def explain_mode(objective: str) -> str:
    """``"attack"`` or ``"fix"``: the ``ExplainArguments.edit`` that proposes edits for a
    dataset-level objective (:attr:`~hf_pairdots.augment.goals.GoalGroup.mode`).

    Raises:
        ValueError: ``objective`` is not a key of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS`.
    """
    return goal_group(objective).mode


def explain_labels(objective: str) -> tuple[str, ...]:
    """The ``ExplainArguments.labels`` a dataset-level objective needs, gold first (so that a
    correctly classified query, whose predicted label is its gold label, gets its gold row;
    :attr:`~hf_pairdots.augment.goals.GoalGroup.labels`).

    Raises:
        ValueError: ``objective`` is not a key of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS`.
    """
    return goal_group(objective).labels


def check_labels(dataset: datasets.Dataset, column: str = "label") -> datasets.ClassLabel:
    """The ``ClassLabel`` of ``column``, after checking that every id lies in ``[0, num_classes)``.

    Raises:
        ValueError: the column is missing, is not a ``ClassLabel``, or holds an id outside it
            (-1, "no label", included: an augmented training set needs labels).
    """
    if column not in dataset.column_names:
        raise ValueError(f"the dataset has no {column!r} column; it has {dataset.column_names}")
    feature = dataset.features[column]
    if not isinstance(feature, datasets.ClassLabel):
        raise ValueError(f"column {column!r} is {feature}, not a ClassLabel; cast it with "
                         f"dataset.cast_column({column!r}, datasets.ClassLabel(names=[...]))")
    bad = sorted({-1 if y is None else int(y) for y in dataset[column]
                  if y is None or not 0 <= int(y) < feature.num_classes})
    if bad:
        raise ValueError(f"column {column!r}: label ids {bad[:5]} outside 0..{feature.num_classes - 1} "
                         f"({feature.names})")
    return feature


@dataclass
class EditCollection:
    """What :func:`collect_edits` found.

    Attributes:
        dataset: the edited examples (columns: the training set's, then :data:`PROVENANCE`).
        shortfalls: one dict per query that got fewer than ``per_query`` edits:
            ``{"query_index", "found", "wanted", "reasons": {reason: count}}``.
    """

    dataset: datasets.Dataset
    shortfalls: list[dict] = field(default_factory=list)


def _candidates(record: Explanation, wanted: Sequence[str], reasons: Counter):
    """``(objective, top-k item)`` of a record, alternating the wanted objectives rank by rank.

    A label row serves the wanted objective of its role, if its label fits that role: the gold
    row must hold the gold label, a ``"predicted"`` row (y') another label.
    """
    lists = {name: [] for name in wanted}
    gold = record.gold
    for entry in record.labels:
        name = next((n for n in wanted if GOALS[n].role == entry.role), None)
        if name is None:
            continue
        if (gold is not None and entry.label == gold) != (entry.role == "gold"):
            reasons["y' row holds the gold label (explain.py must explain the runner-up label as y')"] += 1
            continue
        lists[name].extend(entry.top_train)
    for name in wanted:
        if not lists[name]:
            reasons[f"no {GOALS[name].role} row for {name}"] += 1
    for rank in range(max((len(x) for x in lists.values()), default=0)):
        for name in wanted:
            if rank < len(lists[name]):
                yield name, lists[name][rank]


def collect_edits(records: Iterable[Explanation | dict], train: datasets.Dataset, objective: str, *, per_query: int,
                  seed: int = 0, antonym_label: str = "keep") -> EditCollection:
    """Up to ``per_query`` edited training examples per explained query (rules in the module
    docstring), as a ``datasets.Dataset``.

    Args:
        records: explanation records (:class:`~hf_pairdots.records.Explanation`, or their JSON
            dicts: ``ExplanationStore(out).records()``) made with
            ``ExplainArguments(edit=explain_mode(objective), labels=explain_labels(objective))``
            against ``train``; taken in ``query_index`` order.
        train: the training set the records were explained against (``text`` and a ``label``
            ``ClassLabel``); its other columns are carried over.
        objective: a key of :data:`~hf_pairdots.augment.goals.GOAL_GROUPS`.
        per_query: k, the edited examples wanted per query (Table 4's "# Examples").
        seed: the search seed, recorded in the ``seed`` column.
        antonym_label: ``"keep"`` (the paper) or ``"flip"`` (binary tasks).

    Raises:
        ValueError: unknown objective or rule; ``flip`` on a non-binary task; a record's
            training example differs from ``train`` (explained against another training set);
            a label id outside the ``ClassLabel``.
    """
    if not isinstance(train, datasets.Dataset):
        raise TypeError("collect_edits/edits_dataset take the training Dataset the records were explained against, "
                        f"not {type(train).__name__}: edits_dataset(records, train, 'fix', per_query=k, seed=s)")
    group = goal_group(objective)
    wanted = group.goals
    if per_query < 1:
        raise ValueError(f"per_query={per_query}: must be >= 1")
    if antonym_label not in ANTONYM_LABEL_RULES:
        raise ValueError(f"antonym_label={antonym_label!r}: use one of {ANTONYM_LABEL_RULES}")
    labels = check_labels(train)
    if antonym_label == "flip" and labels.num_classes != 2:
        raise ValueError(f"antonym_label='flip' needs a binary task; {labels.names} has {labels.num_classes} labels")
    replace = group.replace
    texts, train_labels = train["text"], train["label"]
    rows, shortfalls, seen, used = [], [], set(), set()
    for record in sorted(map(as_explanation, records), key=lambda r: r.query_index):
        reasons: Counter = Counter()
        taken = 0
        for name, item in _candidates(record, wanted, reasons):
            if taken == per_query:
                break
            edit, index = item.edit, item.train_index
            if edit is None or not edit.found:
                reasons[(edit.reason if edit is not None else None) or "no substitute in the training example"] += 1
                continue
            if edit.objective != name:
                reasons[f"edit made for {edit.objective}, not {name}"] += 1
                continue
            _check_item(item, texts, train_labels, labels)
            if replace and index in used:
                reasons["training row already replaced for an earlier query"] += 1
                continue
            if not replace and (index, edit.text) in seen:
                reasons["same edit already added for an earlier query"] += 1
                continue
            used.add(index)
            seen.add((index, edit.text))
            taken += 1
            rows.append(_edit_row(train[index], index, record.query_index, name, edit, seed, antonym_label))
        if taken < per_query:
            reasons["ran out of candidates (explain with a larger top_k)"] += 1
            shortfalls.append({"query_index": record.query_index, "found": taken, "wanted": per_query,
                               "reasons": dict(reasons)})
    return EditCollection(_to_dataset(rows, train.features), shortfalls)


def edits_dataset(records: Iterable[Explanation | dict], train: datasets.Dataset, objective: str, *, per_query: int,
                  seed: int = 0, antonym_label: str = "keep") -> datasets.Dataset:
    """:func:`collect_edits`'s dataset (same arguments)."""
    return collect_edits(records, train, objective, per_query=per_query, seed=seed,
                         antonym_label=antonym_label).dataset


def edits_from_proposals(train: datasets.Dataset, proposals: Iterable[tuple[int, int, str, ProposedEdit]], *,
                         seed: int = 0) -> datasets.Dataset:
    """An edits dataset (the columns of :func:`collect_edits`'s) from edits chosen elsewhere:
    ``(train_index, query_index, objective, ProposedEdit)`` per row, in order, each keeping its
    training label (e.g. edits searched with another measurement's s_test, as the loss-chosen
    attack of ``benchmarks/bench_attack.py``). No rule of :func:`collect_edits` is applied.

    Raises:
        ValueError: a ``train_index`` outside ``train``; an objective that is not a search goal.
    """
    rows = []
    for index, query_index, objective, edit in proposals:
        if not 0 <= index < len(train):
            raise ValueError(f"train_index {index} outside the training set of {len(train)} rows")
        if objective not in GOALS:
            raise ValueError(f"objective {objective!r}: use one of {sorted(GOALS)}")
        rows.append(_edit_row(train[index], index, query_index, objective, edit, seed, "keep"))
    return _to_dataset(rows, train.features)


def _check_item(item: TrainAttribution, texts: Sequence[str], train_labels: Sequence[int],
                labels: datasets.ClassLabel) -> None:
    index, label = item.train_index, item.label
    if not 0 <= label < labels.num_classes:
        raise ValueError(f"edit of train row {index}: label {label} outside {labels.names}")
    if not 0 <= index < len(texts) or texts[index] != item.text or train_labels[index] != label:
        raise ValueError(f"train row {index} is not the text the records were explained with; pass the same "
                         "training set (and subsample seed) that explained the queries")


def _edit_row(source: dict, index: int, query_index: int, objective: str, edit: ProposedEdit, seed: int,
              antonym_label: str) -> dict:
    flipped = antonym_label == "flip" and edit.relation == "antonym"
    row = dict(source)
    row["text"] = edit.text
    if flipped:
        row["label"] = 1 - int(source["label"])
    row.update({
        "edited": True, "source_train_index": index, "query_index": query_index,
        "objective": objective, "position": edit.position, "char_start": edit.char_start,
        "char_end": edit.char_end, "original_word": edit.original, "replacement": edit.replacement,
        "relation": edit.relation, "predicted_influence_change": edit.predicted_change,
        "stage": edit.stage, "label_flipped": flipped, "seed": seed,
    })
    return row


def _features(train_features: datasets.Features) -> datasets.Features:
    clash = sorted(set(train_features) & set(PROVENANCE))
    if clash:
        raise ValueError(f"the training set already has provenance columns {clash}; pass the original training set")
    return datasets.Features({**train_features, **PROVENANCE})


def _to_dataset(rows: list[dict], train_features: datasets.Features) -> datasets.Dataset:
    features = _features(train_features)
    columns = {name: [row.get(name) for row in rows] for name in features}
    return datasets.Dataset.from_dict(columns, features=features)


def edit_counts(dataset: datasets.Dataset) -> dict[str, dict[str, int]]:
    """Counts of the edited rows per ``objective``, ``relation``, ``stage`` and ``label_flipped``
    (rows with ``edited`` False are left out), for dataset cards."""
    edited = [i for i, flag in enumerate(dataset["edited"]) if flag] if "edited" in dataset.column_names else []
    out = {}
    for column in ("objective", "relation", "stage", "label_flipped"):
        values = dataset[column] if column in dataset.column_names else []
        out[column] = dict(sorted(Counter(str(values[i]) for i in edited).items()))
    return out


def apply_edits(train: datasets.Dataset, edits: datasets.Dataset, *, mode: str | None = None) -> datasets.Dataset:
    """The training set to retrain on, with ``edits`` applied.

    Args:
        train: the training set the edits were made from.
        edits: a dataset from :func:`collect_edits` or :func:`random_baseline`.
        mode: ``"add"`` (fixing: every training row, then the edited rows), ``"replace"``
            (attack: each source row replaced in place); ``None`` = from the edits' objectives.

    Returns:
        A new ``Dataset`` with the training set's columns and :data:`PROVENANCE`; untouched rows
        have ``edited`` False, ``label_flipped`` False and null provenance.

    Raises:
        ValueError: label names differ; the edits mix attack and fixing objectives (with
            ``mode=None``); in replace mode a training row is replaced twice or a source index
            is out of range.
    """
    labels = check_labels(train)
    edit_labels = check_labels(edits)
    if edit_labels.names != labels.names:
        raise ValueError(f"label names differ: train {labels.names}, edits {edit_labels.names}")
    features = _features(train.features)
    if mode is None:
        kinds = {GOALS[name].replace for name in set(edits["objective"])}
        if len(kinds) > 1:
            raise ValueError("the edits mix attack (replace) and fixing (add) objectives; pass mode=")
        mode = "replace" if kinds == {True} else "add"
    if mode not in ("add", "replace"):
        raise ValueError(f"mode={mode!r}: use 'add', 'replace' or None")
    columns = {name: list(train[name]) for name in train.column_names}
    blank = {name: [None] * len(train) for name in PROVENANCE}
    blank["edited"] = [False] * len(train)
    blank["label_flipped"] = [False] * len(train)
    columns.update(blank)
    edit_columns = {name: list(edits[name]) for name in features}
    if mode == "add":
        for name in features:
            columns[name].extend(edit_columns[name])
    else:
        sources = edit_columns["source_train_index"]
        repeated = sorted(index for index, n in Counter(sources).items() if n > 1)
        if repeated:
            raise ValueError(f"training rows {repeated[:5]} are replaced more than once")
        for j, index in enumerate(sources):
            if index is None or not 0 <= index < len(train):
                raise ValueError(f"source_train_index {index} outside the training set of {len(train)} rows")
            for name in features:
                columns[name][index] = edit_columns[name][j]
    return datasets.Dataset.from_dict(columns, features=features)


def random_baseline(edits: datasets.Dataset, train: datasets.Dataset, *, seed: int = 0, lexicon: Lexicon | None = None,
                    max_candidates: int = 20, tokenizer=None, max_length: int = 128,
                    antonym_label: str = "keep") -> datasets.Dataset:
    """The random-substitution control with the same budget as ``edits``: for each edited row,
    the same source training row edited by :func:`~hf_pairdots.augment.search.random_edit`
    (one uniformly drawn candidate word, one uniformly drawn substitute, the objective's
    relations), same ``query_index`` and ``objective``, ``stage = "random"``, null predicted
    change. Draws come from one generator seeded with ``seed``, in row order (deterministic).
    A source row with no candidate (possible only with a different ``max_length``) is left out.
    """
    lexicon = lexicon or Lexicon()
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for row in edits:
        index = row["source_train_index"]
        text = train[index]["text"]
        edit = random_edit(lexicon, text, row["objective"], generator, max_candidates, tokenizer=tokenizer,
                           max_length=max_length)
        if edit is None:
            continue
        rows.append(_edit_row(train[index], index, row["query_index"], row["objective"],
                              edit.to_proposed(row["objective"]), seed, antonym_label))
    return _to_dataset(rows, train.features)
