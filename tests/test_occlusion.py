"""Occlusion saliency (``saliency_mode="occlusion"``): s(x_t) = S_y(x) - S_y(x̃_t), by hand for each
eraser; its measurement gradient ∇θ S_y(x) - ∇θ S_y(x̃_t) against finite differences on both loss
routes; Eq. 5 through the Explainer against a float64 closed form on the classifier."""

import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.erasure import eraser_token, erased_inputs
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, make_train_loss
from hf_pairdots.measurement import SaliencyMeasurement, measurement_gradients
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import saliency, text_saliency
from hf_pairdots.text import EncodedText

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
TEXT = "the acting was antidisestablishmentarianism but good"  # word 3: 8 word pieces


@pytest.fixture(scope="module")
def model():
    return tiny_bert(initializer_range=0.2)


def _prob(model, label, **inputs):
    with torch.no_grad():
        return model(**inputs).logits.softmax(-1)[0, label]


def _by_hand(model, tok, text, label, eraser):
    """S_y(x) - S_y(x̃_t) per word, every piece of word t replaced (or zeroed) at its own position."""
    enc = tok(text.split(), is_split_into_words=True, return_tensors="pt")
    word_ids = enc.word_ids(0)
    base = _prob(model, label, **enc)
    out = []
    for t in range(len(text.split())):
        pieces = [p for p, w in enumerate(word_ids) if w == t]
        if eraser == "zero":
            emb = model.get_input_embeddings()(enc["input_ids"]).detach().clone()
            emb[0, pieces] = 0.0
            erased = _prob(model, label, inputs_embeds=emb, attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"])
        else:
            ids = enc["input_ids"].clone()
            ids[0, pieces] = tok.convert_tokens_to_ids(tok.unk_token if eraser == "unk" else tok.mask_token)
            erased = _prob(model, label, input_ids=ids, attention_mask=enc["attention_mask"],
                           token_type_ids=enc["token_type_ids"])
        out.append(float(base - erased))
    return out, float(base)


@pytest.mark.parametrize("eraser", ["unk", "mask", "zero"])
def test_occlusion_saliency_by_hand(model, tok, eraser):
    """Each word's score is the drop of the label probability when all its pieces (8 for word 3)
    are erased; text_saliency and saliency agree; the probability is reported beside it."""
    for label in (0, 1):
        want, prob = _by_hand(model, tok, TEXT, label, eraser)
        [got] = saliency(model, tok, [TEXT], [label], mode="occlusion", eraser=eraser)
        assert got.mode == "occlusion" and got.probability == pytest.approx(prob, abs=1e-6)
        assert got.scores == pytest.approx(want, abs=1e-6)
        assert max(abs(w) for w in want) > 1e-3
        [again] = text_saliency(model, EncodedText.encode(tok, TEXT), [label], mode="occlusion", eraser=eraser)
        assert again.scores == pytest.approx(got.scores, abs=1e-7)
    # binary softmax: the two labels' drops are opposite
    zero, one = saliency(model, tok, [TEXT, TEXT], [0, 1], mode="occlusion", eraser=eraser)
    assert [a + b for a, b in zip(zero.scores, one.scores)] == pytest.approx([0.0] * 6, abs=1e-6)


def test_occlusion_truncated_words_and_missing_erasers(model, tok):
    """A word past max_length is not scored (None); erasing a word with no token, or with a token
    the tokenizer lacks, is refused by name before any pass."""
    [sal] = saliency(model, tok, [TEXT], [1], mode="occlusion", max_length=6)  # [CLS] + 4 words' pieces...
    encoded = EncodedText.encode(tok, TEXT, 6)
    assert [s is not None for s in sal.scores] == [w in encoded.scored for w in range(6)]
    assert sal.scores[5] is None
    with pytest.raises(ValueError, match=r"words \[5\] have no token"):
        erased_inputs(model, encoded, [5])
    with pytest.raises(ValueError, match=r"eraser='unk'.*\['mask', 'zero'\]"):
        eraser_token(SimpleNamespace(unk_token=None, mask_token="[MASK]"), "unk")
    no_mask = copy.deepcopy(tok)
    no_mask.mask_token = None
    with pytest.raises(ValueError, match="eraser='mask'"):
        saliency(model, no_mask, [TEXT], [1], mode="occlusion", eraser="mask")


def _occlusion_value(model64, params, theta, inputs, label):
    logits = torch.func.functional_call(model64, params.unflatten(theta), args=(), kwargs=inputs).logits
    p = logits.softmax(-1)[:, label]
    return p[0] - p[1]


@pytest.mark.parametrize("preset", ["top", "head", ["bert.encoder.layer.0.*", "classifier.*"]])
@pytest.mark.parametrize("eraser", ["unk", "zero"])
def test_occlusion_measurement_gradient_equals_finite_difference(model, tok, preset, eraser):
    """∇θ m of the cached-top and full-model routes against a float64 central difference of
    m(θ) = S_y(x) - S_y(x̃_t) along random directions; m(θ₀) is the saliency score; sign -1 negates."""
    objective = make_train_loss(model, preset)
    assert isinstance(objective, FullModelLoss if isinstance(preset, list) else CachedTopLoss)
    encoded = EncodedText.encode(tok, TEXT)
    word, label = 3, 1
    grad = measurement_gradients(objective, encoded, [SaliencyMeasurement(label, word, "occlusion", eraser=eraser),
                                                      SaliencyMeasurement(label, word, "occlusion", sign=-1.0,
                                                                          eraser=eraser)])
    assert torch.equal(grad[1], -grad[0])
    model64 = copy.deepcopy(model).double()
    params = select_parameters(model64, objective.params.names)
    inputs = erased_inputs(model64, encoded, [word], eraser)
    if eraser == "zero":
        inputs["inputs_embeds"] = inputs["inputs_embeds"].double()
    theta = torch.cat([t.detach().reshape(-1) for t in params.tensors])
    [sal] = text_saliency(model, encoded, [label], mode="occlusion", eraser=eraser)
    assert float(_occlusion_value(model64, params, theta, inputs, label).detach()) == pytest.approx(sal.scores[word], abs=1e-6)
    for seed in range(2):
        d = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        d /= d.norm()
        eps = 1e-3
        fd = float((_occlusion_value(model64, params, theta + eps * d, inputs, label)
                    - _occlusion_value(model64, params, theta - eps * d, inputs, label)) / (2 * eps))
        assert abs(fd) > 1e-4
        assert float(grad[0].double() @ d) == pytest.approx(fd, rel=1e-3)


TRAIN = ["a good film", "a bad film", "great acting here", "dull and slow", "good fun overall", "slow and long",
         "fun but long", "a great good story"]
TRAIN_LABELS = [1, 0, 1, 0, 1, 0, 0, 1]
DAMPING = 0.05


def test_explainer_influence_of_occlusion_equals_the_explicit_hessian(tok):
    """Eq. 5 with m = S_y(x) - S_y(x̃_t): every record influence (top_k = n, classifier, exact
    solver, λ = 0.05) equals -∇θL(z_i)ᵀ (H + λI)⁻¹ ∇θ m in float64 on the pooled features, for both
    explained labels; the record's saliency is the occlusion's."""
    model = tiny_bert(vocab_size=30522, initializer_range=0.2)
    args = ExplainArguments(queries="all", params="classifier", top_k=len(TRAIN), max_length=32, ranking="raw",
                            saliency_mode="occlusion", solver=SolverOptions(solver="exact", damping=DAMPING))
    explainer = Explainer(model, tok, TRAIN, TRAIN_LABELS, args)
    text = "a good film but slow"
    [record] = explainer.explain([Query(0, text, 1)])  # predicted 0: both labels explained
    ref = copy.deepcopy(model).double()

    def pooled(texts):
        with torch.no_grad():
            return ref.bert(**tok(texts, padding=True, return_tensors="pt")).pooler_output

    x, y = pooled(TRAIN), torch.tensor(TRAIN_LABELS)
    theta = torch.cat([ref.classifier.weight.detach().reshape(-1), ref.classifier.bias.detach()])

    def logits(t, features):
        return features @ t[:64].view(2, 32).T + t[64:]

    losses = lambda t: F.cross_entropy(logits(t, x), y, reduction="none")  # noqa: E731
    hessian = torch.func.hessian(lambda t: losses(t).mean())(theta) + DAMPING * torch.eye(66, dtype=F64)
    grads = torch.func.jacrev(losses)(theta)
    assert len(record.labels) == 2
    for entry in record.labels:
        words = text.split()
        erased = " ".join(words[:entry.salient_word] + [tok.unk_token] + words[entry.salient_word + 1:])
        pair = pooled([text, erased])
        m = lambda t: (logits(t, pair).softmax(-1)[:, entry.label] * torch.tensor([1.0, -1.0], dtype=F64)).sum()  # noqa: E731
        want = -(grads @ torch.linalg.solve(hessian, torch.func.grad(m)(theta)))
        got = torch.zeros(len(TRAIN), dtype=F64)
        for t in entry.top_train:
            got[t.train_index] = t.influence
        scale = float(want.abs().max())
        assert scale > 1e-8
        assert torch.allclose(got, want, rtol=0, atol=2e-4 * scale), (got, want)
        [sal] = saliency(model, tok, [text], [entry.label], mode="occlusion")
        assert entry.saliency == pytest.approx(sal.scores, abs=1e-6)
