"""Influence runs in float32 whatever the caller's numerical context.

A caller's ``torch.autocast`` region (a mixed-precision evaluation loop, a bf16 script) used to
reach saliency, ∇θ m, the HVPs and the scores: on this tiny BERT under CPU bf16 the influence
scores moved by 1.3 % and the saliencies by 0.7 %, silently. Every public entry point that
touches the model (:func:`~hf_pairdots.saliency.saliency`, :func:`~hf_pairdots.modeling.predict_proba`,
:class:`~hf_pairdots.explain.Explainer`, :func:`~hf_pairdots.callback.explain_dataset` through
:func:`~hf_pairdots.modeling.influence_mode`) now leaves the region for its work, gives the
float32 numbers, and hands the region back to the caller unchanged.
"""

import json

import datasets
import pytest
import torch

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.callback import explain_dataset
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.modeling import autocast_disabled, influence_mode, predict_proba
from hf_pairdots.models import tiny_bert
from hf_pairdots.records import as_explanation
from hf_pairdots.saliency import saliency

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TRAIN = ["a good movie", "a bad movie", "great fun", "boring and slow", "the plot was great", "awful acting",
         "a lovely film", "a dull story", "fun and warm", "a terrible mess", "the best scene", "the worst scene"]
LABELS = [1, 0] * 6
TEXTS = ["a good fun movie", "a bad dull plot", "the scene was warm"]
ARGS = ExplainArguments(queries="all", top_k=3, max_length=16, batch_size=4, solver=SolverOptions(solver="cg"))


@pytest.fixture(scope="module")
def model():
    return tiny_bert(initializer_range=0.1, seed=1)


def bf16_region():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _numbers(records) -> torch.Tensor:
    """Every number of the records that the model's precision reaches, in one float64 vector."""
    values = []
    for record in map(as_explanation, records):  # typed records or their JSON lines
        values += record.probabilities
        for entry in record.labels:
            values += [entry.probability] + [s for s in entry.saliency if s is not None]
            for top in entry.top_train:
                values += [top.influence] + [s for s in top.word_influence if s is not None]
    return torch.tensor(values, dtype=torch.float64)


def _assert_same(mixed: torch.Tensor, plain: torch.Tensor):
    assert mixed.shape == plain.shape and len(plain) > 0
    assert torch.allclose(mixed, plain, rtol=1e-6, atol=1e-9), float(((mixed - plain).norm() / plain.norm()))


def test_bf16_region_changes_the_model_here(model, tok):
    """The region is not a no-op for this model: its forward pass in bf16 differs from float32."""
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        plain = model(**batch).logits
        with bf16_region():
            mixed = model(**batch).logits
    assert mixed.dtype == torch.bfloat16
    assert float((mixed.float() - plain).abs().max()) > 1e-4


def test_explainer_inside_autocast_gives_the_float32_explanations(model, tok):
    """Explainer built and run inside a bf16 region: the same tops and the same numbers
    (probabilities, saliency, Eq. 5 influence, Eq. 8 word influence) as outside it; the
    caller's region is still on, in bf16, afterwards."""
    queries = [Query(i, text, i % 2) for i, text in enumerate(TEXTS)]
    plain = Explainer(model, tok, TRAIN, LABELS, ARGS).explain(queries)
    with bf16_region():
        mixed = Explainer(model, tok, TRAIN, LABELS, ARGS).explain(queries)
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    tops = [[t.train_index for t in e.top_train] for r in plain for e in r.labels]
    assert [[t.train_index for t in e.top_train] for r in mixed for e in r.labels] == tops
    _assert_same(_numbers(mixed), _numbers(plain))


def test_saliency_and_predict_proba_inside_autocast_are_float32(model, tok):
    plain = saliency(model, tok, TEXTS, [1, 0, 1])
    probs = predict_proba(model, tok, TEXTS)
    with bf16_region():
        mixed = saliency(model, tok, TEXTS, [1, 0, 1])
        mixed_probs = predict_proba(model, tok, TEXTS)
    assert mixed_probs.dtype == torch.float32
    _assert_same(mixed_probs, probs)
    for a, b in zip(mixed, plain):
        assert a.words == b.words
        _assert_same(torch.tensor([a.probability, *a.scores], dtype=torch.float64),
                     torch.tensor([b.probability, *b.scores], dtype=torch.float64))


def test_explain_dataset_inside_autocast_writes_the_float32_records(model, tok, tmp_path):
    train = datasets.Dataset.from_dict({"text": TRAIN, "label": LABELS})
    queries = datasets.Dataset.from_dict({"text": TEXTS, "label": [1, 0, 1]})
    explain_dataset(model, tok, train, queries, ARGS, tmp_path / "plain")
    with bf16_region():
        explain_dataset(model, tok, train, queries, ARGS, tmp_path / "mixed")

    def records(name):
        return [json.loads(line) for line in (tmp_path / name / "explanations.jsonl").read_text().splitlines()]

    plain, mixed = records("plain"), records("mixed")
    assert len(plain) == 3
    _assert_same(_numbers(mixed), _numbers(plain))


def test_autocast_disabled_leaves_the_region_and_restores_it(model):
    """Inside: autocast off and float32 matmuls; outside again: the caller's bf16 region, also
    through influence_mode and as a decorator."""
    a = torch.randn(4, 4)

    @autocast_disabled()
    def product():
        return a @ a

    with bf16_region():
        assert (a @ a).dtype == torch.bfloat16
        with autocast_disabled():
            assert not torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.float32
        with influence_mode(model):
            assert not torch.is_autocast_enabled("cpu")
        assert product().dtype == torch.float32
        assert torch.is_autocast_enabled("cpu") and (a @ a).dtype == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
