"""Edited training examples as a ``datasets.Dataset`` with provenance (Sec. 4.2-4.3).

The edits come from explanation records (``ExplainArguments(edit=...)``): every top-k
training example of every explained label carries the edit the two-stage search proposed.
:func:`edits_dataset` picks up to ``k`` edits per query and lays them out as rows with the
training set's columns plus where each came from.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

PROVENANCE = {
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
    "seed": datasets.Value("int64"),
}


def _ranked_edits(record: dict):
    """The record's edits, interleaving its explained labels rank by rank (gold/predicted alternate)."""
    lists = [[(entry, item) for item in entry["top_train"] if item.get("edit")] for entry in record["labels"]]
    for rank in range(max((len(x) for x in lists), default=0)):
        for edits in lists:
            if rank < len(edits):
                yield edits[rank]


def edits_dataset(records: Sequence[dict], label_names: Sequence[str], *, per_query: int, seed: int = 0) -> datasets.Dataset:
    """Up to ``per_query`` edited training examples per explained query, as a Dataset.

    Columns: ``text`` (the edited text), ``label`` (``ClassLabel`` with ``label_names``: the
    edited example keeps its training label, as in the paper, even when an antonym makes it
    wrong) and the :data:`PROVENANCE` columns. The same training example edited the same way
    for two queries appears once (first query wins).

    Raises:
        ValueError: a label id outside ``label_names`` (nothing is returned then).
    """
    rows, seen = [], set()
    for record in records:
        taken = 0
        for _, item in _ranked_edits(record):
            if taken == per_query:
                break
            edit = item["edit"]
            key = (item["train_index"], edit["text"])
            if key in seen:
                continue
            seen.add(key)
            taken += 1
            if not 0 <= item["label"] < len(label_names):
                raise ValueError(f"edit of train row {item['train_index']}: label {item['label']} outside {list(label_names)}")
            rows.append({
                "text": edit["text"], "label": item["label"], "source_train_index": item["train_index"],
                "query_index": record["query_index"], "objective": edit["objective"], "position": edit["position"],
                "char_start": edit["char_start"], "char_end": edit["char_end"], "original_word": edit["original"],
                "replacement": edit["replacement"], "relation": edit["relation"],
                "predicted_influence_change": edit["predicted_change"], "stage": edit["stage"], "seed": seed,
            })
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(label_names)),
                                  **PROVENANCE})
    return datasets.Dataset.from_list(rows, features=features) if rows else datasets.Dataset.from_dict(
        {name: [] for name in features}, features=features)
