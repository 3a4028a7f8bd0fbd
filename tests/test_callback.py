"""PairDotsCallback inside a real Trainer run (tiny BERT, synthetic data with a planted cause)."""

import json
import random

import datasets
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
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


def _trainer(model, tok, train, out, callback, epochs=40, learning_rate=3e-3, seed=0):
    args = TrainingArguments(output_dir=str(out), num_train_epochs=epochs, learning_rate=learning_rate,
                             per_device_train_batch_size=16, use_cpu=True, save_strategy="no", report_to=[],
                             disable_tqdm=True, seed=seed)
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


LORA_SEED, LORA_TRAINER_SEED = 1, 2  # base/adapter initialisation, Trainer (data order)


@pytest.fixture(scope="module")
def lora_run(planted, tok, tmp_path_factory):
    """The planted data, a Trainer that trains only LoRA adapters, and influence over them.

    Adapters on the word embeddings, ``query`` and ``value`` (r=4, no dropout); peft also trains
    its copy of the classifier (``task_type="SEQ_CLS"``). The word-embedding adapter is there
    because the base is random: with ``query``/``value`` adapters alone the model learnt
    "zebra" -> pos in 1 to 2 of 4 seeds (measured), so there would be nothing to explain.
    """
    train, dev = planted
    out = tmp_path_factory.mktemp("lora")
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["word_embeddings", "query", "value"],
                        task_type="SEQ_CLS")
    model = get_peft_model(tiny_bert(seed=LORA_SEED), config)
    args = ExplainArguments(queries="indices", query_indices=[0], labels=("predicted",), params="lora",
                            top_k=len(train), max_length=16, saliency_mode="grad_x_input", saliency_target="margin",
                            salient_by="magnitude", solver=SolverOptions(solver="cg", cg_max_iter=100))
    callback = PairDotsCallback(dev, train_dataset=train, args=args)
    _trainer(model, tok, train, out, callback, learning_rate=1e-2, seed=LORA_TRAINER_SEED).train()
    return out / "pairdots", model


def test_planted_training_example_ranks_first_over_lora_adapters(lora_run):
    """The Trainer trains a peft LoRA model; the callback's influence is over the adapters
    (``params="lora"``: 4 x 30522 + 32 x 4 in the word-embedding adapter, 4 x 256 in query and
    value) and the only training example with "zebra" is the top influence on the saliency of
    "zebra" in a test sentence, by a factor of about 400 (I = 5.8 vs 0.014).

    The sign is the model's, not a constant of the setup. Measured over six (model seed, Trainer
    seed) pairs, (1, 0) (1, 1) (1, 2) (0, 0) (2, 0) (3, 0): the model learns "zebra" -> pos in all
    six (p = 0.97-0.99 for "a zebra story") and the planted example has the largest |I| of the 51
    in all six, but its influence is positive (ranked first) in three, (1, 1) (1, 2) (3, 0). In
    the others up-weighting it *lowers* |s(zebra)|, and it ranks last: five SGD steps on that
    example alone, with seeds (0, 0), move s(zebra) from 0.249 to 0.237 while p(pos) rises. The
    same split shows with ``saliency_target="prob"`` and with ``saliency_mode="gradient"``.
    """
    folder, model = lora_run
    assert isinstance(model, PeftModel)
    base = tiny_bert(seed=LORA_SEED)  # the frozen base weights are the initial ones
    assert torch.equal(model.get_base_model().bert.encoder.layer[0].attention.self.query.base_layer.weight,
                       base.bert.encoder.layer[0].attention.self.query.weight)
    assert ExplainArguments.from_json(folder / "explain_args.json").params == "lora"
    [record] = [json.loads(line) for line in (folder / JSONL_NAME).read_text().splitlines()]
    assert record["text"] == "a zebra story"
    assert record["predicted"] == 1 and record["probabilities"][1] > 0.9
    [entry] = record["labels"]
    assert record["words"][entry["salient_word"]] == "zebra"
    top = entry["top_train"]
    assert len(top) == 51 and sorted(t["train_index"] for t in top) == list(range(51))
    assert top[0]["train_index"] == PLANTED
    assert top[0]["influence"] > 100 * top[1]["influence"] > 0
    assert top[0]["influence"] > 50 * max(abs(t["influence"]) for t in top[1:])  # largest |I|: held in all six
    assert top[0]["words"][top[0]["responsible_word"]] == "zebra"  # Eq. 8 on the planted sentence
    assert record["diagnostics"]["relative_residual"][0] < 1e-3  # CG converged


def test_callback_writes_every_output_and_logs_a_summary(run):
    folder, callback, _, trainer = run
    for name in (JSONL_NAME, REPORT_NAME, "explain_args.json"):
        assert (folder / name).is_file(), name
    loaded = datasets.load_from_disk(str(folder / "explanations"))
    assert sorted(loaded["query_index"]) == [0, 1, 2]
    assert ExplainArguments.from_json(folder / "explain_args.json") == callback.args
    assert callback.last_summary["queries"] == 3
    [entry] = [e for e in trainer.state.log_history if "pairdots/queries" in e]
    meta = json.loads((folder / "meta.json").read_text())
    assert entry == {"pairdots/" + k: meta[k] for k in ("queries", "skipped", "mean_top1_influence", "seconds")} | {
        "step": trainer.state.global_step}
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
    with pytest.raises(ValueError, match="QueryArguments.top_k"):
        ExplainArguments(top_k=0)
    with pytest.raises(ValueError, match="SolverArguments.solver"):
        SolverOptions(solver="newton")
