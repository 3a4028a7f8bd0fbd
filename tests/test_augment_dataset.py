"""Tests of hf_pairdots.augment.dataset, hf_pairdots.hub and ``pairdots augment``.

Edits in the synthetic explanation records are real one-word WordNet substitutions
(:func:`random_edit`); the end-to-end tests run the real explanation with edits
(``explain_dataset`` with ``ExplainArguments(edit=...)``) on an untrained tiny BERT.
No network: pushes must fail with HubUnavailable and leave the local copy complete.
"""

import hashlib
import json
from pathlib import Path

import datasets
import pytest
import torch
import huggingface_hub
from huggingface_hub import DatasetCard

from hf_pairdots import hub
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.augment.dataset import (
    PROVENANCE,
    apply_edits,
    check_labels,
    collect_edits,
    edit_counts,
    edits_dataset,
    explain_labels,
    explain_mode,
    random_baseline,
)
from hf_pairdots.augment.search import OBJECTIVES, random_edit
from hf_pairdots.hub import CardInfo, HubUnavailable, push_augmented, render_card, save_augmented, source_info

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES = ["negative", "positive"]
TRAIN_TEXTS = [
    "a good movie with a great cast",
    "the plot is dull and the acting is weak",
    "a charming story told with real warmth",
    "boring scenes and silly jokes ruin the film",
    "the music is lovely and the ending is happy",
    "a clumsy script wastes a talented director",
    "an honest portrait of a small family",
    "the characters are thin and the dialogue is forced",
]
TRAIN_LABELS = [1, 0, 1, 0, 1, 0, 1, 0]
SHARED_SST = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst_sentence"


def make_train(extra: bool = True) -> datasets.Dataset:
    columns = {"text": TRAIN_TEXTS, "label": TRAIN_LABELS}
    features = {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=NAMES)}
    if extra:
        columns["index"] = [100 + i for i in range(len(TRAIN_TEXTS))]
        features["index"] = datasets.Value("int64")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def item(lexicon, index: int, objective: str, seed: int = 0, change: float = -0.5) -> dict:
    """A top-k entry of an explanation record whose edit is a real WordNet substitution."""
    text = TRAIN_TEXTS[index]
    edit = random_edit(lexicon, text, objective, torch.Generator().manual_seed(seed))
    record = edit.to_record(objective)
    record.update(predicted_change=change, stage="two-stage")
    return {"train_index": index, "text": text, "label": TRAIN_LABELS[index], "label_name": NAMES[TRAIN_LABELS[index]],
            "influence": 1.0, "words": text.split(), "word_influence": [0.0] * len(text.split()),
            "responsible_word": 0, "edit": record}


def record(query_index: int, gold: int, predicted: int, rows: list[tuple[str, int, list[dict]]]) -> dict:
    """An explanation record (JSON dict) of the one-word query "q" with the given label rows."""
    return {"query_index": query_index, "text": "q", "gold": gold, "gold_name": NAMES[gold], "predicted": predicted,
            "predicted_name": NAMES[predicted], "probabilities": [0.5, 0.5], "words": ["q"],
            "labels": [{"role": role, "label": label, "label_name": NAMES[label], "probability": 0.5,
                        "saliency": [1.0], "salient_word": 0, "top_train": items} for role, label, items in rows]}


# ---------------------------------------------------------------------------------- selection


def test_explain_settings_per_objective():
    assert explain_mode("attack_combined") == "attack" and explain_mode("fix") == "fix"
    assert explain_labels("attack_down") == ("gold",)
    assert explain_labels("attack_up") == ("predicted",)
    assert explain_labels("attack_combined") == ("gold", "predicted")  # gold first: see the docstring
    assert explain_labels("fix") == ("gold", "predicted")
    with pytest.raises(ValueError, match="objective"):
        explain_mode("attack")


def test_combined_attack_interleaves_and_replaces_each_row_once(lexicon):
    train = make_train()
    down = lambda i: item(lexicon, i, "attack_down")  # noqa: E731
    up = lambda i: item(lexicon, i, "attack_up", change=0.5)  # noqa: E731
    records = [
        # query 3 is explained after query 1 (sorted by query_index), so query 1 wins row 0.
        record(3, 1, 0, [("gold", 1, [down(0), down(2), down(4)]), ("predicted", 0, [up(1), up(3)])]),
        record(1, 0, 1, [("gold", 0, [down(0), down(5)]), ("predicted", 1, [up(6), up(4)])]),
    ]
    collection = collect_edits(records, train, "attack_combined", per_query=3, seed=11)
    ds = collection.dataset
    assert ds["query_index"] == [1, 1, 1, 3, 3, 3]
    # Rank by rank, down then up; query 3's down #1 (row 0) was taken by query 1: its up #1 comes first.
    assert ds["objective"] == ["attack_down", "attack_up", "attack_down", "attack_up", "attack_down", "attack_up"]
    assert ds["source_train_index"] == [0, 6, 5, 1, 2, 3]
    assert len(set(ds["source_train_index"])) == len(ds)
    assert set(ds["relation"]) == {"synonym"} and set(ds["seed"]) == {11} and all(ds["edited"])
    assert collection.shortfalls == []
    # Original columns are carried over; label stays the training label and a ClassLabel.
    assert ds.features["label"] == datasets.ClassLabel(names=NAMES)
    assert ds["index"] == [100 + i for i in ds["source_train_index"]]
    assert ds["label"] == [TRAIN_LABELS[i] for i in ds["source_train_index"]]
    for row in ds:
        original = TRAIN_TEXTS[row["source_train_index"]]
        assert original[row["char_start"]:row["char_end"]] == row["original_word"]
        assert row["text"] == original[:row["char_start"]] + row["replacement"] + original[row["char_end"]:]
    # Only the down objective; k = 1.
    only_down = edits_dataset(records, train, "attack_down", per_query=1)
    assert only_down["source_train_index"] == [0, 2] and set(only_down["objective"]) == {"attack_down"}
    # Asking more than there is: a shortfall with the reasons, no loop.
    short = collect_edits(records, train, "attack_up", per_query=5)
    assert [s["found"] for s in short.shortfalls] == [2, 2]
    assert all("ran out of candidates (explain with a larger top_k)" in s["reasons"] for s in short.shortfalls)
    collided = collect_edits(records, train, "attack_down", per_query=3).shortfalls
    assert collided[1]["reasons"]["training row already replaced for an earlier query"] == 1


def test_rows_whose_label_does_not_fit_the_objective_are_skipped(lexicon):
    """A correctly classified query explained with roles (predicted, gold) gets one row, role
    "predicted", label == gold: its attack_up edits would *raise* w_y. They are skipped."""
    train = make_train()
    wrong = record(0, 1, 1, [("predicted", 1, [item(lexicon, 0, "attack_up", change=0.5)])])
    collection = collect_edits([wrong], train, "attack_combined", per_query=1)
    assert len(collection.dataset) == 0
    [shortfall] = collection.shortfalls
    assert any("runner-up" in reason for reason in shortfall["reasons"])
    # With the runner-up label as y' (label 0 != gold 1), the same edit is taken.
    right = record(0, 1, 1, [("predicted", 0, [item(lexicon, 1, "attack_up", change=0.5)])])
    assert collect_edits([right], train, "attack_up", per_query=1).dataset["source_train_index"] == [1]


def test_fixing_adds_and_deduplicates_identical_edits(lexicon):
    train = make_train()
    same = item(lexicon, 2, "fix_up", seed=1)
    other = item(lexicon, 2, "fix_up", seed=5)
    assert same["edit"]["text"] != other["edit"]["text"]
    records = [
        record(0, 1, 0, [("gold", 1, [same, item(lexicon, 4, "fix_up")]),
                         ("predicted", 0, [item(lexicon, 1, "fix_down")])]),
        record(1, 1, 0, [("gold", 1, [same, other]), ("predicted", 0, [])]),
    ]
    ds = edits_dataset(records, train, "fix", per_query=2)
    assert ds["query_index"] == [0, 0, 1]
    assert ds["objective"] == ["fix_up", "fix_down", "fix_up"]
    assert ds["source_train_index"] == [2, 1, 2]  # row 2 twice, with two different edits
    assert len(set(ds["text"])) == 3


def test_antonym_label_rule(lexicon):
    train = make_train()
    entry = item(lexicon, 0, "fix_up")
    entry["edit"].update(relation="antonym", replacement="bad")
    records = [record(0, 1, 0, [("gold", 1, [entry])])]
    kept = edits_dataset(records, train, "fix_up", per_query=1)
    flipped = edits_dataset(records, train, "fix_up", per_query=1, antonym_label="flip")
    assert kept["label"] == [1] and kept["label_flipped"] == [False]
    assert flipped["label"] == [0] and flipped["label_flipped"] == [True]
    three = datasets.Dataset.from_dict(
        {"text": TRAIN_TEXTS, "label": [0, 1, 2, 0, 1, 2, 0, 1]},
        features=datasets.Features({"text": datasets.Value("string"),
                                    "label": datasets.ClassLabel(names=["a", "b", "c"])}))
    with pytest.raises(ValueError, match="binary"):
        collect_edits([], three, "fix", per_query=1, antonym_label="flip")
    with pytest.raises(ValueError, match="antonym_label"):
        collect_edits([], train, "fix", per_query=1, antonym_label="drop")


def test_bad_records_are_rejected(lexicon):
    train = make_train()
    entry = item(lexicon, 0, "attack_down")
    entry["label"] = 5
    with pytest.raises(ValueError, match="outside"):
        edits_dataset([record(0, 1, 1, [("gold", 1, [entry])])], train, "attack_down", per_query=1)
    other = item(lexicon, 0, "attack_down")
    other["text"] = "a different training set"
    with pytest.raises(ValueError, match="same training set"):
        edits_dataset([record(0, 1, 1, [("gold", 1, [other])])], train, "attack_down", per_query=1)
    with pytest.raises(ValueError, match="per_query"):
        edits_dataset([], train, "attack_down", per_query=0)
    with pytest.raises(TypeError, match="training Dataset"):
        edits_dataset([], NAMES, "fix", per_query=1)  # the signature before the training set was needed
    empty = edits_dataset([], train, "attack_down", per_query=1)
    assert len(empty) == 0 and set(PROVENANCE) <= set(empty.column_names)


# ---------------------------------------------------------------------------------- applying edits


def _attack_edits(lexicon, train):
    records = [record(0, 1, 1, [("gold", 1, [item(lexicon, 2, "attack_down"), item(lexicon, 6, "attack_down")])])]
    return edits_dataset(records, train, "attack_down", per_query=2)


def test_apply_attack_replaces_each_source_row(lexicon):
    train = make_train()
    edits = _attack_edits(lexicon, train)
    out = apply_edits(train, edits)
    assert len(out) == len(train) and out.features["label"] == train.features["label"]
    assert out["edited"] == [i in (2, 6) for i in range(len(train))]
    for i in range(len(train)):
        row = out[i]
        if i in (2, 6):
            assert row["text"] == edits[[2, 6].index(i)]["text"] != TRAIN_TEXTS[i]
            assert row["source_train_index"] == i and row["index"] == 100 + i
        else:
            assert row["text"] == TRAIN_TEXTS[i] and row["label"] == TRAIN_LABELS[i]
            assert row["label_flipped"] is False
            assert all(row[name] is None for name in PROVENANCE if name not in ("edited", "label_flipped"))
    twice = datasets.concatenate_datasets([edits, edits.select([0])])
    with pytest.raises(ValueError, match="more than once"):
        apply_edits(train, twice)


def test_apply_fix_appends_rows_and_checks_consistency(lexicon):
    train = make_train()
    records = [record(0, 1, 0, [("gold", 1, [item(lexicon, 2, "fix_up")]),
                                ("predicted", 0, [item(lexicon, 3, "fix_down")])])]
    edits = edits_dataset(records, train, "fix", per_query=2)
    out = apply_edits(train, edits)
    assert len(out) == len(train) + 2
    assert out["text"][:len(train)] == TRAIN_TEXTS and out["text"][len(train):] == edits["text"]
    assert out["edited"] == [False] * len(train) + [True, True]
    assert out["source_train_index"][len(train):] == [2, 3]
    with pytest.raises(ValueError, match="mix"):
        apply_edits(train, datasets.concatenate_datasets([edits, _attack_edits(lexicon, train)]))
    renamed = edits.cast_column("label", datasets.ClassLabel(names=["neg", "pos"]))
    with pytest.raises(ValueError, match="label names differ"):
        apply_edits(train, renamed)


def test_random_baseline_same_budget_and_deterministic(lexicon):
    train = make_train()
    edits = _attack_edits(lexicon, train)
    base = random_baseline(edits, train, seed=3, lexicon=lexicon)
    assert len(base) == len(edits)
    assert base["source_train_index"] == edits["source_train_index"]
    assert base["query_index"] == edits["query_index"] and base["objective"] == edits["objective"]
    assert set(base["stage"]) == {"random"} and set(base["predicted_influence_change"]) == {None}
    assert set(base["relation"]) == {"synonym"}  # attack: synonyms only
    for row in base:
        original = TRAIN_TEXTS[row["source_train_index"]].split()
        changed = [i for i, (a, b) in enumerate(zip(original, row["text"].split())) if a != b]
        assert changed == [row["position"]]
    assert random_baseline(edits, train, seed=3, lexicon=lexicon)["text"] == base["text"]
    assert len(apply_edits(train, base)) == len(train)


# ---------------------------------------------------------------------------------- labels on disk


def test_label_stays_classlabel_through_disk_and_parquet(lexicon, tmp_path):
    train = make_train()
    out = apply_edits(train, _attack_edits(lexicon, train))
    info = CardInfo(source="stanfordnlp/imdb", model="tiny", objective="attack_down")
    folder = save_augmented(out, tmp_path / "aug", info)
    assert {"README.md", "data.parquet", "dataset_info.json", "state.json"} <= {p.name for p in folder.iterdir()}
    expected = datasets.ClassLabel(names=NAMES)
    reloaded = datasets.load_from_disk(str(folder))
    from_parquet = datasets.Dataset.from_parquet(str(folder / "data.parquet"))
    via_loader = datasets.load_dataset("parquet", data_files=str(folder / "data.parquet"), split="train")
    for ds in (reloaded, from_parquet, via_loader):
        assert ds.features["label"] == expected
        assert ds.features == out.features
        assert ds["label"] == out["label"] and ds["text"] == out["text"] and ds["edited"] == out["edited"]
    # Saving again replaces the previous output in place.
    save_augmented(reloaded.select(range(3)), folder, CardInfo(source="x", model="m", objective="attack_down"))
    assert len(datasets.load_from_disk(str(folder))) == 3


def test_out_of_range_labels_are_rejected_before_writing(tmp_path):
    features = make_train(extra=False).features
    seven = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, 7]}).cast(features)  # cast does not check
    minus = datasets.Dataset.from_dict({"text": ["a"], "label": [-1]}, features=features)  # -1 passes ClassLabel
    info = CardInfo(source="x", model="m", objective="fix")
    for bad in (seven, minus):
        with pytest.raises(ValueError, match="outside"):
            save_augmented(bad, tmp_path / "bad", info)
        assert not (tmp_path / "bad").exists()
        with pytest.raises(ValueError, match="outside"):
            push_augmented(bad, "user/name", "card")
    plain = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match="ClassLabel"):
        check_labels(plain)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        save_augmented(make_train(), tmp_path / "busy", info)


# ---------------------------------------------------------------------------------- card


def test_card_renders_every_field(lexicon, tmp_path):
    folder = tmp_path / "sst_copy"
    folder.mkdir()
    (folder / "PROVENANCE.md").write_text(
        "# SST sentence-level, binary (SST-2)\n\nWhat: sentences.\n\n"
        "License: repo is MIT. Underlying data: Stanford SST (no explicit license;\ncite Socher et al. 2013).\n")
    train = make_train()
    out = apply_edits(train, _attack_edits(lexicon, train))
    info = CardInfo(source=f"{folder}:binary", model="models/tiny-sst", objective="attack_down", seed=42,
                    parameters={"per_query": 2, "num_sampled": 5, "max_candidates": 20, "antonym_label": "keep"},
                    query_split="test", tags=["unit-test"])
    text = render_card(out, info)
    data = DatasetCard(text).data
    assert data.license == "other" and data.language == ["en"]
    assert data.task_categories == ["text-classification"]
    assert {"pair-the-dots", "influence-functions", "wordnet", "adversarial", "unit-test"} <= set(data.tags)
    assert data.size_categories == ["n<1K"] and data.source_datasets == ["extended|stanfordnlp/sst2"]
    for needle in ["## How the data was made", "Meng et al. (2020)", "Eq. 11", "Eq. 12", "`attack_down`",
                   "| seed | 42 |", "`models/tiny-sst`", "| per_query | 2 |", "split `train`", "`test` split",
                   "| attack_down | 2 |", "| synonym | 2 |", "| two-stage | 2 |", "8 (2 edited, 6 untouched",
                   "arXiv:2010.06943", "Pair the Dots: Jointly Examining Training History and Test Stimuli",
                   "socher2013recursive", "miller1995wordnet", "SST sentence-level, binary (SST-2)",
                   "> License: repo is MIT. Underlying data: Stanford SST (no explicit license; cite Socher et al. "
                   "2013).",
                   "`source_train_index`", "Labels: negative, positive."]:
        assert needle in text, needle
    assert "{{" not in text and "{%" not in text
    baseline = render_card(out, CardInfo(source="fancyzhx/ag_news", model="m", objective="attack_combined",
                                         baseline=True))
    assert "random baseline" in baseline and "zhang2015character" in baseline
    assert "maas2011learning" in render_card(out, CardInfo(source="stanfordnlp/imdb", model="m", objective="fix"))
    assert "no citation known" in source_info("my_file.csv")["bibtex"]
    with pytest.raises(ValueError, match="objective"):
        CardInfo(source="x", model="m", objective="attack")


@pytest.mark.skipif(not (SHARED_SST / "PROVENANCE.md").is_file(), reason="project data not on this machine")
def test_source_citation_from_shared_provenance():
    info = source_info(f"{SHARED_SST}:binary")
    assert info["keys"] == ["sst"] and "Socher" in info["bibtex"]
    assert any("cite Socher et al. 2013" in line for line in info["provenance"]["lines"])
    for name, key, author in (("imdb", "imdb", "Maas"), ("ag_news", "ag_news", "Zhang"), ("sst2_glue", "glue", "Wang")):
        found = source_info(str(SHARED_SST.parent / name))
        assert key in found["keys"] and author in found["bibtex"] and found["provenance"]["lines"]


# ---------------------------------------------------------------------------------- Hub, offline


def _snapshot(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_offline_push_raises_one_clear_error_and_keeps_the_local_copy(lexicon, tmp_path, monkeypatch):
    train = make_train()
    out = apply_edits(train, _attack_edits(lexicon, train))
    folder = save_augmented(out, tmp_path / "aug", CardInfo(source="x", model="m", objective="attack_down"))
    before = _snapshot(folder)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnavailable) as caught:
        push_augmented(out, "someone/pairdots-test", folder)
    assert isinstance(caught.value, RuntimeError)
    message = str(caught.value)
    assert str(folder) in message and "complete" in message and "someone/pairdots-test" in message
    assert _snapshot(folder) == before
    # Not offline by configuration, but no network: the Hub call fails; same error, same copy.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(hub, "_offline", lambda: False)
    if not huggingface_hub.constants.HF_HUB_OFFLINE:  # a network might exist: make sure it is not reached
        def unreachable(*args, **kwargs):
            raise ConnectionError("[Errno -2] Name or service not known")
        monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", unreachable)
    with pytest.raises(HubUnavailable) as caught:
        push_augmented(out, "someone/pairdots-test", folder / "README.md", token="hf_not_a_token")
    assert str(folder) in str(caught.value) and caught.value.__cause__ is not None
    assert _snapshot(folder) == before
    assert datasets.load_from_disk(str(folder))["text"] == out["text"]


# ---------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from hf_pairdots.models import load_tokenizer, tiny_bert

    folder = tmp_path_factory.mktemp("tiny_model")
    model = tiny_bert(seed=0, initializer_range=0.2, id2label={0: "negative", 1: "positive"},
                      label2id={"negative": 0, "positive": 1})
    model.save_pretrained(folder)
    load_tokenizer().save_pretrained(folder)
    return folder


def test_explained_edits_end_to_end(tiny_model_dir, tmp_path):
    """The real explanation proposes edits; collecting, applying and saving them works."""
    from hf_pairdots.callback import explain_dataset
    from hf_pairdots.models import load_classifier, load_tokenizer
    from hf_pairdots.report import ExplanationStore

    train = make_train()
    queries = datasets.Dataset.from_dict({"text": ["a great and charming film", "a dull silly script"],
                                          "label": [1, 0]},
                                         features=make_train(extra=False).features)
    args = ExplainArguments(queries="all", labels=explain_labels("fix"), top_k=3, edit=explain_mode("fix"),
                            max_candidates=5, seed=0, solver=SolverOptions(solver="cg", power_iters=10))
    model = load_classifier(str(tiny_model_dir))
    explain_dataset(model, load_tokenizer(str(tiny_model_dir)), train, queries, args, tmp_path / "explain")
    records = ExplanationStore(tmp_path / "explain").records()
    collection = collect_edits(records, train, "fix", per_query=2, seed=0)
    ds = collection.dataset
    assert 1 <= len(ds) <= 4
    for row in ds:
        assert row["objective"] in ("fix_up", "fix_down") and row["stage"] in ("two-stage", "sampled")
        assert row["predicted_influence_change"] is not None
        assert row["relation"] in OBJECTIVES[row["objective"]].relations
    augmented = apply_edits(train, ds)
    assert len(augmented) == len(train) + len(ds)
    counts = edit_counts(augmented)
    assert sum(counts["objective"].values()) == len(ds)
    folder = save_augmented(augmented, tmp_path / "aug", CardInfo(source="x.csv", model="tiny", objective="fix"))
    assert datasets.load_from_disk(str(folder))["text"] == augmented["text"]


def test_cli_augment(tiny_model_dir, tmp_path, capsys):
    from hf_pairdots.cli import main

    data = tmp_path / "sst"
    data.mkdir()
    for suffix, lines in (("train", [f"{y} {t}" for t, y in zip(TRAIN_TEXTS, TRAIN_LABELS)]),
                          ("dev", ["1 a lovely film", "0 a weak plot"]),
                          ("test", ["1 a great story with warmth", "0 silly jokes and a dull cast", "1 happy"])):
        (data / f"stsa.binary.{suffix}").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["augment", str(tiny_model_dir), "--data", str(data), "--objective", "attack_combined", "--queries", "2",
            "--per-query", "1", "--max-candidates", "5", "--solver", "cg", "--out", str(out),
            "--random-baseline"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    augmented = datasets.load_from_disk(str(out / "augmented"))
    baseline = datasets.load_from_disk(str(out / "random_baseline"))
    assert len(augmented) == len(baseline) == len(TRAIN_TEXTS)  # attack: rows replaced, not added
    assert augmented.features["label"] == datasets.ClassLabel(names=NAMES)
    edited = augmented.filter(lambda row: row["edited"])
    assert 1 <= len(edited) <= 2 and set(edited["relation"]) == {"synonym"}
    assert sum(baseline["edited"]) == len(edited)
    card = (out / "augmented" / "README.md").read_text()
    assert "attack_combined" in card and "socher2013recursive" in card
    assert summary["queries"] == 2 and summary["edits"] == len(edited)
    assert summary["written"] == {"augmented": str(out / "augmented"), "random_baseline": str(out / "random_baseline")}
