"""Explanation records on disk and as an HTML page (Sec. 4.1, Tables 1-2 of Meng et al., 2020).

Files under an output directory:
  explanations.jsonl  one explanation record per line (schema: docs/ARCHITECTURE.md), UTF-8,
                      written by `ExplanationStore`;
  <path>/             the same records as a `datasets.Dataset` (`write_dataset`, caller's path);
  report.html         a self-contained page, no JS or external resources (`write_report`).

Every whole-file write goes through `hf_pairdots.io` (temp file in the same directory, fsync,
`os.replace`, fsync of the directory; folders are swapped in with rollback), so a kill leaves
either the old file or the new one, never half of one.
The store's appends are the one exception; their recovery rule is in `ExplanationStore`.

Colours of the page (as in Table 2 of the paper): the test sentence is shaded by saliency
for the predicted label y' in red and for the gold label y in green; training sentences under
each are shaded by Eq. 8 word influence in purple (predicted side) and brown (gold side).
Background opacity is |score| / max |score| within that sentence; positive scores take the
side's colour, negative scores a blue-grey. The most salient (responsible) word is bold and
outlined in the side's colour. Hovering a word shows its score; words with null scores
(past truncation) are grey and titled "not scored".
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets
from jinja2 import Environment, PackageLoader

from .io import atomic_replace_dir, atomic_write_text
from .constants import MULTI_LABEL, REGRESSION
from .problem import THRESHOLD
from .records import Explanation, LabelExplanation, as_explanation, check_finite

JSONL_NAME = "explanations.jsonl"
REPORT_NAME = "report.html"

# role -> (colour of the test sentence, colour of its training sentences), RGB.
PALETTES = {
    "predicted": ((214, 39, 40), (148, 103, 189)),  # red, purple
    "gold": ((44, 160, 44), (140, 86, 75)),  # green, brown
}
NEGATIVE = (96, 125, 160)  # blue-grey, for negative scores on either side

_ENV = Environment(loader=PackageLoader("hf_pairdots", "templates"), autoescape=True)


check_json_safe = check_finite
"""Old name of :func:`hf_pairdots.records.check_finite` (kept as an alias)."""


def _as_dict(record: Explanation | Mapping) -> dict:
    """The JSON dict of a record (typed records through ``to_dict``)."""
    return record.to_dict() if isinstance(record, Explanation) else dict(record)


class ExplanationStore:
    """Append-only, resumable store of explanation records in `<output_dir>/explanations.jsonl`.

    Each `append` writes one JSON line (`\\n`-terminated) in a single write, then fsyncs.
    Recovery on load (when the store is opened): a final line without its `\\n` is the
    remainder of a killed append and is dropped (that query is simply redone on resume); when
    a query_index occurs more than once the last line wins. If either happened, the file is
    rewritten atomically without them, so the file on disk is clean before any new append.
    An unparsable line that is not the last one is real corruption: ValueError naming the line.
    One writer per file; the store keeps the records in memory, as the JSON dicts of the file
    (:meth:`records`) and typed (:meth:`explanations`).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / JSONL_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[int, dict] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        # Split on b"\n" only: str.splitlines would also split on U+2028 inside JSON strings.
        lines = data.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail is b"" when the file ends with "\n"
        n_lines = 0
        for number, line in enumerate(complete, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                message = f"{self.path}:{number}: corrupt explanation record: {err}"
                raise ValueError(message) from None
            self._records[record["query_index"]] = record
            n_lines += 1
        if tail or n_lines != len(self._records):
            atomic_write_text(self.path, "".join(_json_line(r) for r in self.records()))

    def done_indices(self) -> set[int]:
        """query_index of every record already stored."""
        return set(self._records)

    def append(self, record: Explanation | dict) -> None:
        """Store one record (an :class:`~hf_pairdots.records.Explanation`, or its JSON dict:
        ARCHITECTURE.md schema). A record whose query_index is already
        stored replaces the old one. ValueError if query_index is missing or not an int, or
        if any float is NaN/inf (the message names the field); nothing is written then."""
        record = _as_dict(record)
        index = record.get("query_index")
        if not isinstance(index, int) or isinstance(index, bool):
            raise ValueError(f"record.query_index must be an int, got {index!r}")
        check_json_safe(record)
        line = _json_line(record).encode("utf-8")
        with open(self.path, "ab") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._records[index] = record

    def records(self) -> list[dict]:
        """All stored records as JSON dicts (the lines of the file), one per query_index, sorted
        by query_index."""
        return [self._records[i] for i in sorted(self._records)]

    def explanations(self) -> list[Explanation]:
        """:meth:`records` as typed :class:`~hf_pairdots.records.Explanation` records.

        Raises:
            ValueError: a stored record lacks a field of the schema (named).
        """
        return [Explanation.from_dict(record) for record in self.records()]


def _json_line(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n"


def write_dataset(records: Iterable[Explanation | dict], path: str | os.PathLike) -> datasets.Dataset:
    """Save `records` as a `datasets.Dataset` at directory `path` (`save_to_disk`, one shard),
    replacing any previous one; the new copy is built in a sibling temp directory and swapped
    in (`hf_pairdots.io.atomic_replace_dir`, with rollback), so `path` never holds a half-written
    dataset. Columns are the union of the records'
    keys; nested lists/dicts become Arrow lists/structs, null scores stay None, a key missing
    from one record's nested dict loads as None. Zero records give an empty dataset with a
    single `query_index` column. ValueError on NaN/inf. Returns the in-memory dataset."""
    records = [_as_dict(record) for record in records]
    for record in records:
        check_json_safe(record)
    if records:
        keys = list(dict.fromkeys(k for record in records for k in record))
        ds = datasets.Dataset.from_dict({k: [r.get(k) for r in records] for k in keys})
    else:
        features = datasets.Features({"query_index": datasets.Value("int64")})
        ds = datasets.Dataset.from_dict({"query_index": []}, features=features)
    with atomic_replace_dir(path) as tmp:
        ds.save_to_disk(str(tmp), num_shards=1)
    return ds


def _shade(words: list[str], scores: list[float | None], top: int, colour) -> list[dict]:
    """Per word: text, CSS class, inline style and hover title (see module docstring)."""
    if len(words) != len(scores):
        raise ValueError(f"{len(words)} words but {len(scores)} scores for {' '.join(words)!r}")
    peak = max((abs(s) for s in scores if s is not None), default=0.0)
    shaded = []
    for i, (word, score) in enumerate(zip(words, scores)):
        if score is None:
            shaded.append({"text": word, "cls": "w null", "style": "", "title": "not scored"})
            continue
        alpha = abs(score) / peak if peak > 0 else 0.0
        r, g, b = colour if score >= 0 else NEGATIVE
        style = f"background:rgba({r},{g},{b},{alpha:.3f})"
        if alpha > 0.6:
            style += ";color:#fff"
        cls = "w"
        if i == top:
            cls = "w top"
            style += ";outline:2px solid rgb({},{},{})".format(*colour)
        shaded.append({"text": word, "cls": cls, "style": style, "title": f"{score:.3g}"})
    return shaded


def _label_view(record: Explanation, entry: LabelExplanation) -> dict:
    test_colour, train_colour = PALETTES[entry.role]
    train = [
        {
            "rank": rank,
            "train_index": t.train_index,
            "label_name": _names(t.label_name),
            "label": f"{t.label:.4g}" if isinstance(t.label, float) else t.label,
            "influence": f"{t.influence:.3g}",
            "words": _shade(t.words, t.word_influence, t.responsible_word, train_colour),
        }
        for rank, t in enumerate(entry.top_train, start=1)
    ]
    return {
        "role": entry.role,
        "label_name": entry.label_name,
        "probability": f"{entry.probability:.4g}" if record.problem_type == REGRESSION else f"{entry.probability:.3f}",
        "words": _shade(record.words, entry.saliency, entry.salient_word, test_colour),
        "train": train,
    }


def _names(names) -> str | None:
    """A label name, or the names of a multi-hot row joined ("none" for an empty row)."""
    if isinstance(names, list):
        return ", ".join(names) or "none"
    return names


def _sides(record: Explanation) -> tuple[str, str]:
    """The query's gold and predicted cells: name (probability), the names of a multi-label row
    (each with its probability), or the target and predicted values of a regression."""
    probs = record.probabilities
    if record.problem_type == REGRESSION:
        gold = "unlabelled" if record.gold is None else f"{record.gold:.4g}"
        return gold, f"{record.predicted:.4g}"
    if record.problem_type == MULTI_LABEL:
        def row(on, names):  # names: those of the labels on, in label order
            labels = [y for y, v in enumerate(on) if v >= THRESHOLD]
            return ", ".join(f"{name} ({probs[y]:.3f})" for name, y in zip(names, labels)) or "none"
        gold = "unlabelled" if record.gold is None else row(record.gold, record.gold_name)
        return gold, row(record.predicted, record.predicted_name)
    gold = "unlabelled" if record.gold is None else f"{record.gold_name} ({probs[record.gold]:.3f})"
    return gold, f"{record.predicted_name} ({probs[record.predicted]:.3f})"


def _fmt(value) -> str:
    """Compact text for meta/diagnostics values: floats to 4 significant digits."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fmt(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return str(value)


def render_html(records: Iterable[Explanation | dict], meta: dict, suspicious: list[dict] | None = None) -> str:
    """The report page as a string: a header table of `meta` (any keys, e.g. model,
    dataset, subsample sizes, solver diagnostics, timings, accuracies; entries whose value is
    ``None``, such as a Trainer's unset ``best_model_checkpoint``, are left out), an index of queries,
    then per query the Table 2 view (predicted side, gold side, top-k training examples).
    Zero records give a page saying "No misclassified examples". All text is HTML-escaped.
    `suspicious` (the entries of `suspicious.json`: rank, train_index, text, label_name,
    self_influence) adds a section "Training examples the model finds suspicious" at the end,
    with `meta["suspicious"]` (its diagnostics, and the warning when the dev-loss ranking
    disagrees) shown there instead of in the header table; `None` (default) changes nothing.
    `meta["hub"]` (a training example in many top-k lists, :mod:`hf_pairdots.hubs`) is shown as
    a warning under the header table.
    Records are typed or JSON dicts (:func:`~hf_pairdots.records.as_explanation`). Multi-label
    records show their label names (each with its probability); regression records the target and
    predicted values, and the training examples' targets instead of label names.
    ValueError if a record's words and scores differ in length or a schema field is missing
    (named); KeyError unless role is "predicted" or "gold"."""
    queries, regression = [], False
    for record in sorted(map(as_explanation, records), key=lambda r: r.query_index):
        gold, predicted = _sides(record)
        regression = regression or record.problem_type == REGRESSION
        queries.append(
            {
                "index": record.query_index,
                "text": record.text,
                "gold": gold,
                "predicted": predicted,
                "truncated_words": record.truncated_words,
                "diagnostics": _fmt(record.diagnostics.to_dict()),
                "labels": [_label_view(record, entry) for entry in record.labels],
            }
        )
    meta_rows = [(str(k), _fmt(v)) for k, v in meta.items()
                 if v is not None and k != "hub" and (suspicious is None or k != "suspicious")]
    colours = {role: [f"rgb{c}" for c in pair] for role, pair in PALETTES.items()}
    return _ENV.get_template("report.html.j2").render(
        queries=queries, meta_rows=meta_rows, colours=colours, negative=f"rgb{NEGATIVE}", regression=regression,
        hub_warning=(meta.get("hub") or {}).get("warning"),
        suspicious=None if suspicious is None else _suspicious_view(suspicious, meta.get("suspicious", {})),
    )


def _suspicious_view(examples: list[dict], diagnostics: dict) -> dict:
    rows = [{**e, "self_influence": f"{e['self_influence']:.4g}"} for e in examples]
    rest = {k: v for k, v in diagnostics.items() if k != "warning"}
    return {"rows": rows, "warning": diagnostics.get("warning"), "diagnostics": _fmt(rest)}


def write_report(output_dir: str | os.PathLike, records: Iterable[Explanation | dict], meta: dict,
                 suspicious: list[dict] | None = None) -> Path:
    """Write `<output_dir>/report.html` atomically (see `render_html`) and return its path.
    The jsonl and the dataset are the caller's, through `ExplanationStore`/`write_dataset`."""
    path = Path(output_dir) / REPORT_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, render_html(records, meta, suspicious))
    return path
