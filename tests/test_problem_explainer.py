"""Regression and multi-label heads through the Explainer, the pipeline and the PairDotsCallback
(:mod:`hf_pairdots.problem`): saliency against finite differences, Eq. 5 against an explicit
float64 Hessian on the classifier, query selection by hand, records and reports end to end,
and bad input refused before any work."""

import copy
import json
import math

import datasets
import pytest
import torch
import torch.nn.functional as F
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import PairDotsCallback
from hf_pairdots.errors import UnsupportedModelError
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.models import tiny_bert
from hf_pairdots.pipeline import explain_dataset, select_queries
from hf_pairdots.problem import explained_outputs, regression_errors
from hf_pairdots.records import Explanation
from hf_pairdots.report import JSONL_NAME, REPORT_NAME
from hf_pairdots.saliency import saliency
from hf_pairdots.text import EncodedText
from hf_pairdots.training import tokenize_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REGRESSION, MULTI = "regression", "multi_label_classification"
TEXTS = ["a good film", "a bad film", "great acting here", "dull and slow", "good fun overall",
         "slow and long", "fun but long", "a great good story"]
TARGETS = [1.0, -1.0, 1.5, -1.2, 2.0, -2.0, 0.3, 2.5]
MULTI_HOT = [[1, 0, 0], [0, 0, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0], [0, 0, 1], [0, 1, 1], [1, 0, 0]]
DAMPING = 0.05


def _model(kind, k, seed=0):
    model = tiny_bert(num_labels=k, vocab_size=30522, seed=seed)
    model.config.problem_type = kind
    return model.eval()


def _score(kind, logits, y):
    """S_y of the head: the predicted value (regression) or sigmoid(logit_y) (multi-label)."""
    return logits[:, y] if kind == REGRESSION else torch.sigmoid(logits[:, y])


def _added_to_embeddings(model):
    """A forward hook on the embedding block adding ``state["delta"]`` to its output."""
    state = {"delta": None}

    def hook(module, args, output):
        return output if state["delta"] is None else output + state["delta"]
    return state, model.bert.embeddings.register_forward_hook(hook)


@pytest.mark.parametrize("kind, k, y", [(REGRESSION, 1, 0), (MULTI, 3, 2)])
def test_saliency_equals_a_finite_difference_of_the_score(tok, kind, k, y):
    """s(x_t) = Σ_j ∂S_y/∂e_t,j for the regression value and a multi-label sigmoid, against a
    float64 central difference of S_y along the all-ones direction on word t's tokens."""
    model = _model(kind, k)
    text = "a good film about slow acting"
    [sal] = saliency(model, tok, [text], [y])
    encoded = EncodedText.encode(tok, text, 32)
    reference = copy.deepcopy(model).double()
    inputs = {key: t for key, t in tok([text], return_tensors="pt").items()}
    state, handle = _added_to_embeddings(reference)
    eps, want = 1e-4, []
    try:
        with torch.no_grad():
            length = inputs["input_ids"].shape[1]
            for word in range(len(encoded.words)):
                d = torch.zeros(1, length, 32, dtype=torch.float64)
                d[0, encoded.positions(word)] = 1.0
                state["delta"] = eps * d
                up = _score(kind, reference(**inputs).logits, y)
                state["delta"] = -eps * d
                down = _score(kind, reference(**inputs).logits, y)
                want.append(float((up - down) / (2 * eps)))
    finally:
        handle.remove()
    with torch.no_grad():
        value = _score(kind, model(**inputs).logits, y).item()
    assert sal.probability == pytest.approx(value, rel=1e-5)  # S itself: the value, or the sigmoid
    scale = max(map(abs, want))
    assert scale > 1e-6
    assert sal.scores == pytest.approx(want, abs=1e-3 * scale)


def _closed_form_influence(model, tok, kind, train_labels, query_text, y, word):
    """I(z_i, m) = -∇θ mᵀ (H + λI)⁻¹ ∇θ L(z_i) over θ = classifier (W, b), in float64 from the
    pooled features: H by torch.func.hessian of the mean loss (MSE or BCE averaged over labels),
    m = S_y'(z_y) W_y·u with u = J_pooled(e) d (d: ones on the salient word's tokens)."""
    ref = copy.deepcopy(model).double()
    k = model.config.num_labels
    with torch.no_grad():
        x = ref.bert(**tok(TEXTS, padding=True, return_tensors="pt")).pooler_output
    query = tok([query_text], return_tensors="pt")
    positions = EncodedText.encode(tok, query_text, 32).positions(word)
    state, handle = _added_to_embeddings(ref)
    d = torch.zeros(1, query["input_ids"].shape[1], 32, dtype=torch.float64)
    d[0, positions] = 1.0

    def pooled(step):
        state["delta"] = step * d
        return ref.bert(**query).pooler_output[0]
    try:
        x_q, u = torch.autograd.functional.jvp(pooled, torch.zeros((), dtype=torch.float64),
                                               torch.ones((), dtype=torch.float64))
    finally:
        handle.remove()
    targets = torch.tensor(train_labels, dtype=torch.float64).reshape(len(TEXTS), k)

    def split(theta):
        return theta[:k * 32].view(k, 32), theta[k * 32:]

    def losses(theta):
        w, b = split(theta)
        z = x @ w.T + b
        if kind == REGRESSION:
            return (z - targets).square().mean(-1)
        return F.binary_cross_entropy_with_logits(z, targets, reduction="none").mean(-1)

    def measurement(theta):
        w, b = split(theta)
        z = x_q @ w[y] + b[y]
        slope = 1.0 if kind == REGRESSION else torch.sigmoid(z) * (1 - torch.sigmoid(z))
        return slope * (w[y] @ u)

    theta = torch.cat([ref.classifier.weight.detach().reshape(-1), ref.classifier.bias.detach()])
    hessian = torch.func.hessian(lambda t: losses(t).mean())(theta) + DAMPING * torch.eye(len(theta), dtype=theta.dtype)
    grads = torch.func.jacrev(losses)(theta)  # (n, P)
    s_test = torch.linalg.solve(hessian, torch.func.grad(measurement)(theta))
    return -(grads @ s_test)


@pytest.mark.parametrize("kind, k, labels", [(REGRESSION, 1, TARGETS), (MULTI, 3, MULTI_HOT)])
def test_explainer_influence_equals_the_explicit_hessian(tok, kind, k, labels):
    """Every Eq. 5 influence of the records (all 8 training examples, top_k = n, params =
    "classifier", exact solver, λ = 0.05) equals the float64 closed form on the pooled features."""
    model = _model(kind, k)
    args = ExplainArguments(queries="all", params="classifier", top_k=len(TEXTS), max_length=32, ranking="raw",
                            saliency_mode="gradient",  # the closed form differentiates the gradient saliency
                            solver=SolverOptions(solver="exact", damping=DAMPING))
    explainer = Explainer(model, tok, TEXTS, labels, args)
    assert explainer.objective.params.names == ("classifier.weight", "classifier.bias")
    text = "a good film but slow"
    with torch.no_grad():
        scores = model(**tok([text], return_tensors="pt")).logits[0]
    gold = 0.5 if kind == REGRESSION else [int(torch.sigmoid(s) < 0.5) if y != 1 else int(torch.sigmoid(s) >= 0.5)
                                           for y, s in enumerate(scores)]  # labels 0 and 2 wrong
    [record] = explainer.explain([Query(0, text, gold)])
    assert record.problem_type == kind
    if kind == REGRESSION:
        assert [e.label for e in record.labels] == [0] and record.predicted == pytest.approx(float(scores[0]), rel=1e-5)
        assert record.labels[0].probability == pytest.approx(float(scores[0]), rel=1e-5)  # S = f(x)
    else:
        on = torch.sigmoid(scores) >= 0.5
        assert [e.label for e in record.labels] == [0, 2]
        assert [e.role for e in record.labels] == ["predicted" if on[y] else "gold" for y in (0, 2)]
        assert record.predicted == on.int().tolist()
    for entry in record.labels:
        want = _closed_form_influence(model, tok, kind, labels, text, entry.label, entry.salient_word)
        got = torch.zeros(len(TEXTS), dtype=torch.float64)
        for t in entry.top_train:
            got[t.train_index] = t.influence
        assert sorted(t.train_index for t in entry.top_train) == list(range(len(TEXTS)))
        scale = float(want.abs().max())
        assert scale > 1e-8
        assert torch.allclose(got, want, rtol=0, atol=2e-4 * scale), (got, want)


def test_regression_errors_and_multi_label_rows_by_hand():
    """|error| > RMSE (here 1.806) selects rows 1 and 3, the largest first under max_queries;
    multi-label rows: one per wrong label, predicted labels for a correct or unlabelled row."""
    values = torch.zeros(5)
    golds = [0.1, -2.0, 0.2, 3.0, None]
    assert regression_errors(values, golds, [0, 1, 2, 3], None) == [1, 3]
    assert regression_errors(values, golds, [0, 1, 2, 3], 1) == [3]
    args = ExplainArguments(max_queries=None)
    queries, skipped = select_queries(["a", "b", "c", "d", "e"], golds, values[:, None], args, {}, kind=REGRESSION)
    assert [q.index for q in queries] == [1, 3] and skipped == []
    _, skipped = select_queries(["a", "b"], [float("nan"), 1.0], torch.zeros(2, 1), args, {}, kind=REGRESSION)
    assert skipped == [{"index": 0, "reason": "target nan is not a finite number"}]
    probs = torch.tensor([0.9, 0.2, 0.6])
    roles = ("predicted", "gold")
    assert explained_outputs(MULTI, probs, [0, 1, 1], roles) == {0: "predicted", 1: "gold"}
    assert explained_outputs(MULTI, probs, [0, 1, 1], ("gold",)) == {1: "gold"}
    assert explained_outputs(MULTI, probs, [1, 0, 1], roles) == {0: "predicted", 2: "predicted"}  # correct
    assert explained_outputs(MULTI, torch.tensor([0.1, 0.3]), None, roles) == {1: "predicted"}  # none on
    queries, skipped = select_queries(["a", "b", "c"], [[1, 0, 1], [0, 0, 1], [1, 1]], torch.stack([probs] * 3),
                                      args, {}, kind=MULTI)
    assert [q.index for q in queries] == [1]
    assert skipped[0]["index"] == 2 and "not a multi-hot row" in skipped[0]["reason"]


def test_records_round_trip_and_name_no_class_for_regression(tok):
    model = _model(REGRESSION, 1)
    args = ExplainArguments(queries="all", params="classifier", top_k=2, max_length=32)
    [record] = Explainer(model, tok, TEXTS, TARGETS, args).explain([Query(3, "a good film", 1.25)])
    data = record.to_dict()
    assert list(data)[:5] == ["query_index", "text", "problem_type", "gold", "predicted"]
    assert not {"gold_name", "predicted_name", "probabilities"} & set(data)
    assert set(data["labels"][0]) == {"role", "value", "saliency", "salient_word", "top_train"}
    assert "label_name" not in data["labels"][0]["top_train"][0]
    assert data["labels"][0]["top_train"][0]["label"] in TARGETS
    assert Explanation.from_dict(json.loads(json.dumps(data))).to_dict() == data


def test_bad_input_refused_before_work(tok, tmp_path):
    regression = _model(REGRESSION, 1)
    with pytest.raises(ValueError, match=r"takes targets of shape \(8,\)"):
        Explainer(regression, tok, TEXTS, [[t, t] for t in TARGETS], ExplainArguments())
    with pytest.raises(UnsupportedModelError, match="num_labels=2"):
        Explainer(_model(REGRESSION, 2), tok, TEXTS, [[t, t] for t in TARGETS], ExplainArguments())
    with pytest.raises(UnsupportedModelError, match="ExplainArguments.edit='fix'"):
        Explainer(_model(MULTI, 3), tok, TEXTS, MULTI_HOT, ExplainArguments(edit="fix"))
    with pytest.raises(ValueError, match="not multi-hot"):
        Explainer(_model(MULTI, 3), tok, TEXTS, [[2, 0, 0]] * len(TEXTS), ExplainArguments())
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": TARGETS})
    with pytest.raises(UnsupportedModelError, match="suspicious"):
        explain_dataset(regression, tok, train, train, ExplainArguments(suspicious=3), tmp_path / "out")
    assert not (tmp_path / "out" / JSONL_NAME).exists()


# --------------------------------------------------------------------------------------------
# End to end: a Trainer with the callback
# --------------------------------------------------------------------------------------------

WORDS = {"good": (1.0, [1, 0, 0]), "fun": (0.5, [0, 1, 0]), "slow": (-1.0, [0, 0, 1]), "bad": (-1.5, [0, 0, 0])}
FILLER = ["the", "movie", "was", "a", "film", "story", "plot", "scene"]


def _rows(n, seed, kind):
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        words = [FILLER[int(i)] for i in torch.randint(len(FILLER), (3,), generator=gen)]
        cues = [list(WORDS)[int(i)] for i in torch.randint(len(WORDS), (2,), generator=gen)]
        words += cues
        if kind == REGRESSION:
            label = sum(WORDS[c][0] for c in cues)
        else:
            label = [float(max(WORDS[c][1][j] for c in cues)) for j in range(3)]
        rows.append({"text": " ".join(words), "label": label})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("kind, k", [(REGRESSION, 1), (MULTI, 3)])
def test_callback_end_to_end(tok, tmp_path, kind, k):
    """Train 40 rows for 8 epochs, explain the dev errors at train end: report written, JSON loads,
    every number finite, the records' predictions are the model's, and the errors are those of
    the documented rule (regression: |error| > RMSE; multi-label: some label wrong at 0.5)."""
    model = _model(kind, k, seed=1)
    train, dev = _rows(40, 0, kind), _rows(12, 1, kind)
    args = ExplainArguments(top_k=3, max_length=16, max_queries=None, solver=SolverOptions(depth=40))
    callback = PairDotsCallback(dev, train_dataset=train, args=args)
    training = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=8, learning_rate=3e-3,
                                 per_device_train_batch_size=8, use_cpu=True, save_strategy="no", report_to=[],
                                 disable_tqdm=True, seed=0)
    Trainer(model=model, args=training, train_dataset=tokenize_dataset(train, tok, 16),
            data_collator=DataCollatorWithPadding(tok), processing_class=tok, callbacks=[callback]).train()
    out = tmp_path / "pairdots"
    assert (out / REPORT_NAME).read_text().count('class="query"') == callback.last_summary["queries"]
    records = [json.loads(line) for line in (out / JSONL_NAME).read_text().splitlines()]
    with torch.no_grad():
        scores = model.eval()(**tok(list(dev["text"]), padding=True, return_tensors="pt")).logits
    if kind == REGRESSION:
        values = scores[:, 0]
        errors = (values - torch.tensor(dev["label"])).abs()
        want = [i for i in range(len(dev)) if errors[i] > errors.square().mean().sqrt()]
    else:
        values = torch.sigmoid(scores)
        want = [i for i in range(len(dev)) if ((values[i] >= 0.5).float() != torch.tensor(dev["label"][i])).any()]
    assert want and [r["query_index"] for r in records] == want
    for record in records:
        assert record["problem_type"] == kind
        Explanation.from_dict(record).check_finite()
        i = record["query_index"]
        for entry in record["labels"]:
            assert len(entry["top_train"]) == 3
            assert all(math.isfinite(t["influence"]) for t in entry["top_train"])
        if kind == REGRESSION:
            assert record["predicted"] == pytest.approx(float(values[i]), rel=1e-4, abs=1e-5)
            assert len(record["labels"]) == 1 and "gold_name" not in record
        else:
            assert record["probabilities"] == pytest.approx(values[i].tolist(), abs=1e-5)
            wrong = [y for y in range(k) if (values[i, y] >= 0.5) != (dev["label"][i][y] >= 0.5)]
            assert [e["label"] for e in record["labels"]] == wrong
    assert datasets.load_from_disk(str(out / "explanations")).num_rows == len(records)
