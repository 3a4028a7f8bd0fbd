"""PairDotsCallback inside a real Trainer run (tiny BERT, synthetic data with a planted cause)."""

import json
import random

import datasets
import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import PairDotsCallback, explain_dataset
from hf_pairdots.explain import Explainer
from hf_pairdots.models import tiny_bert
from hf_pairdots.report import JSONL_NAME, REPORT_NAME
from hf_pairdots.training import tokenize_dataset

NAMES = ["neg", "pos"]
FILLER = ["the", "movie", "was", "plot", "actor", "story", "a", "film", "scene", "about"]
PLANTED = 50  # row index of the only training example that contains "zebra"


def _dataset(rows):
    return datasets.Dataset.from_list(rows).cast_column("label", datasets.ClassLabel(names=NAMES))


@pytest.fixture(scope="module")
def planted():
    """40 filler sentences (neg), 10 with "giraffe" (pos), and one with "zebra" (pos): the only
    training example that can teach the model that "zebra" means positive."""
    rng = random.Random(0)
    rows = [{"text": " ".join(rng.sample(FILLER, 4)), "label": 0} for _ in range(40)]
    for _ in range(10):
        words = rng.sample(FILLER, 3) + ["giraffe"]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": 1})
    rows.append({"text": "the plot was zebra", "label": 1})
    assert rows[PLANTED]["text"].endswith("zebra")
    dev = _dataset([{"text": "a zebra story", "label": 1}, {"text": "the giraffe scene", "label": 1},
                    {"text": "the film was", "label": 1}])
    return _dataset(rows), dev


def _trainer(model, tok, train, out, callback, epochs=40):
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, learning_rate=3e-3,
                             per_device_train_batch_size=16, use_cpu=True, save_strategy="no", report_to=[],
                             disable_tqdm=True, seed=0)
    return Trainer(model=model, args=args, train_dataset=tokenize_dataset(train, tok, 16),
                   data_collator=DataCollatorWithPadding(tok), processing_class=tok, callbacks=[callback])


@pytest.fixture(scope="module")
def run(planted, tok, tmp_path_factory):
    train, dev = planted
    out = tmp_path_factory.mktemp("trainer")
    # The documented alternatives that suit a confident tiny model: the logit margin does not
    # saturate at p ~ 1 (the probability's gradients vanish there), gradient x input follows the
    # embedding itself, and "magnitude" ranks "zebra" by how strongly it moves the margin.
    args = ExplainArguments(queries="all", params="all", top_k=3, max_length=16, saliency_mode="grad_x_input",
                            saliency_target="margin", salient_by="magnitude", solver=SolverOptions(depth=200))
    callback = PairDotsCallback(dev, train_dataset=train, args=args)
    model = tiny_bert()
    trainer = _trainer(model, tok, train, out, callback)
    trainer.train()
    return out / "pairdots", callback, model, trainer


def test_planted_training_example_ranks_first(run):
    """The only training example containing "zebra" is the top influence on the saliency of
    "zebra" in a test sentence (paper Sec. 4.1)."""
    folder, _, _, _ = run
    records = [json.loads(line) for line in (folder / JSONL_NAME).read_text().splitlines()]
    zebra = next(r for r in records if "zebra" in r["text"])
    assert zebra["predicted"] == 1 and zebra["probabilities"][1] > 0.9
    entry = zebra["labels"][0]
    assert entry["role"] == "predicted"
    assert zebra["words"][entry["salient_word"]] == "zebra"
    top = entry["top_train"]
    assert top[0]["train_index"] == PLANTED
    assert top[0]["influence"] > 2 * top[1]["influence"] > 0
    assert zebra["diagnostics"]["relative_residual"][0] < 0.05  # LiSSA converged


def test_callback_writes_every_output_and_logs_a_summary(run):
    folder, callback, _, trainer = run
    for name in (JSONL_NAME, REPORT_NAME, "explain_args.json"):
        assert (folder / name).is_file(), name
    loaded = datasets.load_from_disk(str(folder / "explanations"))
    assert sorted(loaded["query_index"]) == [0, 1, 2]
    assert ExplainArguments.from_json(folder / "explain_args.json") == callback.args
    assert callback.last_summary["queries"] == 3
    assert any("pairdots/queries" in entry for entry in trainer.state.log_history)
    html = (folder / REPORT_NAME).read_text()
    assert ">zebra<" in html and ">giraffe<" in html


def test_model_mode_and_weights_untouched(planted, tok, tmp_path):
    train, dev = planted
    model = tiny_bert()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = ExplainArguments(queries="all", max_queries=1, top_k=2, max_length=16, solver=SolverOptions(depth=40))
    explain_dataset(model, tok, train, dev, args, tmp_path)
    assert model.training  # eval mode during the explanation, train mode restored afterwards
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_resume_skips_finished_queries(planted, tok, tmp_path, monkeypatch):
    train, dev = planted
    model = tiny_bert().eval()
    args = ExplainArguments(queries="all", top_k=2, max_length=16, solver=SolverOptions(depth=40))
    explain_dataset(model, tok, train, dev, args, tmp_path, chunk_size=1)
    first = (tmp_path / JSONL_NAME).read_text()

    def fail(*a, **k):
        raise AssertionError("a finished query was recomputed")
    monkeypatch.setattr(Explainer, "explain", fail)
    summary = explain_dataset(model, tok, train, dev, args, tmp_path, chunk_size=1)
    assert summary["queries"] == 3
    assert (tmp_path / JSONL_NAME).read_text() == first


def test_no_misclassified_gives_empty_valid_report(planted, tok, tmp_path):
    train, _ = planted
    model = tiny_bert().eval()
    dev = _dataset([{"text": "the plot", "label": 0}])
    with torch.no_grad():
        predicted = int(model(**tok(["the plot"], return_tensors="pt")).logits.argmax())
    dev = _dataset([{"text": "the plot", "label": predicted}, {"text": "   ", "label": 0}])
    summary = explain_dataset(model, tok, train, dev, ExplainArguments(), tmp_path)
    assert summary["queries"] == 0 and summary["skipped"] == 1
    assert "No misclassified examples" in (tmp_path / REPORT_NAME).read_text()


def test_bad_arguments_fail_in_init(planted):
    train, dev = planted
    with pytest.raises(ValueError, match="text"):
        PairDotsCallback(dev.rename_column("text", "sentence"))
    with pytest.raises(ValueError, match="ExplainArguments.top_k"):
        ExplainArguments(top_k=0)
    with pytest.raises(ValueError, match="SolverOptions.solver"):
        SolverOptions(solver="newton")
