"""Influence (Sec. 3.2, Eq. 5, 7, 8) against exact retraining on a model convex in θ.

The model: fixed, seeded word embeddings E (32 ids: 0 = padding, 1 = UNK with its own fixed
embedding, 2..31 = words "w2".."w31"; dimension 5); a text is a list of ids, its feature is the
mean of its embeddings, and θ = (W, b) of a 3-class multinomial logistic regression, float64.
Per-example loss L(z; θ) = CE(W f(z) + b, y) + α/2 ||θ||², so the mean loss is strictly convex
and H (of the *mean* loss, the penalty counted once per example) is positive definite: no damping.

Measurements m(θ), three rows of one ``compute_s_test`` call (Q = 3):

* the saliency of a test token for a label, s(x_t) = Σ_j ∂S_y/∂e_t,j with S_y = softmax(W·mean(e)
  + b)_y (Sec. 3.1), computed by autograd w.r.t. the token's embedding row: a nonlinear function
  of θ, twice (two positions, two labels);
* the loss of the test example (Koh & Liang's I_up,loss).

Reference: θ_ε = argmin (1/n) Σ L(z_i) + ε Σ_k c_k L(u_k) by Newton's method in float64 to a
gradient norm < 1e-12, warm-started at θ̂, and the central difference
(m(θ_{+ε}) - m(θ_{-ε})) / 2ε with ε = 1e-3 (error O(ε²)).

What goes through the library: the :class:`~hf_pairdots.loss.TrainLoss` subclass below,
:func:`prepare_data` (with a whitespace toy tokenizer, so texts are batched, length-sorted and
padded exactly as for a transformer), :func:`compute_s_test` (exact and CG), :func:`train_influence`
(Eq. 5), :func:`perturbation_influence` (Eq. 7, the I(z̃, m) - I(z, m) of texts) and
:func:`word_influence` with ``eraser="unk"`` (Eq. 8). ∇θ m is ``torch.func.grad`` of the toy's
own m; a separate test checks that the library's :func:`saliency_measurement` computes the same
m and ∇θ m on an ``nn.Module`` version of the toy (float32 there, since the library's S_y is).
Not covered: LiSSA (see test_influence.py), the ``"zero"``/``"mask"`` erasers, cached features.
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_pairdots.arguments import SolverOptions
from hf_pairdots.autograd import ParameterSet, select_parameters
from hf_pairdots.influence import perturbation_influence, train_influence, word_influence
from hf_pairdots.loss import TrainLoss, prepare_data, tokenize
from hf_pairdots.measurement import loss_measurement_gradient, saliency_measurement, saliency_measurement_gradient
from hf_pairdots.solve import compute_s_test

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
VOCAB, DIM, K = 32, 5, 3
PAD, UNK = 0, 1
ALPHA = 0.01
EPS = 1e-3
N = 40


# --------------------------------------------------------------------------------------------
# The toy model, tokenizer and objective
# --------------------------------------------------------------------------------------------

class _Encoding(dict):
    """What ``encode_words`` reads from a tokenizer's output: a mapping of tensors and word_ids."""

    def __init__(self, data, word_ids):
        super().__init__(data)
        self._word_ids = word_ids

    def word_ids(self, i):
        return self._word_ids[i]


class ToyTokenizer:
    """Whitespace tokenizer over "w2".."w31" and "[UNK]": one id per word, no special tokens."""

    unk_token = "[UNK]"
    mask_token = None
    model_max_length = 64

    def __init__(self):
        self.vocab = {"[PAD]": PAD, "[UNK]": UNK, **{f"w{i}": i for i in range(2, VOCAB)}}

    def __call__(self, batch_words, is_split_into_words=True, truncation=True, max_length=64,
                 padding=True, return_tensors="pt", pad_to_multiple_of=None):
        ids = [[self.vocab[w] for w in words][:max_length] for words in batch_words]
        length = max(map(len, ids))
        if pad_to_multiple_of:
            length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        input_ids = torch.tensor([row + [PAD] * (length - len(row)) for row in ids])
        mask = torch.tensor([[1] * len(row) + [0] * (length - len(row)) for row in ids])
        word_ids = [list(range(len(row))) + [None] * (length - len(row)) for row in ids]
        return _Encoding({"input_ids": input_ids, "attention_mask": mask}, word_ids)


def text_of(ids):
    return " ".join("[UNK]" if i == UNK else f"w{i}" for i in ids)


def split_theta(theta):
    return theta[:K * DIM].view(K, DIM), theta[K * DIM:]


class ToyObjective(TrainLoss):
    """L(z; θ) = CE(W·mean(E[x]) + b, y) + α/2 ||θ||² over the flat θ = (W row-major, b)."""

    vectorized = True

    def __init__(self, theta, embeddings):
        param = nn.Parameter(theta.detach().clone())
        self.model = SimpleNamespace(config=SimpleNamespace(num_labels=K))  # for prepare_data's label check
        self.params = ParameterSet(("theta",), (param.shape,), (param,))
        self.theta = theta.detach().clone()  # float64 (ParameterSet.flat() would give float32)
        self.embeddings = embeddings

    def prepare(self, batch):
        mask = batch["attention_mask"].bool()
        summed = torch.where(mask[..., None], self.embeddings[batch["input_ids"]], 0.0).sum(1)
        return {"features": summed / mask.sum(1, keepdim=True), "labels": batch["labels"]}

    def per_example_loss(self, theta, batch):
        w, b = split_theta(theta)
        logits = batch["features"] @ w.T + b
        return F.cross_entropy(logits, batch["labels"], reduction="none") + 0.5 * ALPHA * (theta ** 2).sum()


def saliency_m(theta, token_embeddings, label, position):
    """s(x_t) = Σ_j ∂S_y/∂e_t,j, S_y = softmax(W·mean(e) + b)_y, by autograd w.r.t. e."""
    w, b = split_theta(theta)

    def score(e):
        return torch.softmax(w @ e.mean(0) + b, -1)[label]
    return torch.func.grad(score)(token_embeddings)[position].sum()


def newton(objective, theta, batches_coefs):
    """argmin Σ_k c_k Σ_{i in batch k} L(z_i; θ), Newton in float64 to ||∇|| < 1e-12."""
    def total(th):
        return sum(c * objective.per_example_loss(th, b).sum() for b, c in batches_coefs)
    theta = theta.clone()
    for _ in range(30):
        g = torch.func.grad(total)(theta)
        if float(g.norm()) < 1e-12:
            return theta
        theta = theta - torch.linalg.solve(torch.func.hessian(total)(theta), g)
    raise AssertionError(f"Newton did not converge: ||grad|| = {float(g.norm()):.3g}")


def pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    return pearson(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))


# --------------------------------------------------------------------------------------------
# Fixture: data, optimum, s_test for Q = 3 measurements
# --------------------------------------------------------------------------------------------

class Toy(SimpleNamespace):
    def batch(self, texts, labels):
        return self.objective.prepare(tokenize(self.tok, texts, labels, 64))

    def measurements(self, theta):
        """``(3,)``: the two test saliencies and the test loss at θ."""
        return torch.stack([
            saliency_m(theta, self.test_embeddings, self.sal_labels[0], self.sal_positions[0]),
            saliency_m(theta, self.test_embeddings, self.sal_labels[1], self.sal_positions[1]),
            self.objective.per_example_loss(theta, self.test_batch)[0],
        ])

    def retrained_slope(self, extra):
        """d m(θ_ε)/dε at 0 by a central difference, θ_ε = argmin (1/n)Σ L + ε Σ c_k L(u_k);
        ``extra`` = [(texts, labels, c), ...]."""
        batches = [(self.batch(texts, labels), c) for texts, labels, c in extra]
        out = []
        for eps in (EPS, -EPS):
            theta = newton(self.objective, self.theta, [(self.train_batch, 1.0 / N)] +
                           [(b, eps * c) for b, c in batches])
            out.append(self.measurements(theta))
        return (out[0] - out[1]) / (2 * EPS)


@pytest.fixture(scope="module")
def toy():
    gen = torch.Generator().manual_seed(0)
    embeddings = torch.randn(VOCAB, DIM, generator=gen, dtype=F64)
    embeddings[PAD] = float("nan")  # padding must never reach a feature
    teacher = 2.0 * torch.randn(K, DIM, generator=gen, dtype=F64)
    ids = [torch.randint(2, VOCAB, (int(torch.randint(2, 8, (1,), generator=gen)),), generator=gen).tolist()
           for _ in range(N)]
    feats = torch.stack([embeddings[i].mean(0) for i in ids])
    labels = torch.multinomial(torch.softmax(feats @ teacher.T, -1), 1, generator=gen)[:, 0].tolist()
    texts = [text_of(i) for i in ids]
    tok = ToyTokenizer()
    objective = ToyObjective(torch.zeros(K * DIM + K, dtype=F64), embeddings)
    t = Toy(tok=tok, objective=objective, texts=texts, labels=labels, ids=ids, embeddings=embeddings)
    t.train_batch = t.batch(texts, labels)
    t.theta = newton(objective, objective.theta, [(t.train_batch, 1.0 / N)])
    objective.theta = t.theta
    # Test example: 5 words; saliency of position 1 for the predicted label, of position 3 for another.
    test_ids = [5, 17, 9, 23, 12]
    t.test_embeddings = embeddings[test_ids]
    t.test_batch = t.batch([text_of(test_ids)], [0])
    probs = torch.softmax(t.test_batch["features"] @ split_theta(t.theta)[0].T + split_theta(t.theta)[1], -1)[0]
    predicted = int(probs.argmax())
    t.sal_labels, t.sal_positions = (predicted, (predicted + 1) % K), (1, 3)
    # The library's scoring path: length-sorted, padded batches of 16.
    t.data = prepare_data(objective, tok, texts, labels, batch_size=16)
    assert len(t.data.batches) == 3 and t.data.batches[0]["features"].shape[1] == DIM
    v = torch.stack([
        torch.func.grad(saliency_m)(t.theta, t.test_embeddings, t.sal_labels[0], t.sal_positions[0]),
        torch.func.grad(saliency_m)(t.theta, t.test_embeddings, t.sal_labels[1], t.sal_positions[1]),
        loss_measurement_gradient(objective, t.test_batch)[0],
    ])
    t.v = v
    result = compute_s_test(objective, t.data, v, SolverOptions(solver="exact", damping=0.0))
    assert max(result.relative_residual) < 1e-6
    t.s_test = result.x
    return t


def test_toy_setup(toy):
    """The optimum is one, θ̂ is not trivial, the predictions are not saturated, H ≻ 0, and the
    library's padded batches give the same losses as one batch."""
    assert float(split_theta(toy.theta)[0].norm()) > 0.5
    probs = torch.softmax(toy.train_batch["features"] @ split_theta(toy.theta)[0].T + split_theta(toy.theta)[1], -1)
    assert 0.4 < float(probs.max(-1).values.mean()) < 0.95
    hessian = torch.func.hessian(lambda th: toy.objective.mean_loss(th, toy.train_batch))(toy.theta)
    assert float(torch.linalg.eigvalsh(hessian)[0]) >= ALPHA * 0.999
    # s_test equals a float64 solve with the autograd Hessian of the mean loss.
    direct = torch.linalg.solve(hessian, toy.v.T).T
    assert float((toy.s_test - direct).norm() / direct.norm()) < 1e-5
    losses = torch.empty(N, dtype=F64)
    for b in toy.data.batches:
        losses[b["index"]] = toy.objective.per_example_loss(toy.theta, b)
    assert torch.allclose(losses, toy.objective.per_example_loss(toy.theta, toy.train_batch), rtol=1e-12)
    assert abs(float(toy.measurements(toy.theta)[0])) > 1e-3


def _check(actual, predicted, what, threshold=0.9):
    """Pearson and Spearman >= threshold per measurement, the slope ~1 (magnitude, sign, no 1/n
    lost), and the sign of every score that is not negligible. Returns the correlations."""
    stats = []
    for q in range(actual.shape[0]):
        a, p = actual[q].numpy(), predicted[q].numpy()
        r, rho = pearson(a, p), spearman(a, p)
        slope = float(np.dot(a, p) / np.dot(p, p))
        big = np.abs(p) > 1e-2 * np.abs(p).max()
        stats.append((f"1-{1 - r:.1e}", round(rho, 4), round(slope, 5)))
        assert r >= threshold and rho >= threshold, (what, q, r, rho)
        assert 0.95 < slope < 1.05, (what, q, slope)
        assert np.array_equal(np.sign(a[big]), np.sign(p[big])), (what, q)
    print(what, "(pearson, spearman, slope) per measurement:", stats)
    return stats


# --------------------------------------------------------------------------------------------
# Eq. 5 (and Eq. 4 on the test loss): up-weighting one training example
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_eq5_upweighting_matches_retraining(toy, solver):
    """I(z_i, m) = -∇θmᵀ H⁻¹ ∇θL(z_i) (train_influence) vs d m(θ_{z_i,ε})/dε from retraining,
    over all 40 training examples, for the two saliency measurements and the test loss."""
    s_test = toy.s_test
    if solver == "cg":
        result = compute_s_test(toy.objective, toy.data, toy.v, SolverOptions(solver="cg", damping=0.0, cg_tol=1e-10))
        assert float((result.x - toy.s_test).norm() / toy.s_test.norm()) < 1e-6
        s_test = result.x
    predicted = train_influence(toy.objective, toy.data, s_test)
    assert predicted.shape == (3, N) and predicted.dtype == F64
    if not hasattr(toy, "eq5_actual"):  # the retraining is solver-independent: do it once
        toy.eq5_actual = torch.stack([toy.retrained_slope([([toy.texts[i]], [toy.labels[i]], 1.0)])
                                      for i in range(N)], 1)
    actual = toy.eq5_actual
    _check(actual, predicted, f"Eq. 5 ({solver})")
    # First order in ε with a central difference: nearly exact, not only correlated.
    error = float((actual - predicted).norm() / predicted.norm())
    print(f"Eq. 5 ({solver}) relative error {error:.1e}")
    assert error < 1e-3


# --------------------------------------------------------------------------------------------
# Eq. 7: replacing z by z̃ (one token substituted)
# --------------------------------------------------------------------------------------------

def test_eq7_substitution_matches_retraining(toy):
    """I(z, z̃, m) = I(z̃, m) - I(z, m) by perturbation_influence (texts through the toy tokenizer)
    vs retraining argmin (1/n)Σ L + ε L(z̃) - ε L(z), over 20 (z, z̃) pairs: 5 training examples
    with 4 single-token substitutions each."""
    gen = torch.Generator().manual_seed(1)
    predicted, actual = [], []
    for i in (0, 7, 14, 21, 28):
        ids, text, label = toy.ids[i], toy.texts[i], toy.labels[i]
        variants = []
        for _ in range(4):
            new = list(ids)
            p = int(torch.randint(len(ids), (1,), generator=gen))
            new[p] = int(torch.randint(2, VOCAB, (1,), generator=gen))
            while new[p] == ids[p]:
                new[p] = int(torch.randint(2, VOCAB, (1,), generator=gen))
            variants.append(text_of(new))
        scores = perturbation_influence(toy.objective, toy.tok, text, label, variants, toy.s_test)
        assert scores.shape == (3, 4)
        # The same scores from train_influence rows of a PreparedData holding z and its variants.
        both = prepare_data(toy.objective, toy.tok, [text, *variants], [label] * 5, batch_size=2)
        rows = train_influence(toy.objective, both, toy.s_test)
        assert torch.allclose(scores, rows[:, 1:] - rows[:, :1], rtol=1e-10, atol=1e-12)
        predicted.append(scores)
        for variant in variants:
            actual.append(toy.retrained_slope([([variant], [label], 1.0), ([text], [label], -1.0)]))
    predicted = torch.cat(predicted, 1)
    actual = torch.stack(actual, 1)
    assert predicted.shape == actual.shape == (3, 20)
    _check(actual, predicted, "Eq. 7")
    error = float((actual - predicted).norm() / predicted.norm())
    print(f"Eq. 7 relative error {error:.1e}")
    assert error < 1e-3


# --------------------------------------------------------------------------------------------
# Eq. 8: erasing a word (UNK, a reserved id with its own fixed embedding)
# --------------------------------------------------------------------------------------------

def test_eq8_word_influence_matches_retraining(toy):
    """I(x_t, m) = I(z, m) - I(z̃(t, UNK), m) by word_influence(eraser="unk") vs retraining
    argmin (1/n)Σ L + ε L(z) - ε L(z̃(t, UNK)) (the word's presence up-weighted against its
    erasure; replacing z by z̃ changes m by about -ε I(x_t, m)), over every word of 5 examples."""
    predicted, actual = [], []
    for i in (3, 10, 17, 24, 31):
        ids, text, label = toy.ids[i], toy.texts[i], toy.labels[i]
        scores = word_influence(toy.objective, toy.tok, text, label, toy.s_test, eraser="unk")
        assert scores.shape == (3, len(ids))
        predicted.append(scores)
        for t in range(len(ids)):
            erased = text_of(ids[:t] + [UNK] + ids[t + 1:])
            actual.append(toy.retrained_slope([([text], [label], 1.0), ([erased], [label], -1.0)]))
    predicted = torch.cat(predicted, 1)
    actual = torch.stack(actual, 1)
    assert predicted.shape[1] >= 20
    _check(actual, predicted, f"Eq. 8 ({predicted.shape[1]} words)")
    error = float((actual - predicted).norm() / predicted.norm())
    print(f"Eq. 8 relative error {error:.1e}")
    assert error < 1e-3


# --------------------------------------------------------------------------------------------
# The library's saliency measurement is the m validated above
# --------------------------------------------------------------------------------------------

class ToyClassifier(nn.Module):
    """The toy as an HF-style classifier (``.embeddings`` block, ``.classifier``, ``.config``)."""

    def __init__(self, embeddings, theta):
        super().__init__()
        self.config = SimpleNamespace(num_labels=K, hidden_size=DIM)
        self.embeddings = nn.Embedding(VOCAB, DIM, padding_idx=PAD)
        self.embeddings.weight.data = torch.nan_to_num(embeddings).float()
        self.embeddings.weight.requires_grad_(False)
        self.classifier = nn.Linear(DIM, K)
        w, b = split_theta(theta)
        self.classifier.weight.data, self.classifier.bias.data = w.float().clone(), b.float().clone()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None):
        e = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        mask = attention_mask.to(e.dtype)[..., None]
        return SimpleNamespace(logits=self.classifier((e * mask).sum(1) / mask.sum(1)))


def test_library_saliency_measurement_is_the_toy_measurement(toy):
    """saliency_measurement / saliency_measurement_gradient (the Eq. 5 measurement the library
    uses for transformers) on the nn.Module toy equal the toy's m and ∇θ m (float32 tolerances)."""
    model = ToyClassifier(toy.embeddings, toy.theta).eval()
    params = select_parameters(model, "all")
    assert params.names == ("classifier.weight", "classifier.bias")
    batch = tokenize(toy.tok, [text_of([5, 17, 9, 23, 12])], [0], 64)
    for q in range(2):
        label, position = toy.sal_labels[q], toy.sal_positions[q]
        measure = saliency_measurement(model, params, batch, label, [position])
        ours = float(saliency_m(toy.theta, toy.test_embeddings, label, position))
        assert float(measure(params.flat())) == pytest.approx(ours, rel=1e-4, abs=1e-7)
        grad = saliency_measurement_gradient(model, params, batch, label, [position])
        assert float((grad.double() - toy.v[q]).norm() / toy.v[q].norm()) < 1e-4
