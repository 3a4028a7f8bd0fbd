"""PairDotsCallback / explain_dataset / ``pairdots explain`` under the conditions of issue #4.

Event order inside a real Trainer, SIGKILL and resume, bad query rows, bf16 weights, gradient
checkpointing with a frozen embedding layer (case C13), ``load_best_model_at_end`` and the
post hoc CLI. Everything runs on the tiny BERT of :func:`hf_pairdots.models.tiny_bert` with the
exact solver and a fixed damping (no eigenvalue estimates), so each test takes seconds.
"""

import copy
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import datasets
import pytest
import torch
from torch import nn
from transformers import BertConfig, DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import META_NAME, PairDotsCallback, explain_dataset
from hf_pairdots.cli import main as cli_main
from hf_pairdots.data import load_text_classification
from hf_pairdots.errors import SaliencyError
from hf_pairdots.modeling import predict_proba, suspend_input_require_grads
from hf_pairdots.models import load_classifier, load_tokenizer, tiny_bert
from hf_pairdots.report import JSONL_NAME, REPORT_NAME, ExplanationStore
from hf_pairdots.saliency import saliency
from hf_pairdots.training import tokenize_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = [("a good film", 1), ("a bad film", 0), ("the plot was fine", 1), ("awful acting here", 0),
         ("a great story", 1), ("boring scene again", 0), ("the actor was great", 1), ("the movie was dull", 0)]
DEV = [("a good story", 1), ("bad plot", 0), ("fine film", 0), ("dull acting", 1)]
OUTPUTS = {JSONL_NAME, REPORT_NAME, "explanations", "explain_args.json", META_NAME}
FAST = SolverOptions(solver="exact", damping=1.0)  # no Lanczos estimates; deterministic


def _ds(rows, label_feature=True):
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]})
    return ds.cast_column("label", datasets.ClassLabel(names=["neg", "pos"])) if label_feature else ds


def _args(**kw):
    return ExplainArguments(**{"queries": "all", "top_k": 2, "max_length": 16, "solver": FAST, **kw})


def _records(folder) -> list[dict]:
    path = Path(folder) / JSONL_NAME  # not created while there is no record
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def _top(records) -> dict:
    """query_index -> per explained label (role, label, salient word, top-k train indices)."""
    return {r["query_index"]: [(e["role"], e["label"], e["salient_word"], [t["train_index"] for t in e["top_train"]])
                               for e in r["labels"]] for r in records}


def _influences(records) -> list[float]:
    return [t["influence"] for r in records for e in r["labels"] for t in e["top_train"]]


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


def _leftovers(folder) -> list[str]:
    """Temp files/folders of the atomic writers (``.<name>.*.tmp``, ``.<name>.old``)."""
    return [str(p) for p in Path(folder).rglob("*") if p.name.startswith(".") or p.name.endswith((".tmp", ".old"))]


@pytest.fixture(scope="module")
def train():
    return _ds(TRAIN)


@pytest.fixture(scope="module")
def dev():
    return _ds(DEV)


# --------------------------------------------------------------------------------------------
# 1. Event order inside a Trainer run
# --------------------------------------------------------------------------------------------

class Recorder(TrainerCallback):
    """Records every event it sees with the files present under ``<output_dir>/pairdots`` then."""

    def __init__(self):
        self.events: list[tuple[str, int, set[str]]] = []

    def _record(self, name, args, state):
        folder = Path(args.output_dir) / "pairdots"
        files = {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()
        self.events.append((name, state.global_step, files))

    def __getattribute__(self, name):
        if name.startswith("on_"):
            return lambda args, state, control, **kwargs: self._record(name, args, state)
        return super().__getattribute__(name)

    def names(self):
        return [name for name, _, _ in self.events]

    def at(self, name):
        return [(step, files) for n, step, files in self.events if n == name]


def _trainer(tok, train, dev, out, callbacks, **kw):
    args = TrainingArguments(**{"output_dir": str(out), "num_train_epochs": 2, "learning_rate": 1e-3,
                                "per_device_train_batch_size": 4, "per_device_eval_batch_size": 4, "use_cpu": True,
                                "eval_strategy": "epoch", "save_strategy": "no", "report_to": [],
                                "disable_tqdm": True, "seed": 0, **kw})
    return Trainer(model=tiny_bert(), args=args, train_dataset=tokenize_dataset(train, tok, 16),
                   eval_dataset=tokenize_dataset(dev, tok, 16), data_collator=DataCollatorWithPadding(tok),
                   processing_class=tok, callbacks=callbacks)


def test_runs_at_train_end_only_by_default(tok, train, dev, tmp_path):
    before, after = Recorder(), Recorder()
    callback = PairDotsCallback(dev, train_dataset=train, args=_args(max_queries=2))
    trainer = _trainer(tok, train, dev, tmp_path, [before, callback, after])
    trainer.train()
    assert before.names() == after.names() and after.names()[-1] == "on_train_end"
    evaluations = after.at("on_evaluate")
    assert [step for step, _ in evaluations] == [2, 4]  # 8 examples, batch 4, 2 epochs
    for recorder in (before, after):  # nothing written during training or after an evaluation
        assert all(not files for name, _, files in recorder.events if name != "on_train_end")
    [(_, seen_before)] = before.at("on_train_end")
    [(_, seen_after)] = after.at("on_train_end")
    assert seen_before == set()  # the callback registered later has not run yet
    assert OUTPUTS <= seen_after and not any(f.startswith("step-") for f in seen_after)
    assert sorted(r["query_index"] for r in _records(tmp_path / "pairdots")) == [0, 1]
    meta = json.loads((tmp_path / "pairdots" / META_NAME).read_text())
    assert meta["global_step"] == 4 and meta["queries"] == 2


def test_on_evaluate_and_registration_order(tok, train, dev, tmp_path):
    """on_evaluate=True explains after each evaluation into step-<N>; a callback registered
    after PairDots sees those files at the same event; the order of registration does not
    change the explanations."""
    runs = {}
    for order in ("recorder_first", "recorder_last"):
        recorder = Recorder()
        callback = PairDotsCallback(dev, train_dataset=train, args=_args(max_queries=2), on_evaluate=True)
        callbacks = [recorder, callback] if order == "recorder_first" else [callback, recorder]
        _trainer(tok, train, dev, tmp_path / order, callbacks).train()
        runs[order] = recorder
    for order, recorder in runs.items():
        for step, files in recorder.at("on_evaluate"):
            ran = f"step-{step}/{JSONL_NAME}" in files
            assert ran == (order == "recorder_last"), (order, step, sorted(files))
        [(_, files)] = recorder.at("on_train_end")
        assert (JSONL_NAME in files) == (order == "recorder_last")
    a, b = tmp_path / "recorder_first" / "pairdots", tmp_path / "recorder_last" / "pairdots"
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    for sub in ("step-2", "step-4", "."):
        assert OUTPUTS <= {p.name for p in (a / sub).iterdir()}, sub
        ra, rb = _records(a / sub), _records(b / sub)
        assert _top(ra) == _top(rb) and len(ra) == 2, sub
        assert _influences(ra) == pytest.approx(_influences(rb), rel=1e-5)
    assert json.loads((a / "step-2" / META_NAME).read_text())["global_step"] == 2


class LogRecorder(TrainerCallback):
    """Records the logs of every ``on_log`` and where ``on_train_end`` fell among them, as a
    ``report_to`` integration sees them (TensorBoard writes each scalar of ``logs`` in ``on_log``
    and closes its writer in ``on_train_end``)."""

    def __init__(self):
        self.events: list[tuple[str, dict | None]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("on_log", dict(logs)))

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append(("on_train_end", None))


SUMMARY_KEYS = ("queries", "skipped", "mean_top1_influence", "seconds")


def test_attached_summary_reaches_every_on_log_before_train_end(tok, train, dev, tmp_path):
    recorder = LogRecorder()
    trainer = _trainer(tok, train, dev, tmp_path, [recorder])  # registered before PairDots
    callback = PairDotsCallback.attach(trainer, dev, train_dataset=train, args=_args(max_queries=2))
    assert callback.trainer is trainer and trainer.callback_handler.callbacks[0] is callback
    assert sum(isinstance(c, PairDotsCallback) for c in trainer.callback_handler.callbacks) == 1
    trainer.train()
    meta = json.loads((tmp_path / "pairdots" / META_NAME).read_text())
    expected = {"pairdots/" + k: meta[k] for k in SUMMARY_KEYS}
    assert meta["queries"] == 2 and meta["skipped"] == 0 and meta["mean_top1_influence"] != 0
    assert callback.last_summary == {k: meta[k] for k in SUMMARY_KEYS}
    names = [name for name, _ in recorder.events]
    hits = [i for i, (name, logs) in enumerate(recorder.events) if name == "on_log" and "pairdots/queries" in logs]
    assert len(hits) == 1 and hits[0] < names.index("on_train_end") == len(names) - 1
    logged = recorder.events[hits[0]][1]
    assert {k: v for k, v in logged.items() if k.startswith("pairdots/")} == expected
    assert logged["epoch"] == 2.0  # added by Trainer.log, as for the Trainer's own logs
    # Trainer.log appended it to the history once, with the step; nothing else did.
    entries = [e for e in trainer.state.log_history if any(k.startswith("pairdots/") for k in e)]
    assert entries == [{**expected, "epoch": 2.0, "step": 4}]


def test_plain_callback_summary_goes_to_log_history_only(tok, train, dev, tmp_path):
    """Without attach: no Trainer handle, so no on_log; the summary is in log_history once, and
    an unset mean (nothing explained: unlabelled rows are never misclassified) is left out
    rather than logged as None."""
    recorder = LogRecorder()
    unlabelled = datasets.Dataset.from_dict({"text": [t for t, _ in DEV]})
    callback = PairDotsCallback(unlabelled, train_dataset=train, args=_args(queries="misclassified"))
    trainer = _trainer(tok, train, dev, tmp_path, [recorder, callback], eval_strategy="no")
    trainer.train()
    assert callback.trainer is None and callback.last_summary["mean_top1_influence"] is None
    assert not any("pairdots/queries" in logs for name, logs in recorder.events if name == "on_log")
    [entry] = [e for e in trainer.state.log_history if "pairdots/queries" in e]
    meta = json.loads((tmp_path / "pairdots" / META_NAME).read_text())
    assert meta["queries"] == 0 and meta["mean_top1_influence"] is None
    assert entry == {"pairdots/queries": 0, "pairdots/skipped": 0, "pairdots/seconds": meta["seconds"], "step": 4}


def test_attach_falls_back_to_the_trainers_train_dataset_with_text(tok, train, dev, tmp_path):
    """Bound, the callback finds the training texts on ``trainer.train_dataset`` (the Trainer's
    dataloader drops the ``text`` column, so a plain callback could not)."""
    trainer = _trainer(tok, train, dev, tmp_path, [], eval_strategy="no")
    trainer.train_dataset = train.map(lambda b: tok(b["text"], truncation=True, max_length=16), batched=True)
    PairDotsCallback.attach(trainer, dev, args=_args(max_queries=1, top_k=len(TRAIN)))
    trainer.train()
    assert json.loads((tmp_path / "pairdots" / META_NAME).read_text())["train_size"] == len(TRAIN)
    [record] = _records(tmp_path / "pairdots")
    assert sorted((t["train_index"], t["text"]) for t in record["labels"][0]["top_train"]) == [
        (i, text) for i, (text, _) in enumerate(TRAIN)]


def test_attach_rejects_a_non_trainer(dev):
    with pytest.raises(TypeError, match="expected a transformers.Trainer"):
        PairDotsCallback.attach(object(), dev)


# --------------------------------------------------------------------------------------------
# 2. SIGKILL and resume
# --------------------------------------------------------------------------------------------

WORKER = r'''
import json, sys, time
import datasets
from hf_pairdots import report
from hf_pairdots.arguments import ExplainArguments
from hf_pairdots.callback import explain_dataset
from hf_pairdots.models import load_tokenizer, tiny_bert

spec = json.loads(open(sys.argv[1]).read())
append = report.ExplanationStore.append

def slow_append(self, record):  # keeps the kill window open between two records
    append(self, record)
    time.sleep(spec["pause"])

report.ExplanationStore.append = slow_append
explain_dataset(tiny_bert(), load_tokenizer(), datasets.Dataset.from_dict(spec["train"]),
                datasets.Dataset.from_dict(spec["dev"]), ExplainArguments.from_dict(spec["args"]), spec["out"],
                chunk_size=1)
'''


def _complete_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_sigkill_then_resume_matches_uninterrupted_run(tok, tmp_path):
    args = _args()
    rows = {"train": {"text": [t for t, _ in TRAIN], "label": [y for _, y in TRAIN]},
            "dev": {"text": [t for t, _ in DEV], "label": [y for _, y in DEV]}}
    out = tmp_path / "killed"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({**rows, "args": args.to_dict(), "out": str(out), "pause": 0.5}))
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    proc = subprocess.Popen([sys.executable, str(script), str(spec)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    try:
        while _complete_lines(out / JSONL_NAME) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the worker wrote no record in 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _complete_lines(out / JSONL_NAME)
    assert 1 <= done < len(DEV), "the kill must land before the end for the resume to mean anything"
    # The kill can also land inside an append: leave a torn last line, as such a kill would.
    with open(out / JSONL_NAME, "ab") as f:
        f.write(b'{"query_index": 3, "text": "dull ac')

    summary = explain_dataset(tiny_bert(), tok, _ds(TRAIN), _ds(DEV), args, out, chunk_size=1)
    reference = tmp_path / "reference"
    explain_dataset(tiny_bert(), tok, _ds(TRAIN), _ds(DEV), args, reference, chunk_size=1)

    assert summary["queries"] == len(DEV)
    resumed = _records(out)  # every line parses
    counts = Counter(r["query_index"] for r in resumed)
    assert counts == Counter(range(len(DEV))), counts  # each query exactly once
    expected = sorted(_records(reference), key=lambda r: r["query_index"])
    resumed.sort(key=lambda r: r["query_index"])
    assert _top(resumed) == _top(expected)
    assert _influences(resumed) == pytest.approx(_influences(expected), rel=1e-4)
    for a, b in zip(resumed, expected):
        assert a["probabilities"] == pytest.approx(b["probabilities"], rel=1e-5)
    assert [r["query_index"] for r in ExplanationStore(out).records()] == list(range(len(DEV)))
    assert sorted(datasets.load_from_disk(str(out / "explanations"))["query_index"]) == list(range(len(DEV)))
    assert _leftovers(out) == []
    assert OUTPUTS <= {p.name for p in out.iterdir()}


# --------------------------------------------------------------------------------------------
# 3. Bad query rows
# --------------------------------------------------------------------------------------------

def test_unlabelled_queries_explain_the_predicted_label_only(tok, train, tmp_path):
    dev = datasets.Dataset.from_dict({"text": [t for t, _ in DEV[:2]]})
    summary = explain_dataset(tiny_bert(), tok, train, dev, _args(), tmp_path)
    assert summary["queries"] == 2
    for record in _records(tmp_path):
        assert record["gold"] is None and record["gold_name"] is None
        assert [e["role"] for e in record["labels"]] == ["predicted"]
        assert record["labels"][0]["label"] == record["predicted"]
    assert (tmp_path / REPORT_NAME).is_file()


def test_unlabelled_queries_have_no_misclassified_rows(tok, train, tmp_path):
    """Documented in explain_dataset: without labels nothing can be misclassified."""
    dev = datasets.Dataset.from_dict({"text": [t for t, _ in DEV]})
    summary = explain_dataset(tiny_bert(), tok, train, dev, _args(queries="misclassified"), tmp_path)
    assert summary["queries"] == 0 and summary["skipped"] == 0
    assert _records(tmp_path) == []
    assert "No misclassified examples" in (tmp_path / REPORT_NAME).read_text()
    assert json.loads((tmp_path / META_NAME).read_text())["queries"] == 0


def test_bad_labels_and_empty_texts_are_skipped_with_a_reason(tok, train, tmp_path):
    long_text = " ".join(["the", "movie", "was", "fine", "and", "the", "plot"] * 6)  # 42 words, 1 piece each
    dev = datasets.Dataset.from_dict({"text": ["a good story", "bad plot", "", "  \t ", "fine film", long_text],
                                      "label": [1, 5, 0, 1, -1, 0]})  # plain ints: 5 and -1 are possible
    long_train = _ds(TRAIN + [(long_text, 1)])
    args = _args(top_k=len(long_train))  # every training example is in the top-k, the long one too
    summary = explain_dataset(tiny_bert(), tok, long_train, dev, args, tmp_path)
    assert summary["queries"] == 2 and summary["skipped"] == 4
    reasons = {row["index"]: row["reason"] for row in json.loads((tmp_path / META_NAME).read_text())["skipped_rows"]}
    assert set(reasons) == {1, 2, 3, 4}
    assert "label 5 outside the model's 2 labels" in reasons[1] and "label -1" in reasons[4]
    assert "empty" in reasons[2] and "empty" in reasons[3]
    records = {r["query_index"]: r for r in _records(tmp_path)}
    assert set(records) == {0, 5}
    assert records[0]["truncated_words"] == 0
    record = records[5]
    kept = len(long_text.split()) - record["truncated_words"]
    assert record["words"] == long_text.split() and record["truncated_words"] > 0 and kept == 14  # 16 - CLS - SEP
    for entry in record["labels"]:
        assert all(s is not None for s in entry["saliency"][:kept])
        assert all(s is None for s in entry["saliency"][kept:])
        assert entry["salient_word"] < kept
        [long_entry] = [t for t in entry["top_train"] if t["train_index"] == len(TRAIN)]
        assert all(s is None for s in long_entry["word_influence"][kept:])
        assert long_entry["responsible_word"] < kept
    assert f"{record['truncated_words']} word(s) past the model's max length" in (tmp_path / REPORT_NAME).read_text()


class OneHotClassifier(nn.Module):
    """Token ids -> one-hot (mod 16) -> mean -> Linear: no embedding block, no nn.Embedding, and
    get_input_embeddings() returns None."""

    def __init__(self):
        super().__init__()
        self.config = BertConfig(num_labels=2, hidden_size=8)
        self.proj = nn.Linear(16, 2)

    def get_input_embeddings(self):
        return None

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None):
        one_hot = nn.functional.one_hot(input_ids % 16, 16).float()
        return SequenceClassifierOutput(logits=self.proj(one_hot.mean(1)))


def test_model_without_embeddings_raises_one_clear_error(tok, train, dev, tmp_path):
    with pytest.raises(SaliencyError, match="saliency is impossible"):
        explain_dataset(OneHotClassifier(), tok, train, dev, _args(params="all"), tmp_path)
    assert not (tmp_path / JSONL_NAME).exists() or _records(tmp_path) == []


# --------------------------------------------------------------------------------------------
# 4-5. bf16 weights, gradient checkpointing
# --------------------------------------------------------------------------------------------

def test_bf16_model_explained_in_float32_on_a_copy(tok, train, dev, tmp_path):
    model = tiny_bert().to(torch.bfloat16).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    explain_dataset(model, tok, train, dev, _args(), tmp_path / "bf16")
    assert model.training
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    records = _records(tmp_path / "bf16")
    assert len(records) == len(DEV) and all(math.isfinite(x) for r in records for x in _floats(r))
    # The same as explaining an explicit float32 copy of the bf16 weights.
    explain_dataset(copy.deepcopy(model).float(), tok, train, dev, _args(), tmp_path / "f32")
    reference = _records(tmp_path / "f32")
    assert _top(records) == _top(reference)
    assert _influences(records) == pytest.approx(_influences(reference), rel=1e-6)


def _frozen_embeddings_model():
    model = tiny_bert()
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    return model


@pytest.mark.filterwarnings("ignore::FutureWarning")  # gradient_checkpointing_enable is a deprecated alias
@pytest.mark.parametrize("reentrant", [False, True])
def test_C13_gradient_checkpointing_saliency_unchanged(tok, reentrant):
    texts, labels = ["a fine film about nothing", "the plot was bad"], [1, 0]
    plain = _frozen_embeddings_model()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    checkpointed.eval()
    for target in ("prob", "margin"):
        expected = saliency(plain, tok, texts, labels, target=target, max_length=16)
        with suspend_input_require_grads(checkpointed):
            got = saliency(checkpointed, tok, texts, labels, target=target, max_length=16)
        for e, g in zip(expected, got):
            assert torch.allclose(torch.tensor(g.scores), torch.tensor(e.scores), rtol=1e-5, atol=1e-12)
    # The hook that transformers put on the input embeddings is back afterwards.
    assert len(checkpointed.bert.embeddings.word_embeddings._forward_hooks) == 1


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_C13_saliency_on_a_checkpointed_model_without_help(tok):
    plain = _frozen_embeddings_model()
    model = copy.deepcopy(plain)
    model.gradient_checkpointing_enable()
    got = saliency(model.eval(), tok, ["a fine film"], [1], max_length=16)[0].scores
    expected = saliency(plain.eval(), tok, ["a fine film"], [1], max_length=16)[0].scores
    assert torch.allclose(torch.tensor(got), torch.tensor(expected), rtol=1e-5, atol=1e-12)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_C13_explain_dataset_with_gradient_checkpointing(tok, train, dev, tmp_path):
    plain = _frozen_embeddings_model()
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable()
    checkpointed.train()  # as a Trainer leaves it
    # θ_S = every trainable parameter: the HVPs and JVPs run through all (checkpointed) layers.
    # damping above -λ_min (Lanczos: -0.03); 0.01 left H + λI indefinite, which is refused
    args = _args(params="all", solver=SolverOptions(damping=0.1, scale=100.0, depth=10))
    explain_dataset(plain, tok, train, dev, args, tmp_path / "plain")
    explain_dataset(checkpointed, tok, train, dev, args, tmp_path / "checkpointed")
    a, b = _records(tmp_path / "plain"), _records(tmp_path / "checkpointed")
    assert _top(a) == _top(b)
    assert _influences(a) == pytest.approx(_influences(b), rel=1e-5)
    assert checkpointed.training and checkpointed.is_gradient_checkpointing


# --------------------------------------------------------------------------------------------
# 6. load_best_model_at_end
# --------------------------------------------------------------------------------------------

def test_load_best_model_at_end_records_which_weights_were_explained(tok, train, dev, tmp_path):
    callback = PairDotsCallback(dev, train_dataset=train, args=_args(max_queries=2))
    trainer = _trainer(tok, train, dev, tmp_path, [callback], save_strategy="epoch", load_best_model_at_end=True,
                       metric_for_best_model="eval_loss", save_only_model=True)
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert Path(best).name == "checkpoint-2"  # the dev loss of this seeded run rises in epoch 2
    folder = tmp_path / "pairdots"
    meta = json.loads((folder / META_NAME).read_text())
    assert meta["best_model_checkpoint"] == best and meta["global_step"] == trainer.state.global_step == 4
    assert "checkpoint-2" in (folder / REPORT_NAME).read_text()
    # The explained weights are the best checkpoint's, not the last step's.
    records = _records(folder)
    texts = [r["text"] for r in records]
    best_probs = predict_proba(load_classifier(best), tok, texts, max_length=16).tolist()
    last_probs = predict_proba(load_classifier(str(tmp_path / "checkpoint-4")), tok, texts, max_length=16).tolist()
    for record, p_best, p_last in zip(records, best_probs, last_probs):
        assert record["probabilities"] == pytest.approx(p_best, abs=1e-6)
        assert record["probabilities"] != pytest.approx(p_last, abs=1e-4)


# --------------------------------------------------------------------------------------------
# 7. pairdots explain, post hoc
# --------------------------------------------------------------------------------------------

def test_cli_explain_writes_the_callback_outputs(tok, tmp_path, capsys):
    data = tmp_path / "sst"
    data.mkdir()
    for suffix, rows in (("train", TRAIN), ("dev", DEV), ("test", DEV[:2])):
        (data / f"stsa.binary.{suffix}").write_text("".join(f"{y} {t}\n" for t, y in rows), encoding="utf-8")
    model_dir = tmp_path / "model"
    tiny_bert().save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    out = tmp_path / "out"
    assert cli_main(["explain", str(model_dir), "--data", str(data), "--split", "validation", "--out", str(out),
                     "--max-length", "16", "--depth", "30", "--top-k", "2", "--max-queries", "2",
                     "--queries", "all"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["queries"] == 2
    assert {p.name for p in out.iterdir()} == OUTPUTS
    records = _records(out)
    assert [r["query_index"] for r in records] == [0, 1]
    assert [r["text"] for r in records] == [t for t, _ in DEV[:2]]
    assert all(len(e["top_train"]) == 2 for r in records for e in r["labels"])
    assert sorted(datasets.load_from_disk(str(out / "explanations"))["query_index"]) == [0, 1]
    assert "a good story" in (out / REPORT_NAME).read_text()
    meta = json.loads((out / META_NAME).read_text())
    assert meta["split"] == "validation" and meta["model"] == str(model_dir)
    # The same explanations as explain_dataset (the callback's code path) with the saved options.
    args = ExplainArguments.from_json(out / "explain_args.json")
    assert (args.max_length, args.top_k, args.max_queries, args.queries, args.solver.depth) == (16, 2, 2, "all", 30)
    splits = load_text_classification(data)
    direct = tmp_path / "direct"
    explain_dataset(load_classifier(str(model_dir)), load_tokenizer(str(model_dir)), splits["train"],
                    splits["validation"], args, direct)
    assert {p.name for p in direct.iterdir()} == OUTPUTS
    assert _top(_records(direct)) == _top(records)
    assert _influences(_records(direct)) == pytest.approx(_influences(records), rel=1e-5)


def test_predict_proba_runs_without_dropout_and_keeps_the_train_mode(tok):
    """A model straight out of ``Trainer.train()`` is in train mode; its accuracy used to be
    measured with dropout on (the recipe's "trainer" accuracy then depended on the global RNG).
    predict_proba now runs in eval mode, in the texts' order, and hands the model back in train mode."""
    from hf_pairdots.modeling import predict_proba
    from hf_pairdots.models import tiny_bert

    model = tiny_bert(seed=3, initializer_range=0.5, hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    texts = ["a good movie", "the plot was dull and far too long for its own good", "fun", "a bad film"]
    model.eval()
    reference = torch.cat([predict_proba(model, tok, [t], max_length=32) for t in texts])
    model.train()
    torch.manual_seed(0)
    first = predict_proba(model, tok, texts, max_length=32)
    torch.manual_seed(1)
    second = predict_proba(model, tok, texts, max_length=32)
    assert model.training
    assert torch.allclose(first, reference, atol=1e-6) and torch.equal(first, second)
    assert float((reference[:, 1] - reference[:, 1].mean()).abs().max()) > 1e-3  # the texts differ


def test_c41_no_training_text_fails_before_the_first_step(tok, train, dev, tmp_path):
    """C41: the Trainer's train dataset is tokenized (no ``text`` column left) and none is
    given: one error naming the fix at train begin, before any training step."""
    trainer = _trainer(tok, train, dev, tmp_path, [], eval_strategy="no")
    PairDotsCallback.attach(trainer, dev, args=_args(max_queries=1))
    with pytest.raises(ValueError, match="has no 'text' column; pass train_dataset="):
        trainer.train()
    assert trainer.state.global_step == 0
