"""The measurement layer: a text tokenised once (EncodedText) and read by saliency, ∇θ m, Eq. 8
and the record; measurement objects turned into ∇θ m rows by one function; one definition of
each saliency reduction; a query of the pipeline tokenised once and predicted once.

Every value is checked against the route it replaces (bit for bit where the arithmetic is the
same) or against a hand reading of the MiniLM WordPiece tokenizer.
"""

import datasets
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.pipeline import encode_queries, explain_dataset
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.loss import make_train_loss, prepare_data
from hf_pairdots.measurement import (FunctionMeasurement, LossMeasurement, SaliencyMeasurement,
                                     loss_measurement_gradient, measurement_gradients,
                                     saliency_measurement_gradient)
from hf_pairdots.modeling import predict_encoded, predict_proba
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import saliency, saliency_direction, text_saliency, token_saliency
from hf_pairdots.text import NO_TOKEN_TEXT, EncodedText, encode_words, pad_encoded

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXT = "the unbelievably dull film"
TRAIN = [("a good film", 1), ("a bad film", 0), ("the plot was fine", 1), ("awful acting here", 0),
         ("a great story", 1), ("boring scene again", 0)]


def bert(seed=0):
    return tiny_bert(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, seed=seed).eval()


def test_encoded_text_by_hand(tok):
    """[CLS] the un ##bel ##ie ##va ##bly dull film [SEP]: word 1 has positions 2-6."""
    e = EncodedText.encode(tok, TEXT, max_length=16)
    assert e.words == TEXT.split() and e.scored == [0, 1, 2, 3] and e.truncated == 0
    assert e.positions(0) == [1] and e.positions(1) == [2, 3, 4, 5, 6] and e.positions(3) == [8]
    cut = EncodedText.encode(tok, TEXT, max_length=9)  # [CLS] + 7 pieces + [SEP]: "dull" is the last word in
    assert cut.scored == [0, 1, 2] and cut.truncated == 1 and cut.positions(3) == []
    enc, _, [truncated] = encode_words(tok, [TEXT], 9)
    assert torch.equal(cut.encoding["input_ids"], enc["input_ids"]) and truncated == cut.truncated


def test_encode_many_equals_encode_and_pads_like_the_tokenizer(tok):
    texts = [TEXT, "a good film", "fine"]
    many = EncodedText.encode_many(tok, texts, max_length=16)
    for text, e in zip(texts, many):
        alone = EncodedText.encode(tok, text, max_length=16)
        assert e.word_ids == alone.word_ids and e.scored == alone.scored
        assert all(torch.equal(e.encoding[k], alone.encoding[k]) for k in alone.encoding)
    together, _, _ = encode_words(tok, texts, 16)
    padded = pad_encoded(tok, many)
    assert set(padded) == set(together) and all(torch.equal(padded[k], together[k]) for k in together)
    with pytest.raises(ValueError, match="text 1 is empty"):
        EncodedText.encode_many(tok, ["good", "  "], max_length=16)


def test_predict_encoded_equals_predict_proba(tok):
    model, texts = bert(), [TEXT, "a good film", "fine", "the plot was fine and the acting too"]
    want = predict_proba(model, tok, texts, batch_size=2, max_length=16)
    got = predict_encoded(model, tok, EncodedText.encode_many(tok, texts, 16), batch_size=2)
    assert torch.equal(got, want)


def test_text_saliency_equals_saliency(tok):
    model = bert()
    e = EncodedText.encode(tok, TEXT, max_length=16)
    for mode in ("gradient", "grad_x_input", "l2"):
        want = saliency(model, tok, [TEXT, TEXT], [1, 0], mode=mode, target="margin", max_length=16)
        got = text_saliency(model, e, [1, 0], mode=mode, target="margin")
        assert [g.scores for g in got] == [w.scores for w in want]
        assert [g.probability for g in got] == [w.probability for w in want]


def test_one_definition_of_each_reduction():
    grad, emb = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    assert torch.equal(token_saliency(grad, emb, "gradient"), grad.sum(-1))
    assert torch.equal(token_saliency(grad, emb, "grad_x_input"), (grad * emb).sum(-1))
    assert torch.equal(token_saliency(grad, emb, "l2"), grad.norm(dim=-1))
    assert torch.equal(saliency_direction("grad_x_input", emb), emb)
    with pytest.raises(ValueError, match="no saliency direction"):
        saliency_direction("l2", emb)
    with pytest.raises(ValueError, match="use one of"):
        saliency_direction("sum", emb)


@pytest.mark.parametrize("params", ["head", "all"])
def test_measurement_gradients_equal_the_routes_they_choose(tok, params):
    """Saliency rows (cached JVP route for "head", double backward for "all") equal the general
    double-backward gradient; sign -1 negates; loss and function rows equal their direct gradients."""
    model = bert()
    objective = make_train_loss(model, params)
    e = EncodedText.encode(tok, TEXT, max_length=16)
    rows = [SaliencyMeasurement(1, 1), SaliencyMeasurement(0, 2, mode="grad_x_input", sign=-1.0),
            LossMeasurement(0), FunctionMeasurement(lambda theta: (theta ** 2).sum())]
    got = measurement_gradients(objective, e, rows)
    want = [saliency_measurement_gradient(model, objective.params, e.inputs(), 1, e.positions(1)),
            -saliency_measurement_gradient(model, objective.params, e.inputs(), 0, e.positions(2), mode="grad_x_input")]
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-9)
    batch = objective.prepare({**e.inputs(), "labels": torch.tensor([0])})
    assert torch.equal(got[2], loss_measurement_gradient(objective, batch)[0])
    assert torch.equal(got[3], 2 * objective.theta)
    assert got[0].abs().sum() > 0 and got[2].abs().sum() > 0


def test_measurement_of_a_word_without_token_is_refused(tok):
    objective = make_train_loss(bert(), "head")
    cut = EncodedText.encode(tok, TEXT, max_length=9)
    with pytest.raises(ValueError, match="word 3 .'film'. has no token"):
        measurement_gradients(objective, cut, [SaliencyMeasurement(1, 3)])
    with pytest.raises(ValueError, match="no measurement"):
        measurement_gradients(objective, cut, [])


def test_encode_queries_reasons(tok):
    encoded, unscorable = encode_queries(tok, ["a good film", "  ", "\u200b", "fine"], 16)
    assert sorted(encoded) == [0, 3] and unscorable == {1: "empty or whitespace-only text", 2: NO_TOKEN_TEXT}


class CountingTokenizer:
    """Counts the tokenizer calls and model forward passes that see one text."""

    def __init__(self, tok, model, text, monkeypatch):
        self.text, self.calls, self.forwards = text, 0, 0
        self.ids = tok(text)["input_ids"]
        original = PreTrainedTokenizerBase.__call__

        def call(tokenizer, text=None, *args, **kwargs):
            items = text if isinstance(text, (list, tuple)) else [text]
            self.calls += sum(" ".join(t) == self.text if isinstance(t, (list, tuple)) else t == self.text
                              for t in items)
            return original(tokenizer, text, *args, **kwargs)

        monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", call)
        model.bert.embeddings.register_forward_pre_hook(self._forward, with_kwargs=True)

    def _forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and any(row[:len(self.ids)] == self.ids for row in ids.tolist()):
            self.forwards += 1


def test_pipeline_tokenises_and_predicts_a_query_once(tok, tmp_path, monkeypatch):
    """explain_dataset: query selection encodes and predicts every dev text once; the Explainer
    reuses both (one saliency pass and one ∇θ m pass for its two labels). One encoding is two
    tokenizer calls (the pre-split words and the raw text, compared: ``word_encoding``). Before:
    7 encodings and 4 forward passes of this sentence."""
    model = bert()
    counter = CountingTokenizer(tok, model, TEXT, monkeypatch)
    train = datasets.Dataset.from_dict({"text": [t for t, _ in TRAIN], "label": [y for _, y in TRAIN]})
    dev = datasets.Dataset.from_dict({"text": [TEXT, "a good story"], "label": [1, 1]})
    args = ExplainArguments(queries="all", top_k=3, max_length=16, solver=SolverOptions(solver="exact", damping=1.0))
    explain_dataset(model, tok, train, dev, args, tmp_path / "run")
    assert (counter.calls, counter.forwards) == (2, 3)


def test_query_probabilities_are_not_predicted_again(tok, monkeypatch):
    model = bert()
    explainer = Explainer(model, tok, [t for t, _ in TRAIN], [y for _, y in TRAIN],
                          ExplainArguments(top_k=2, max_length=16, solver=SolverOptions(solver="exact", damping=1.0)))
    plain = explainer.explain([Query(0, TEXT, 1)])[0]
    encoded = EncodedText.encode(tok, TEXT, 16)
    probs = predict_encoded(model, tok, [encoded])[0]
    counter = CountingTokenizer(tok, model, TEXT, monkeypatch)
    given = explainer.explain([Query(0, TEXT, 1, encoded, probs)])[0]
    assert (counter.calls, counter.forwards) == (0, 2)  # saliency and ∇θ m only
    assert given == plain
