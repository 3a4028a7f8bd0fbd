"""Embedding-gradient saliency (Sec. 3.1, Eq. 1-2) of :mod:`hf_pairdots.saliency`.

Finite differences of the label probability are the reference: at the embedding block's output
(the encoder's input, where e_t lives), s(x_t) = Σ_j ∂S_y/∂e_t,j is the derivative of S_y along
the all-ones direction of row t, and grad x input is the derivative along e_t itself.
Cases: C14, C16, C17, C18, C20.
"""

import pytest
import torch
from torch import nn
from transformers import BertConfig

from hf_pairdots.errors import SaliencyError
from hf_pairdots.modeling import eval_eager_mode, find_embedding_block, model_inputs
from hf_pairdots.models import load_classifier, tiny_bert
from hf_pairdots.saliency import embedding_gradient, saliency, token_saliency, word_scores
from hf_pairdots.text import encode_words

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
TEXTS = [
    "i loved it !",
    "a terrible , boring film",
    "the plot was good but the acting was bad",
    "antidisestablishmentarianism ruined a wonderful evening",
]
RARE = "antidisestablishmentarianism"  # 8 word pieces with the MiniLM WordPiece vocabulary


@pytest.fixture(scope="module")
def model64():
    """Tiny BERT in float64; initializer_range 0.2 so that scores are far from round-off
    (with the default 0.02 the random network is almost constant in its input)."""
    return tiny_bert(initializer_range=0.2).double()


def _prob(model, enc, label, module, edit):
    """S_y in float64 with ``edit(output)`` applied to ``module``'s output by a forward hook."""
    handle = module.register_forward_hook(lambda mod, inputs, out: edit(out))
    try:
        with torch.no_grad():
            logits = model(**model_inputs(dict(enc))).logits
    finally:
        handle.remove()
    return logits.double().softmax(-1)[:, label]


def _fd(model, enc, label, module, rows, direction, eps=1e-5):
    """Central difference of S_y along ``direction(out)`` restricted to token ``rows``."""
    def edit(sign):
        def apply(out):
            out = out.clone()
            out[:, rows] = out[:, rows] + sign * eps * direction(out[:, rows])
            return out
        return apply
    return (_prob(model, enc, label, module, edit(1)) - _prob(model, enc, label, module, edit(-1))) / (2 * eps)


def _pieces(enc, i, word):
    return [p for p, w in enumerate(enc.word_ids(i)) if w == word]


# --------------------------------------------------------------------------------------------
# Saliency == finite differences of the label probability (Eq. 2)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", [0, 1])
def test_gradient_mode_equals_fd_along_ones_at_embedding_block(model64, tok, label):
    """mode='gradient': word score = d S_y / d c with c·1 added to every piece of the word at the
    embedding block's output (a word's score is the sum of its pieces' scores)."""
    block = find_embedding_block(model64)
    assert block is model64.bert.embeddings
    results = saliency(model64, tok, TEXTS, [label] * len(TEXTS))
    enc, _, _ = encode_words(tok, TEXTS)
    checked = 0
    for i, ws in enumerate(results):
        for w, score in enumerate(ws.scores):
            fd = _fd(model64, enc, label, block, _pieces(enc, i, w), torch.ones_like)[i].item()
            assert score == pytest.approx(fd, rel=1e-4, abs=1e-9), (ws.words[w], score, fd)
            checked += 1
    assert checked == sum(len(t.split()) for t in TEXTS)
    assert max(abs(s) for ws in results for s in ws.scores) > 1e-3  # the comparison is not 0 == 0


def test_grad_x_input_equals_fd_along_the_embedding_itself(model64, tok):
    """mode='grad_x_input': d S_y / d ε with the word's piece rows scaled by (1 + ε)."""
    block = find_embedding_block(model64)
    results = saliency(model64, tok, TEXTS, [1] * len(TEXTS), mode="grad_x_input")
    enc, _, _ = encode_words(tok, TEXTS)
    for i, ws in enumerate(results):
        for w, score in enumerate(ws.scores):
            fd = _fd(model64, enc, 1, block, _pieces(enc, i, w), lambda rows: rows)[i].item()
            assert score == pytest.approx(fd, rel=1e-4, abs=1e-9), (ws.words[w], score, fd)


def test_probability_reported_and_binary_antisymmetry(model64, tok):
    """S_0 + S_1 = 1, so the two labels' saliencies are exact negatives; probabilities sum to 1."""
    s0 = saliency(model64, tok, TEXTS, [0] * len(TEXTS))
    s1 = saliency(model64, tok, TEXTS, [1] * len(TEXTS))
    enc, _, _ = encode_words(tok, TEXTS)
    p1 = _prob(model64, enc, 1, find_embedding_block(model64), lambda out: out)
    for a, b, p in zip(s0, s1, p1.tolist()):
        assert a.probability + b.probability == pytest.approx(1.0, abs=1e-6)
        assert b.probability == pytest.approx(p, abs=1e-6)
        assert a.scores == pytest.approx([-s for s in b.scores], rel=1e-5, abs=1e-8)  # float32 S_y


# --------------------------------------------------------------------------------------------
# Where e_t lives: the default is not degenerate; the raw word-embedding lookup is
# --------------------------------------------------------------------------------------------

def test_default_is_not_degenerate_but_raw_word_embedding_sum_is_zero(model64, tok):
    """Documented pitfall: BERT's embedding block ends in LayerNorm, which ignores a constant
    added to all dimensions, so Σ_j ∂S_y/∂e_t,j at the *word-embedding lookup* is exactly 0.
    The default (block output) gives real, word-dependent scores."""
    text = TEXTS[2]
    enc, _, _ = encode_words(tok, [text])
    default = saliency(model64, tok, [text], [1])[0].scores
    assert max(abs(s) for s in default) > 1e-3
    assert len({round(s, 8) for s in default}) == len(default)  # scores differ between words

    lookup = model64.bert.embeddings.word_embeddings
    for w in range(len(text.split())):
        rows = _pieces(enc, 0, w)
        at_lookup = _fd(model64, enc, 1, lookup, rows, torch.ones_like).item()
        at_block = _fd(model64, enc, 1, model64.bert.embeddings, rows, torch.ones_like).item()
        assert abs(at_lookup) < 1e-9
        assert abs(at_block) > 1e-5

    # The analytic gradient at the lookup (module_name selects it) sums to round-off, although
    # the gradient itself is not small.
    block = find_embedding_block(model64, "bert.embeddings.word_embeddings")
    assert block is lookup
    grad, emb, _ = embedding_gradient(model64, dict(enc), torch.tensor([1]), block=block)
    summed = token_saliency(grad, emb, "gradient").detach()
    norms = token_saliency(grad, emb, "l2").detach()
    assert float(norms.max()) > 1e-3
    assert float(summed.abs().max()) < 1e-6 * float(norms.max())


# --------------------------------------------------------------------------------------------
# C16: signed modes are signed; l2 is a magnitude
# --------------------------------------------------------------------------------------------

def test_C16_signed_modes_return_both_signs_l2_nonnegative(model64, tok):
    labels = [1] * len(TEXTS)
    for mode in ("gradient", "grad_x_input"):
        scores = [s for ws in saliency(model64, tok, TEXTS, labels, mode=mode) for s in ws.scores]
        assert min(scores) < -1e-4 and max(scores) > 1e-4, mode  # never an absolute value
    l2 = saliency(model64, tok, TEXTS, labels, mode="l2")
    grad = saliency(model64, tok, TEXTS, labels, mode="gradient")
    for a, g in zip(l2, grad):
        assert all(s >= 0 for s in a.scores)
        # |Σ_j g_j| ≤ sqrt(H) ||g||₂ for each piece, hence for the word sums.
        assert all(abs(gs) <= 32 ** 0.5 * ls + 1e-12 for gs, ls in zip(g.scores, a.scores))
    # most_salient is the signed maximum (the paper); rank("magnitude") orders by |score|.
    ws = grad[1]
    assert ws.most_salient == max(range(len(ws.scores)), key=lambda k: ws.scores[k])
    assert ws.rank("magnitude")[0] == max(range(len(ws.scores)), key=lambda k: abs(ws.scores[k]))
    with pytest.raises(ValueError, match="mode"):
        saliency(model64, tok, TEXTS[:1], [1], mode="abs")
    with pytest.raises(ValueError, match="target"):
        saliency(model64, tok, TEXTS[:1], [1], target="softmax")


# --------------------------------------------------------------------------------------------
# C17 / C18: special tokens never scored; words = text.split(); pieces summed
# --------------------------------------------------------------------------------------------

def test_C17_C18_special_tokens_and_word_pieces(model64, tok):
    text = f"a {RARE} ,  mess\tof a  film,"  # irregular whitespace and punctuation glued to a word
    pieces = tok.tokenize(RARE)
    assert len(pieces) >= 3
    ws = saliency(model64, tok, [text], [1])[0]
    assert ws.words == text.split()
    assert len(ws.scores) == len(ws.words)
    assert all(s is not None for s in ws.scores)

    enc, _, _ = encode_words(tok, [text])
    with eval_eager_mode(model64):  # as saliency() runs it: eval mode, eager attention
        grad, emb, _ = embedding_gradient(model64, dict(enc), torch.tensor([1]))
    per_token = token_saliency(grad, emb, "gradient")[0].detach()
    word_ids = enc.word_ids(0)
    special = tok.get_special_tokens_mask(enc["input_ids"][0].tolist(), already_has_special_tokens=True)
    # Special positions come from the tokenizer and are exactly the positions with no word.
    assert [i for i, m in enumerate(special) if m] == [i for i, w in enumerate(word_ids) if w is None]
    assert abs(float(per_token[0])) > 1e-6  # [CLS] has a real gradient, and is still not scored
    rare = ws.words.index(RARE)
    rare_rows = _pieces(enc, 0, rare)
    assert len(rare_rows) == len(pieces)
    assert ws.scores[rare] == pytest.approx(float(per_token[rare_rows].double().sum()), rel=1e-10, abs=1e-14)
    glued = _pieces(enc, 0, ws.words.index("film,"))
    assert len(glued) == 2  # "film" + ","
    # Word scores add up to the non-special token scores: nothing from [CLS]/[SEP] leaks in.
    non_special = sum(float(per_token[i]) for i, w in enumerate(word_ids) if w is not None)
    assert sum(ws.scores) == pytest.approx(non_special, rel=1e-10, abs=1e-14)


def test_word_scores_unit():
    assert word_scores([5.0, 1.0, 2.0, 3.0, 7.0, 0.0], [None, 0, 1, 1, None, None], 3) == [1.0, 5.0, None]


# --------------------------------------------------------------------------------------------
# C20: long inputs are truncated explicitly and reported
# --------------------------------------------------------------------------------------------

def test_C20_long_text_truncated_and_reported(model64, tok):
    vocab = ["good", "bad", "film", "plot", "actor", RARE, "dull", "bright"]
    words = [vocab[i % len(vocab)] for i in range(2000)]
    text = " ".join(words)
    enc, split, truncated = encode_words(tok, [text], max_length=64)
    assert enc["input_ids"].shape == (1, 64)
    kept = len({w for w in enc.word_ids(0) if w is not None})
    assert truncated == [2000 - kept] and 2000 - kept > 1900
    ws = saliency(model64, tok, [text], [0], max_length=64)[0]
    assert ws.words == split[0] and len(ws.scores) == 2000
    scored = [s is not None for s in ws.scores]
    assert scored == [True] * kept + [False] * (2000 - kept)  # a prefix is scored, the rest None
    assert ws.scores.count(None) == truncated[0]
    # The tiny model has 128 positions (< the tokenizer's 512): the default length follows the
    # model, so the same call without max_length does not crash either.
    ws_default = saliency(model64, tok, [text], [0])[0]
    assert sum(s is not None for s in ws_default.scores) > kept
    assert ws_default.scores[:kept - 1] != ws.scores[:kept - 1]  # other context, other scores


# --------------------------------------------------------------------------------------------
# C14 and input validation
# --------------------------------------------------------------------------------------------

class _NoEmbeddings(nn.Module):
    """A classifier reading one-hot inputs through a Linear: no embedding block, no
    nn.Embedding, and get_input_embeddings() returns None."""

    def __init__(self):
        super().__init__()
        self.config = BertConfig(num_labels=2, hidden_size=8)
        self.proj = nn.Linear(16, 2)

    def get_input_embeddings(self):
        return None

    def forward(self, input_ids=None, **kwargs):
        raise AssertionError("saliency must fail before running the model")


class _OnlyEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.table = nn.Embedding(10, 4)

    def get_input_embeddings(self):
        return None


def test_C14_no_embedding_layer_raises_clear_error(tok):
    model = _NoEmbeddings()
    with pytest.raises(SaliencyError, match="saliency is impossible") as info:
        find_embedding_block(model)
    assert "_NoEmbeddings" in str(info.value)
    with pytest.raises(SaliencyError, match="saliency is impossible"):
        saliency(model, tok, ["a fine film"], [1])
    # Fallback order: the first nn.Embedding when the accessor returns None.
    other = _OnlyEmbedding()
    assert find_embedding_block(other) is other.table


def test_empty_text_and_unknown_label_raise_value_error(model64, tok):
    for texts in (["good film", ""], ["   \t "]):
        with pytest.raises(ValueError, match="empty"):
            saliency(model64, tok, texts, [1] * len(texts))
    for bad in (2, -1):
        with pytest.raises(ValueError, match=rf"\[{bad}\].*2 labels"):
            saliency(model64, tok, ["good film"], [bad])


# --------------------------------------------------------------------------------------------
# The real packaged MiniLM
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_packaged_minilm_default_saliency_not_degenerate(tok):
    """The real all-MiniLM-L6-v2 (with a seeded new head): the default saliency is far from
    round-off and distinguishes the words; the two labels' scores are exact negatives."""
    torch.manual_seed(0)
    model = load_classifier(None, label_names=["negative", "positive"])
    pos, neg = saliency(model, tok, ["i loved it !"] * 2, [1, 0])
    assert pos.words == ["i", "loved", "it", "!"]
    assert max(abs(s) for s in pos.scores) > 1e-6
    assert max(pos.scores) - min(pos.scores) > 1e-6
    assert pos.scores == pytest.approx([-s for s in neg.scores], rel=1e-4, abs=1e-9)
    assert 0.0 < pos.probability < 1.0
