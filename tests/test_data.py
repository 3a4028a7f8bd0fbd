import json
from pathlib import Path

import datasets
import pytest

from hf_pairdots.data import (
    ACCEPTED_FORMS,
    AG_NEWS_NAMES,
    SST2_NAMES,
    SST5_NAMES,
    load_text_classification,
    subsample,
)

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(
    not DATA.is_dir(),
    reason=f"offline data folder {DATA} (the shared/ dir beside the repo) is absent",
)


def _check(dd, sizes, names):
    assert {split: len(ds) for split, ds in dd.items()} == sizes
    for ds in dd.values():
        assert ds.column_names == ["text", "label"]
        assert ds.features["text"] == datasets.Value("string")
        assert isinstance(ds.features["label"], datasets.ClassLabel)
        assert ds.features["label"].names == names
        assert all(isinstance(t, str) and t for t in ds["text"][:50])


@needs_data
@pytest.mark.parametrize(
    "spec, sizes, names",
    [
        ("sst_sentence", {"train": 6920, "validation": 872, "test": 1821}, SST2_NAMES),
        ("sst_sentence:binary", {"train": 6920, "validation": 872, "test": 1821}, SST2_NAMES),
        ("sst_sentence:fine", {"train": 8544, "validation": 1101, "test": 2210}, SST5_NAMES),
        ("sst2_glue", {"train": 60614, "validation": 6735, "test": 872}, SST2_NAMES),
        ("sst_trees", {"train": 8544, "validation": 1101, "test": 2210}, SST5_NAMES),
        ("ag_news", {"train": 8000, "test": 7600}, AG_NEWS_NAMES),
        ("ag_news:alps", {"train": 10001, "test": 7600}, AG_NEWS_NAMES),
        ("imdb", {"train": 5000, "test": 5000}, SST2_NAMES),
    ],
)
def test_local_folders(spec, sizes, names):
    _check(load_text_classification(DATA / spec), sizes, names)


@needs_data
def test_relative_path_and_split_names(monkeypatch):
    monkeypatch.chdir(DATA.parent)
    dd = load_text_classification("data/sst_sentence:fine", split_names=["test", "train"])
    assert list(dd) == ["test", "train"]
    assert dd["train"][0] == {
        "text": "a stirring , funny and finally transporting re-imagining of beauty and the beast "
        "and 1930s horror films",
        "label": 4,
    }
    with pytest.raises(ValueError, match="no split"):
        load_text_classification("data/imdb", split_names=["validation"])


@needs_data
def test_sst2_glue_quotes_and_trailing_space():
    train = load_text_classification(DATA / "sst2_glue")["train"]
    quoted = [t for t in train["text"] if t.startswith("'") or "``" in t or "''" in t]
    assert len(quoted) > 1000
    assert train[0] == {"text": "when are bears bears and ", "label": 1}


@needs_data
def test_sst_trees_root_label_and_leaves():
    dd = load_text_classification(DATA / "sst_trees")
    assert dd["validation"][0] == {
        "text": "It 's a lovely film with lovely performances by Buy and Accorsi .",
        "label": 3,
    }
    # same root-label counts as stsa.fine (PROVENANCE.md), in another order
    fine = load_text_classification(f"{DATA / 'sst_sentence'}:fine")
    for split in dd:
        assert sorted(dd[split]["label"]) == sorted(fine[split]["label"])


@needs_data
def test_ag_news_labels_are_zero_based():
    dd = load_text_classification(DATA / "ag_news")
    # first test row: "3,Unions representing workers at Turner ..." -> Business
    assert dd["test"].features["label"].int2str(dd["test"][0]["label"]) == "Business"
    assert dd["test"][0]["text"].startswith("Unions representing workers at Turner")


def test_bad_spec_lists_accepted_forms(tmp_path):
    (tmp_path / "x.parquet").write_text("")
    for spec in ["no/such/dataset", str(tmp_path), "glue/sst2:fine", str(tmp_path / "x.parquet")]:
        with pytest.raises(ValueError) as err:
            load_text_classification(spec)
        message = str(err.value)
        assert repr(spec) in message and ACCEPTED_FORMS in message
        for form in [
            "glue/sst2",
            "stanfordnlp/imdb",
            "fancyzhx/ag_news",
            "sst_sentence[:binary|:fine]",
            "sst2_glue",
            "sst_trees",
            "ag_news[:alps]",
            "imdb",
            ".csv, .tsv or .jsonl",
        ]:
            assert form in message


@needs_data
def test_unknown_config_of_a_folder():
    with pytest.raises(ValueError, match=r"unknown config \(known: binary, fine\)"):
        load_text_classification(f"{DATA / 'sst_sentence'}:phrases")


def test_single_files(tmp_path):
    csv_file = tmp_path / "reviews.csv"
    csv_file.write_text('sentence,label,extra\n"good, really",pos,1\nbad,neg,2\nok,pos,3\n')
    _check(load_text_classification(csv_file), {"train": 3}, ["neg", "pos"])
    assert load_text_classification(csv_file)["train"]["label"] == [1, 0, 1]

    tsv_file = tmp_path / "a.tsv"
    tsv_file.write_text("text\tlabel\nfine\t2\nmeh\t0\n")
    dd = load_text_classification(tsv_file)
    _check(dd, {"train": 2}, ["0", "1", "2"])
    assert dd["train"]["label"] == [2, 0]

    jsonl_file = tmp_path / "b.jsonl"
    jsonl_file.write_text(
        "\n".join(json.dumps({"content": t, "label": y}) for t, y in [("x", 1), ("y", 0)])
    )
    assert load_text_classification(jsonl_file)["train"][:] == {"text": ["x", "y"], "label": [1, 0]}

    (tmp_path / "c.csv").write_text("body,label\nx,1\n")
    with pytest.raises(ValueError, match="has no text or label column"):
        load_text_classification(tmp_path / "c.csv")


def test_hub_ids_are_mapped_to_text_and_label(monkeypatch):
    """Hub path without a network: load_dataset is replaced by in-memory GLUE-shaped data."""
    glue = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": ["fun ", "dull "], "label": [1, 0], "idx": [0, 1]}
            ),
            "test": datasets.Dataset.from_dict(
                {"sentence": ["hidden "], "label": [-1], "idx": [0]}
            ),
        }
    )
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: calls.append(args) or glue)
    dd = load_text_classification("glue/sst2")
    assert calls == [("nyu-mll/glue", "sst2")]
    _check(dd, {"train": 2}, SST2_NAMES)
    assert dd["train"][:] == {"text": ["fun ", "dull "], "label": [1, 0]}


def test_hub_class_label_names_are_replaced(monkeypatch):
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    imdb = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"text": ["a", "b"], "label": [0, 1]}, features=features
            ),
            "unsupervised": datasets.Dataset.from_dict(
                {"text": ["c"], "label": [-1]},
                features=datasets.Features(
                    {"text": datasets.Value("string"), "label": datasets.Value("int64")}
                ),
            ),
        }
    )
    monkeypatch.setattr(datasets, "load_dataset", lambda *args: imdb)
    _check(load_text_classification("stanfordnlp/imdb"), {"train": 2}, SST2_NAMES)


def test_subsample_is_deterministic_and_keeps_provenance():
    ds = datasets.Dataset.from_dict(
        {"text": [f"t{i}" for i in range(20)], "label": [i % 2 for i in range(20)]}
    )
    a, b = subsample(ds, 5, seed=3), subsample(ds, 5, seed=3)
    assert a[:] == b[:] and len(a) == 5
    assert a.column_names == ["text", "label", "index"]
    assert all(ds[i]["text"] == t for i, t in zip(a["index"], a["text"], strict=True))
    assert sorted(subsample(a, 99, seed=0)["index"]) == sorted(a["index"])  # index survives twice
    assert subsample(ds, 5, seed=4)["index"] != a["index"]
