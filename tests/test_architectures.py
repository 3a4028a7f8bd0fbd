"""The architecture matrix: tiny random classifiers of 14 architectures with tokenizers of their
real kind (``tests/architectures.py``; nothing downloaded). For each one: the token ids equal
the plain ``tokenizer(text)`` ids and word spans are exact substrings; the layout finds the
whole classification head; saliency equals a finite difference of S_y along the embedding
block's output; the Explainer with the default parameters covers the head and gives finite
scores. docs/architectures.md states the matrix."""

from __future__ import annotations

import copy
import functools
import math
import warnings

import pytest
import torch
from transformers import BatchEncoding, PreTrainedTokenizerBase

from architectures import ARCHITECTURES, BYTE_BPE, CORPUS, model, tokenizer
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.cache import fingerprint_tokenizer
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.saliency import degenerate_gradient_sum, saliency
from hf_pairdots.errors import TokenizationError, UnsupportedModelError
from hf_pairdots.modeling import find_embedding_block
from hf_pairdots.text import WordEncoding, word_encoding, word_spans

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["The film  was great,from start to finish", "a dull movie", "Über-cool effects; naïve dialogue (sadly)"]


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_ids_equal_plain_encoding(kind):
    tok = tokenizer(kind)
    enc, words = word_encoding(tok, TEXTS, 64)
    plain = tok(TEXTS, padding=True, truncation=True, max_length=64, return_tensors="pt", return_offsets_mapping=True)
    assert torch.equal(enc["input_ids"], plain["input_ids"])
    assert torch.equal(enc["attention_mask"], plain["attention_mask"])
    for i, text in enumerate(TEXTS):
        spans = word_spans(text)
        assert [text[s:e] for s, e in spans] == words[i] == text.split()
        ids = enc.word_ids(i)
        assert sorted({w for w in ids if w is not None}) == list(range(len(words[i])))  # every word has a token
        for (s, e), w in zip(plain["offset_mapping"][i].tolist(), ids):
            chars = [c for c in range(s, e) if not text[c].isspace()]
            if w is not None and chars:  # the token's characters lie in its word's span (a lone '▁' aside)
                assert spans[w][0] <= chars[0] and chars[-1] < spans[w][1]


@pytest.mark.parametrize("kind", BYTE_BPE)
def test_c32_byte_level_bpe_mapped_by_offsets(kind):
    tok = tokenizer(kind)
    split = tok([TEXTS[0].split()], is_split_into_words=True)["input_ids"][0]
    assert split != tok(TEXTS[0])["input_ids"]  # the bug: pre-split words lose the space marker
    enc, _ = word_encoding(tok, TEXTS[:1], 64)
    assert isinstance(enc, WordEncoding)
    pieces = tok.convert_ids_to_tokens(enc["input_ids"][0])
    assert "Ġfilm" in pieces and pieces[enc.word_ids(0).index(1)] == "Ġfilm"


def test_c32_slow_tokenizer_refused():
    class Slow(PreTrainedTokenizerBase):  # no offsets, and pre-split ids that differ from the raw text's
        is_fast, all_special_ids = False, []

        def __init__(self):
            super().__init__(model_max_length=64)

        def __call__(self, texts, is_split_into_words=False, **kwargs):
            return BatchEncoding({"input_ids": [[1, 2] if is_split_into_words else [3] for _ in texts]})

    with pytest.raises(TokenizationError, match="add_prefix_space=True"):
        word_encoding(Slow(), ["a b"], 8)


PRE_LAYERNORM = ("gpt2",)  # every reader of the embedding output is a LayerNorm: Σ_j ∂S/∂e_t,j = 0

HEADS = {  # the modules of each architecture's classification head (what params="auto" covers)
    "bert": {"bert.pooler", "classifier"}, "albert": {"albert.pooler", "classifier"},
    "roberta": {"classifier"}, "xlm-roberta": {"classifier"}, "electra": {"classifier"}, "mpnet": {"classifier"},
    "distilbert": {"pre_classifier", "classifier"}, "deberta-v2": {"pooler", "classifier"},
    "modernbert": {"head", "classifier"}, "gpt2": {"score"}, "llama": {"score"}, "qwen2": {"score"},
    "mistral": {"score"}, "bart": {"classification_head"},
}


@functools.lru_cache(maxsize=None)
def tiny(kind):
    return model(kind, tokenizer(kind))


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_default_parameters_are_the_whole_head(kind):
    net = tiny(kind)
    names = set(select_parameters(net, "auto").names)
    want = {n for n, _ in net.named_parameters() if any(n.startswith(h + ".") for h in HEADS[kind])}
    assert names == want and names
    assert set(select_parameters(net, "head").names) == want
    top = set(select_parameters(net, "top").names) if kind != "albert" else want
    assert want < top or kind == "albert"


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_embedding_block_is_called_once_per_forward(kind):
    net, tok = tiny(kind), tokenizer(kind)
    block = find_embedding_block(net)
    calls = []
    handle = block.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    try:
        with torch.no_grad():
            net(**tok(["a dull movie"], return_tensors="pt"))
    finally:
        handle.remove()
    assert len(calls) == 1 and calls[0][-1] == (getattr(net.config, "embedding_size", None) or net.config.hidden_size)


def test_compiled_model_presets_resolve_to_the_eager_tensors():
    """C33: behind ``torch.compile``'s ``_orig_mod.`` prefix every preset selects the very tensors
    of the eager model: none widens."""
    net = tiny("gpt2")
    compiled = torch.compile(net)  # not run: only its `_orig_mod.` names matter
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    for preset in ("auto", "head", "top", "last:1"):
        eager, wrapped = select_parameters(net, preset), select_parameters(compiled, preset)
        assert wrapped.names == eager.names and all(a is b for a, b in zip(wrapped.tensors, eager.tensors))


def test_albert_layer_presets_refused_clearly():
    with pytest.raises(UnsupportedModelError, match="ALBERT shares one layer group"):
        select_parameters(tiny("albert"), "last:1")


def _fd_saliency(net, tok, text, label, mode, eps=1e-3):
    """s(x_t) by a central finite difference of S_y (probability) along the embedding block's
    output: e_t + h d_t with d_t = 1 (``"gradient"``) or e_t (``"grad_x_input"``), in float64."""
    net = copy.deepcopy(net).double()
    net.set_attn_implementation("eager")
    block = find_embedding_block(net)
    inputs = tok([text], return_tensors="pt")
    state = {}

    def hook(module, args, output):
        if state.get("delta") is None:
            return output
        return output + state["delta"]

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            base = net(**inputs)
            emb = {}
            h2 = block.register_forward_hook(lambda m, a, o: emb.setdefault("e", o))
            net(**inputs)
            h2.remove()
            e = emb["e"]
            out = []
            for t in range(e.shape[1]):
                d = torch.zeros_like(e)
                d[0, t] = 1.0 if mode == "gradient" else e[0, t]
                state["delta"] = eps * d
                up = net(**inputs).logits.softmax(-1)[0, label]
                state["delta"] = -eps * d
                down = net(**inputs).logits.softmax(-1)[0, label]
                state["delta"] = None
                out.append(((up - down) / (2 * eps)).item())
    finally:
        handle.remove()
    del base
    return out


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_saliency_equals_a_finite_difference(kind):
    net, tok = tiny(kind), tokenizer(kind)
    text = "the film was great from start"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        [sal] = saliency(net, tok, [text], [1])
    degenerate = [w for w in caught if "identically zero" in str(w.message)]
    assert sal.mode == ("grad_x_input" if degenerate else "gradient")
    assert bool(degenerate) == (kind in PRE_LAYERNORM)
    fd = _fd_saliency(net, tok, text, 1, sal.mode)
    enc, _ = word_encoding(tok, [text], 64)
    want = [None] * len(text.split())
    for score, w in zip(fd, enc.word_ids(0)):
        if w is not None:
            want[w] = score + (want[w] or 0.0)
    assert all(s is not None for s in sal.scores)
    scale = max(abs(x) for x in want)
    assert scale > 1e-8
    assert sal.scores == pytest.approx(want, abs=1e-3 * scale)  # float32 saliency vs a float64 difference


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_occlusion_saliency_by_hand(kind):
    """saliency_mode="occlusion" equals S_y(x) - S_y(x with the word's pieces -> the UNK token)
    from the model's own forward on the plain encoding, for every architecture (decoder tokenizers:
    UNK is their EOS / pad token, the documented choice of docs/architectures.md)."""
    net, tok = tiny(kind), tokenizer(kind)
    text = "the film was great from start"
    [sal] = saliency(net, tok, [text], [1], mode="occlusion")
    enc, _ = word_encoding(tok, [text], 64)
    eraser_id = tok.convert_tokens_to_ids(tok.unk_token)

    def prob(ids):
        with torch.no_grad():
            return float(net(**{**dict(enc), "input_ids": ids}).logits.double().softmax(-1)[0, 1])
    ids = enc["input_ids"]
    want = []
    for t in range(len(text.split())):
        erased = ids.clone()
        erased[0, [p for p, w in enumerate(enc.word_ids(0)) if w == t]] = eraser_id
        want.append(prob(ids) - prob(erased))
    assert max(abs(x) for x in want) > 1e-6
    assert sal.scores == pytest.approx(want, abs=1e-5)


def test_pre_layernorm_gradient_sum_is_round_off():
    net, tok = tiny("gpt2"), tokenizer("gpt2")
    [sal] = saliency(net, tok, ["a dull movie"], [0], mode="l2")  # no fallback for other modes
    assert sal.mode == "l2"
    from hf_pairdots.saliency import embedding_gradient

    enc, _ = word_encoding(tok, ["a dull movie"], 64)
    grad, _, _ = embedding_gradient(net, dict(enc), torch.tensor([0]))
    assert degenerate_gradient_sum(grad) and grad.norm() > 0
    bert_grad, _, _ = embedding_gradient(tiny("bert"), dict(word_encoding(tokenizer("bert"), ["a dull movie"])[0]),
                                         torch.tensor([0]))
    assert not degenerate_gradient_sum(bert_grad)


@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_explainer_default_params_cover_the_head_and_give_finite_scores(kind):
    net, tok = tiny(kind), tokenizer(kind)
    sdpa_before = net.config._attn_implementation
    half = copy.deepcopy(net).to(torch.bfloat16)  # a bf16 model: the Explainer works on a float32 copy
    args = ExplainArguments(top_k=2, max_length=32, batch_size=4, solver=SolverOptions(solver="cg"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the pre-LayerNorm fallback warning (tested above)
        explainer = Explainer(half, tok, CORPUS[:6], [0, 1, 0, 1, 0, 1], args)
        [record] = explainer.explain([Query(0, CORPUS[6], 1)])
    assert half.dtype == torch.bfloat16 and explainer.model is not half  # the user's model untouched
    assert set(explainer.objective.params.names) == {
        n for n, _ in net.named_parameters() if any(n.startswith(h + ".") for h in HEADS[kind])}
    assert half.config._attn_implementation == net.config._attn_implementation == sdpa_before
    for entry in record.labels:
        assert all(s is None or math.isfinite(s) for s in entry.saliency)
        assert entry.top_train and all(math.isfinite(t.influence) for t in entry.top_train)
        assert any(t.influence != 0 for t in entry.top_train)
        for t in entry.top_train:
            assert all(x is None or math.isfinite(x) for x in t.word_influence)
    assert math.isfinite(explainer.train_gradient_norm)


def test_cache_key_includes_the_tokenizer():
    roberta = fingerprint_tokenizer(tokenizer("roberta"))
    assert fingerprint_tokenizer(tokenizer("roberta")) == roberta  # same tokenizer, same key
    assert fingerprint_tokenizer(tokenizer("roberta", add_prefix_space=True)) != roberta
    assert fingerprint_tokenizer(tokenizer("gpt2")) != roberta  # another vocabulary and post-processor
    left = copy.deepcopy(tokenizer("roberta"))
    left.padding_side = "left"
    assert fingerprint_tokenizer(left) != roberta
    lower = fingerprint_tokenizer(tokenizer("bert"))
    cased = copy.deepcopy(tokenizer("bert"))
    cased.do_lower_case = False
    assert fingerprint_tokenizer(cased) != lower
