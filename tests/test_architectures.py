"""The architecture matrix: tiny random classifiers of 14 architectures with tokenizers of their
real kind (``tests/architectures.py``; nothing downloaded). For each one: the token ids equal
the plain ``tokenizer(text)`` ids and word spans are exact substrings; the layout finds the
whole classification head; saliency equals a finite difference of S_y along the embedding
block's output; the Explainer with the default parameters covers the head and gives finite
scores. docs/architectures.md states the matrix."""

from __future__ import annotations

import functools

import pytest
import torch

from architectures import ARCHITECTURES, BYTE_BPE, model, tokenizer
from hf_pairdots.autograd import select_parameters
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
    class Slow:  # a tokenizer without offsets whose pre-split ids differ from the raw text's
        is_fast, model_max_length, all_special_ids = False, 64, []

        def __call__(self, texts, is_split_into_words=False, **kwargs):
            rows = [[1, 2] if is_split_into_words else [3] for _ in texts]
            return {"input_ids": torch.tensor(rows)}

    with pytest.raises(TokenizationError, match="add_prefix_space=True"):
        word_encoding(Slow(), ["a b"], 8)


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
    net = tiny("gpt2")
    compiled = torch.compile(net)  # not run: only its `_orig_mod.` names matter
    assert any(n.startswith("_orig_mod.") for n, _ in compiled.named_parameters())
    for preset in ("auto", "head", "top", "last:1"):
        eager, wrapped = select_parameters(net, preset), select_parameters(compiled, preset)
        assert wrapped.names == eager.names and all(a is b for a, b in zip(wrapped.tensors, eager.tensors))


def test_albert_layer_presets_refused_clearly():
    with pytest.raises(UnsupportedModelError, match="ALBERT shares one layer group"):
        select_parameters(tiny("albert"), "last:1")
