"""The paper's influence quantities (:mod:`hf_pairdots.influence`, Sec. 3.2, Eq. 4-8).

References used: the full-model objective for the cached top, per-example gradients for the JVP
route, finite differences for the saliency measurement (Eq. 5), leave-one-out retraining on a
convex model, and the sign of exact duplicates / label-flipped copies.
Cases: C07, C10, C12 (no n x P matrix: the JVP route), C22.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hf_pairdots import ihvp
from hf_pairdots.arguments import SolverOptions
from hf_pairdots.autograd import ParameterSet, select_parameters
from hf_pairdots.features import TopHead, compute_features
from hf_pairdots.influence import (
    erased_variants,
    example_influence,
    perturbation_influence,
    train_influence,
    word_influence,
)
from hf_pairdots.loss import (
    CachedTopLoss,
    FullModelLoss,
    PreparedData,
    TrainLoss,
    full_hvp,
    make_train_loss,
    prepare_data,
    tokenize,
)
from hf_pairdots.measurement import loss_measurement_gradient, saliency_measurement, saliency_measurement_gradient
from hf_pairdots.modeling import influence_mode, model_inputs
from hf_pairdots.models import load_tokenizer, tiny_bert
from hf_pairdots.solve import choose_solver, compute_s_test
from hf_pairdots.text import encode_words
from testing_utils import train_influence_by_gradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
TEXTS = [
    "a good movie",
    "bad film",
    "the acting was great and the plot was fun from start to end",
    "boring",
    "i hated every minute of it",
    "fine , i guess",
]
LABELS = [1, 0, 1, 0, 0, 1]


@pytest.fixture(scope="module")
def bert():
    """Untrained tiny BERT (2 layers, hidden 32), float32, eval mode."""
    return tiny_bert(initializer_range=0.1, seed=1)


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def directions(numel, q=2, seed=0):
    return torch.randn(q, numel, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# Cached top == full model
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cut", ["ffn", "pooler", "classifier"])
def test_top_head_equals_model_logits(bert, tok, cut):
    batch = tokenize(tok, TEXTS, LABELS, 64)
    seen = []  # positions entering the last feed-forward block: all L for the model, 1 for the features
    handle = bert.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        logits = bert(**model_inputs(batch)).logits
        head = TopHead(bert, cut)(compute_features(bert, batch, cut=cut))
    handle.remove()
    assert seen[0] == batch["input_ids"].shape[1] > 1 and seen[1] == 1
    assert head.shape == logits.shape == (len(TEXTS), 2)
    assert torch.allclose(head, logits, rtol=1e-5, atol=1e-6)
    assert float((logits[:, 0] - logits[:, 1]).std()) > 1e-3  # inputs matter: not a constant map


def test_full_model_objective_runs_the_last_feed_forward_on_position_0_only(bert, tok):
    """FullModelLoss's loss and gradient over all parameters equal the plain model's, though
    its last feed-forward block sees one position per example (issue #3, capability 6)."""
    objective = FullModelLoss(bert, select_parameters(bert, "all"))
    batch = objective.prepare(tokenize(tok, TEXTS, LABELS, 64))
    seen = []
    handle = bert.bert.encoder.layer[-1].intermediate.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    try:
        loss, grad = torch.func.grad_and_value(lambda th: objective.mean_loss(th, batch))(objective.theta)[::-1]
    finally:
        handle.remove()
    assert seen == [1]
    bert.zero_grad()
    plain = F.cross_entropy(bert(**model_inputs(batch)).logits, batch["labels"])
    plain.backward()
    expected = objective.params.flatten([p.grad for p in objective.params.tensors])
    bert.zero_grad()
    assert float(loss) == pytest.approx(float(plain), rel=1e-6)
    assert rel(grad, expected) < 1e-5 and float(expected.norm()) > 1e-3


@pytest.mark.parametrize("preset, cut", [("top", "ffn"), ("head", "pooler"), ("classifier", "classifier")])
def test_cached_top_objective_equals_full_model_objective(bert, tok, preset, cut):
    """Losses, HVPs (Hessian of the mean loss), directional derivatives and test gradients of
    the cached top agree with the loss through the whole model, to 1e-5; "head" caches the
    pooler's input and skips the feed-forward block."""
    params = select_parameters(bert, preset)
    cached, full = CachedTopLoss(bert, params), FullModelLoss(bert, params)
    assert cached.head.cut == cut
    assert isinstance(make_train_loss(bert, "top"), CachedTopLoss)
    assert isinstance(make_train_loss(bert, "all"), FullModelLoss)
    dc = prepare_data(cached, tok, TEXTS, LABELS, batch_size=4)
    df = prepare_data(full, tok, TEXTS, LABELS, batch_size=4)
    assert len(dc.batches) == 1 and len(df.batches) == 2  # the cached rows form one block
    lc, lf = torch.zeros(len(TEXTS)), torch.zeros(len(TEXTS))
    with torch.no_grad():
        for data, objective, losses in ((dc, cached, lc), (df, full, lf)):
            for b in data.batches:
                losses[b["index"]] = objective.per_example_loss(objective.theta, b)
    assert torch.allclose(lc, lf, rtol=1e-5, atol=1e-7) and float(lc.min()) > 0
    v = directions(params.numel, q=3)
    hc, hf = full_hvp(cached, dc)(v).detach(), full_hvp(full, df)(v).detach()
    assert float(hf.norm()) > 1e-2
    assert rel(hc, hf) < 1e-5
    ic, i_full = train_influence(cached, dc, v), train_influence(full, df, v)
    assert ic.shape == (3, len(TEXTS))
    assert rel(ic, i_full) < 1e-5
    test = tokenize(tok, ["a great plot"], [1], 64)
    gc = loss_measurement_gradient(cached, cached.prepare(test))
    gf = loss_measurement_gradient(full, full.prepare(test))
    assert gc.shape == (1, params.numel) and rel(gc, gf) < 1e-5


# --------------------------------------------------------------------------------------------
# JVP route == per-example gradient route; invariance to batching and padding
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, params", [
    ("cached", "top"), ("cached", "classifier"), ("full", "top"), ("full", "all"), ("full", "classifier"),
])
def test_C12_jvp_route_equals_per_example_gradients(bert, tok, kind, params):
    pset = select_parameters(bert, params)
    objective = (CachedTopLoss if kind == "cached" else FullModelLoss)(bert, pset)
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4)
    s = directions(pset.numel, q=2, seed=1)
    by_jvp = train_influence(objective, data, s)
    by_grad = train_influence_by_gradients(objective, data, s).detach()
    assert by_jvp.shape == (2, len(TEXTS))
    assert float(by_grad.abs().min()) > 0
    assert rel(by_jvp, by_grad) < 1e-4


@pytest.mark.parametrize("kind", ["cached", "full"])
def test_invariance_to_batch_size_and_padding(bert, tok, kind):
    top = select_parameters(bert, "top")
    objective = make_train_loss(bert, top) if kind == "cached" else FullModelLoss(bert, top)
    s = directions(objective.params.numel, q=2, seed=2)
    d1 = prepare_data(objective, tok, TEXTS, LABELS, batch_size=1)
    d5 = prepare_data(objective, tok, TEXTS, LABELS, batch_size=5)
    assert [len(b["labels"]) for b in d5.batches] == ([6] if objective.rowwise else [5, 1])
    assert rel(train_influence(objective, d5, s), train_influence(objective, d1, s)) < 1e-5
    assert rel(full_hvp(objective, d5)(s), full_hvp(objective, d1)(s)) < 1e-5  # mean, not sum
    # Padding: the short example scored alone vs in one batch with a 13-word example.
    short, long_ = TEXTS[3], TEXTS[2]
    alone = train_influence(objective, prepare_data(objective, tok, [short], [0]), s)
    together = prepare_data(objective, tok, [short, long_], [0, 1], batch_size=2)
    assert together.batches[0]["labels"].numel() == 2  # really padded together
    assert torch.allclose(train_influence(objective, together, s)[:, 0], alone[:, 0], rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------------------------
# Eq. 5: gradient of the saliency measurement
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["gradient", "grad_x_input"])
@pytest.mark.parametrize("params", ["top", "lower"])
def test_saliency_measurement_gradient_equals_finite_difference(tok, mode, params):
    """∇θ w_y(e) (double backward through the embedding gradient) vs a central difference of the
    measurement along a random unit direction in θ, evaluated on a float64 copy of the model.
    ``lower`` = the first encoder layer + embedding LayerNorm + classifier (full double backward).
    The saliency itself is computed with a float32 S_y even for a float64 model, which limits
    the finite difference to ~1e-4 relative; hence eps = 1e-2 and a 2e-3 tolerance."""
    model32 = tiny_bert(initializer_range=0.2)
    model64 = copy.deepcopy(model32).double()
    patterns = "top" if params == "top" else ["bert.encoder.layer.0.*", "bert.embeddings.LayerNorm.*", "classifier.*"]
    enc, _, _ = encode_words(tok, ["the plot was good but the acting was bad"])
    batch, positions = dict(enc), [2, 3]
    grad = saliency_measurement_gradient(model32, select_parameters(model32, patterns), batch, 1, positions, mode=mode)
    p64 = select_parameters(model64, patterns)
    assert grad.shape == (p64.numel,)
    measure = saliency_measurement(model64, p64, batch, 1, positions, mode=mode)
    theta = torch.cat([t.detach().reshape(-1) for t in p64.tensors])
    for seed in range(2):
        d = torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
        d /= d.norm()
        eps = 1e-2
        fd = float((measure(theta + eps * d) - measure(theta - eps * d)).detach() / (2 * eps))
        assert abs(fd) > 1e-3
        assert float(grad.double() @ d) == pytest.approx(fd, rel=2e-3)


@pytest.mark.parametrize("preset", ["top", "head", "classifier"])
@pytest.mark.parametrize("mode, target", [("gradient", "prob"), ("grad_x_input", "prob"), ("gradient", "margin"),
                                          ("l2", "logprob")])
def test_cached_top_saliency_gradients_equal_the_double_backward_route(tok, preset, mode, target):
    """CachedTopLoss.saliency_gradients (one Jacobian-vector product below the cut, then
    the head alone) equals the general route (double backward through the whole model) row by
    row: two labels of one text, each with its own word (two pieces, or one); "l2" falls back
    to the general route itself. The general route is checked against finite differences above."""
    model = tiny_bert(initializer_range=0.2)
    objective = make_train_loss(model, preset)
    assert isinstance(objective, CachedTopLoss)
    enc, _, _ = encode_words(tok, ["the plot was good but the acting was bad"])
    labels, positions = [1, 0], [[2, 3], [6]]
    fast = objective.saliency_gradients(dict(enc), labels, positions, mode=mode, target=target)
    general = TrainLoss.saliency_gradients(objective, dict(enc), labels, positions, mode=mode, target=target)
    assert fast.shape == (2, objective.params.numel)
    for row in range(2):
        assert float(general[row].norm()) > 1e-3
        assert rel(fast[row], general[row]) < 1e-5
    assert rel(fast[0], fast[1]) > 0.1  # the rows are different measurements


def test_cached_top_saliency_gradients_under_inference_mode_and_with_a_repeated_position(tok):
    """The cached route turns autograd back on inside a caller's inference_mode (it crashed
    there), counts a repeated position twice as the general route does, and refuses rows that
    do not pair up or a batch of two texts."""
    model = tiny_bert(initializer_range=0.2)
    objective = make_train_loss(model, "head")
    enc, _, _ = encode_words(tok, ["the plot was good but the acting was bad"])
    batch = dict(enc)
    plain = objective.saliency_gradients(batch, [1], [[2]])
    with torch.inference_mode():
        inside = objective.saliency_gradients(batch, [1], [[2]])
    assert torch.allclose(inside, plain, rtol=1e-6, atol=0) and float(plain.norm()) > 1e-3
    twice = objective.saliency_gradients(batch, [1], [[2, 2]])
    assert rel(twice, TrainLoss.saliency_gradients(objective, batch, [1], [[2, 2]])) < 1e-5
    assert rel(twice, 2 * plain) < 1e-5
    with pytest.raises(ValueError, match="2 labels and 1 position lists"):
        objective.saliency_gradients(batch, [1, 0], [[2]])
    with pytest.raises(ValueError, match="2 labels and 1 position lists"):
        TrainLoss.saliency_gradients(objective, batch, [1, 0], [[2]])
    with pytest.raises(ValueError, match="one tokenised text"):
        two, _, _ = encode_words(tok, ["a good movie", "a bad movie"])
        objective.saliency_gradients(dict(two), [1, 0], [[2], [2]])


# --------------------------------------------------------------------------------------------
# Eq. 7 and Eq. 8
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def top_objective(bert):
    return make_train_loss(bert, "top")


def test_eq7_perturbation_influence_is_a_difference(top_objective, tok):
    text, label = "a good movie with a fun plot", 1
    variants = ["a great movie with a fun plot", "a bad movie with a fun plot"]
    s = directions(top_objective.params.numel, q=3, seed=4)
    got = perturbation_influence(top_objective, tok, text, label, variants, s)
    base = example_influence(top_objective, tok, [text], [label], s)
    each = example_influence(top_objective, tok, variants, [label, label], s)
    assert got.shape == (3, 2)
    assert torch.allclose(got, each - base, rtol=1e-5, atol=1e-5)
    assert float(got.abs().min()) > 1e-6
    # example_influence of a training text equals its train_influence score.
    data = prepare_data(top_objective, tok, TEXTS, LABELS)
    assert torch.allclose(example_influence(top_objective, tok, TEXTS[:2], LABELS[:2], s),
                          train_influence(top_objective, data, s)[:, :2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("eraser", ["unk", "mask", "zero"])
def test_eq8_word_influence_shape_and_value(top_objective, tok, eraser):
    text, label = "a good movie with a fun plot", 1
    words = text.split()
    s = directions(top_objective.params.numel, q=3, seed=5)
    got = word_influence(top_objective, tok, text, label, s, eraser=eraser)
    assert got.shape == (3, len(words))
    assert torch.isfinite(got).all() and float(got.abs().min()) > 0
    if eraser != "zero":
        variants = erased_variants(tok, text, eraser)
        token = tok.unk_token if eraser == "unk" else tok.mask_token
        assert variants[1] == f"a {token} movie with a fun plot"
        base = example_influence(top_objective, tok, [text], [label], s)
        erased = example_influence(top_objective, tok, variants, [label] * len(words), s)
        # Eq. 8: I(z) - I(z̃); atol covers float32 noise of scores ~2 batched differently.
        assert torch.allclose(got, base - erased, rtol=1e-5, atol=1e-5)
    else:
        # Footnote 2: the word's word-piece vectors at the word-embedding lookup set to 0.
        enc, _, _ = encode_words(tok, [text])
        base = example_influence(top_objective, tok, [text], [label], s)
        for t in (0, 3, len(words) - 1):
            with torch.no_grad():
                emb = top_objective.model.get_input_embeddings()(enc["input_ids"]).clone()
            emb[0, [p for p, w in enumerate(enc.word_ids(0)) if w == t]] = 0.0
            erased = example_influence(top_objective, tok, [text], [label], s, inputs_embeds=emb)
            assert torch.allclose(got[:, t], (base - erased)[:, 0], rtol=1e-5, atol=1e-5)


def test_eq8_erasers_differ_and_truncated_words_score_zero(top_objective, tok):
    text, label = "a good movie with a fun plot", 1
    s = directions(top_objective.params.numel, q=1, seed=6)
    scores = {e: word_influence(top_objective, tok, text, label, s, eraser=e) for e in ("unk", "mask", "zero")}
    assert not torch.allclose(scores["unk"], scores["zero"])
    assert not torch.allclose(scores["unk"], scores["mask"])
    # max_length 6 keeps [CLS] + 4 words + [SEP]: the last 3 words are not in the input.
    cut = word_influence(top_objective, tok, text, label, s, eraser="zero", max_length=6)
    assert torch.all(cut[:, 4:] == 0) and torch.all(cut[:, :4] != 0)


def test_C22_tokenizer_without_unk_token(top_objective, tok):
    no_unk = copy.deepcopy(tok)
    no_unk.unk_token = None
    assert no_unk.unk_token is None
    with pytest.raises(ValueError, match=r"eraser='unk'.*\['mask', 'zero'\]"):
        erased_variants(no_unk, "a fine film", "unk")
    s = directions(top_objective.params.numel, q=1)
    with pytest.raises(ValueError, match="zero"):
        word_influence(top_objective, no_unk, "a fine film", 1, s, eraser="unk")
    # The documented alternatives work with that tokenizer.
    assert word_influence(top_objective, no_unk, "a fine film", 1, s, eraser="mask").shape == (1, 3)
    assert word_influence(top_objective, no_unk, "a fine film", 1, s, eraser="zero").shape == (1, 3)


# --------------------------------------------------------------------------------------------
# C07: parameter selection
# --------------------------------------------------------------------------------------------

def test_C07_frozen_embeddings_are_left_out(tok):
    model = tiny_bert(initializer_range=0.1, seed=2)
    for p in model.bert.embeddings.parameters():
        p.requires_grad_(False)
    pset = select_parameters(model, "all")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert pset.numel == trainable
    assert not any(n.startswith("bert.embeddings.") for n in pset.names)
    objective = FullModelLoss(model, pset)
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4)
    s = directions(pset.numel, q=1, seed=7)
    assert rel(train_influence(objective, data, s), train_influence_by_gradients(objective, data, s)) < 1e-4
    # Train-side and test-side vectors share one layout: the test gradient is the autograd one.
    test = tokenize(tok, ["a great plot"], [1], 64)
    g = loss_measurement_gradient(objective, objective.prepare(test))
    model.zero_grad()
    F.cross_entropy(model(**model_inputs(test)).logits, test["labels"]).backward()
    assert torch.allclose(g[0], pset.flatten([p.grad for p in pset.tensors]), rtol=1e-5, atol=1e-7)


def test_C07_tied_weights_counted_once(tok):
    """The pooler's dense weight tied to the last attention output projection (both 32 x 32):
    one entry in θ, whose gradient is the sum over both uses."""
    model = tiny_bert(initializer_range=0.1, seed=3)
    model.bert.pooler.dense.weight = model.bert.encoder.layer[1].attention.output.dense.weight
    pset = select_parameters(model, "all")
    unique = {id(p): p.numel() for p in model.parameters()}
    assert pset.numel == sum(unique.values())
    assert len(set(map(id, pset.tensors))) == len(pset.tensors)
    objective = FullModelLoss(model, pset)
    test = tokenize(tok, ["a great plot", "bad film"], [1, 0], 64)
    g = loss_measurement_gradient(objective, objective.prepare(test))
    model.zero_grad()
    F.cross_entropy(model(**model_inputs(test)).logits[:1], test["labels"][:1]).backward()
    assert torch.allclose(g[0], pset.flatten([p.grad for p in pset.tensors]), rtol=1e-5, atol=1e-7)
    data = prepare_data(objective, tok, TEXTS, LABELS, batch_size=4)
    s = directions(pset.numel, q=1, seed=8)
    assert rel(train_influence(objective, data, s), train_influence_by_gradients(objective, data, s)) < 1e-4


def test_C07_select_parameters_errors_and_presets(bert):
    with pytest.raises(ValueError, match="params='everything'.*one of"):
        select_parameters(bert, "everything")
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        select_parameters(bert, ["nothing.*"])
    frozen = tiny_bert(seed=4)
    for p in frozen.classifier.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        select_parameters(frozen, "classifier")

    class Flat(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

    with pytest.raises(ValueError, match="params='top' needs an encoder"):
        select_parameters(Flat(), "top")
    top = select_parameters(bert, "top")
    assert set(top.names) == TopHead(bert).parameter_names()
    assert select_parameters(bert, "classifier").names == ("classifier.weight", "classifier.bias")
    assert select_parameters(bert, "all").numel == sum(p.numel() for p in bert.parameters())


# --------------------------------------------------------------------------------------------
# C10: sign convention on every code path
# --------------------------------------------------------------------------------------------

POS = ["a good movie", "great acting", "i loved it", "a fun and good plot", "wonderful film", "really great fun"]
NEG = ["a bad movie", "awful acting", "i hated it", "a boring and bad plot", "terrible film", "really awful mess"]
TEST_TEXT, TEST_LABEL = "the film was good and fun", 1
C10_TEXTS = POS + NEG + [TEST_TEXT, TEST_TEXT]
C10_LABELS = [1] * 6 + [0] * 6 + [TEST_LABEL, 1 - TEST_LABEL]
DUP, FLIP = 12, 13
C10_DAMPING = 0.5


@pytest.fixture(scope="module")
def trained():
    """Tiny BERT (hidden 16) after 30 seeded Adam steps on 12 sentiment phrases (loss ~0.06)."""
    tokenizer = load_tokenizer()
    model = tiny_bert(hidden_size=16, intermediate_size=32, seed=0)
    torch.manual_seed(0)
    batch = tokenize(tokenizer, POS + NEG, [1] * 6 + [0] * 6, 32)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(30):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert float(loss) < 0.2
    return model


C10_PATHS = [("top", "exact"), ("top", "cg"), ("top", "lissa"), ("all", "cg"), ("all", "lissa")]


@pytest.mark.parametrize("params, solver", C10_PATHS)
def test_C10_duplicate_helpful_flipped_harmful(trained, tok, params, solver):
    """I(z, L_test) < 0 for an exact duplicate of the test example (up-weighting it lowers the
    test loss) and > 0 for the label-flipped copy, on every path. With (H + λI) ≻ 0 this is
    guaranteed: for two labels the flipped copy's gradient is -(p0/p1) x the duplicate's.
    λ = 0.5 makes H + λI positive definite (checked exactly on the top subset)."""
    objective = make_train_loss(trained, params)
    assert isinstance(objective, CachedTopLoss if params == "top" else FullModelLoss)
    data = prepare_data(objective, tok, C10_TEXTS, C10_LABELS, batch_size=4)
    test = objective.prepare(tokenize(tok, [TEST_TEXT], [TEST_LABEL], 32))
    v = loss_measurement_gradient(objective, test)
    if params == "top" and solver == "exact":
        hessian = ihvp.explicit_hessian(full_hvp(objective, data), objective.params.numel)
        assert float(torch.linalg.eigvalsh(hessian.double())[0]) + C10_DAMPING > 0.1
    options = SolverOptions(solver=solver, damping=C10_DAMPING, scale=3.0 if solver == "lissa" else None,
                            depth=60, batch_size=8, seed=0)
    result = compute_s_test(objective, data, v, options)
    assert max(result.relative_residual) < (0.05 if solver == "lissa" else 1e-3)
    scores = train_influence(objective, data, result.x)[0]
    assert torch.isfinite(scores).all()
    assert scores[DUP] < -1e-3, "duplicate of the test example must be helpful (negative)"
    assert scores[FLIP] > 1e-3, "label-flipped copy must be harmful (positive)"
    assert int(scores.argmax()) == FLIP
    # Same sign when the two copies are scored one at a time (example_influence, unbatched).
    single = example_influence(objective, tok, [TEST_TEXT, TEST_TEXT], [TEST_LABEL, 1 - TEST_LABEL], result.x,
                               max_length=32)[0]
    assert torch.allclose(single, scores[[DUP, FLIP]], rtol=1e-4, atol=1e-6)
    # The quadratic form itself: I(dup) = -vᵀ(H + λI)⁻¹v.
    assert float(scores[DUP]) == pytest.approx(-float(v[0] @ result.x[0]), rel=1e-4)


def test_C10_paths_agree(trained, tok):
    """Exact, CG, LiSSA and low-rank give the same scores on the top subset (so rankings cannot swap)."""
    objective = make_train_loss(trained, "top")
    data = prepare_data(objective, tok, C10_TEXTS, C10_LABELS, batch_size=4)
    v = loss_measurement_gradient(objective, objective.prepare(tokenize(tok, [TEST_TEXT], [TEST_LABEL], 32)))
    scores = {}
    for solver in ("exact", "cg", "lissa", "lowrank"):
        options = SolverOptions(solver=solver, damping=C10_DAMPING, scale=3.0, depth=100, batch_size=8, cg_tol=1e-6,
                                rank=8)
        scores[solver] = train_influence(objective, data, compute_s_test(objective, data, v, options).x)[0]
    assert rel(scores["cg"], scores["exact"]) < 1e-3
    assert rel(scores["lowrank"], scores["exact"]) < 1e-3  # refined by CG preconditioned with 8 eigenpairs
    # Cached rows: the reported residual uses every training example, not a sample of residual_examples
    # (with 2 sampled rows an exact CG solve read far from 0).
    exact = compute_s_test(objective, data, v, SolverOptions(solver="cg", damping=C10_DAMPING, cg_tol=1e-6),
                           residual_examples=2)
    assert max(exact.relative_residual) < 1e-5
    assert rel(scores["lissa"], scores["exact"]) < 0.05
    assert torch.equal(torch.sign(scores["lissa"]), torch.sign(scores["exact"]))


# --------------------------------------------------------------------------------------------
# Influence vs leave-one-out retraining on L2-regularised logistic regression
# --------------------------------------------------------------------------------------------

ALPHA = 0.05


class LogisticObjective(TrainLoss):
    """Per-example loss softplus(z) - y z + α/2 ||w||² with z = w·x + b over a flat θ = (w, b);
    batches carry the features "x"."""

    vectorized = True

    def __init__(self, theta: torch.Tensor):
        param = nn.Parameter(theta.detach().clone())
        self.model = None
        self.params = ParameterSet(("theta",), (param.shape,), (param,))
        self.theta = theta.detach().clone()  # float64 (ParameterSet.flat() would give float32)

    def prepare(self, batch):
        return batch

    def per_example_loss(self, theta, batch):
        z = (batch["x"] * theta[:-1]).sum(-1) + theta[-1]
        y = batch["labels"].to(theta.dtype)
        return F.softplus(z) - y * z + 0.5 * ALPHA * (theta[:-1] ** 2).sum()


def _fit(x, y, init):
    theta = init.detach().clone().requires_grad_(True)
    objective = LogisticObjective(init)
    batch = {"x": x, "labels": y}
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=200, tolerance_grad=1e-13, tolerance_change=1e-15,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = objective.per_example_loss(theta, batch).mean()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    g = torch.autograd.grad(objective.per_example_loss(theta, batch).mean(), theta)[0]
    assert float(g.norm()) < 1e-7  # converged (LOO effects are ~1e-3)
    return theta.detach()


@pytest.fixture(scope="module")
def logistic_loo():
    gen = torch.Generator().manual_seed(0)
    n, d = 40, 5
    x = torch.randn(n, d, generator=gen, dtype=F64)
    w_true = torch.randn(d, generator=gen, dtype=F64)
    y = (torch.rand(n, generator=gen, dtype=F64) < torch.sigmoid(1.5 * x @ w_true)).long()
    x_test = torch.randn(3, d, generator=gen, dtype=F64)
    y_test = torch.tensor([1, 0, 1])
    theta = _fit(x, y, torch.zeros(d + 1, dtype=F64))
    test = {"x": x_test, "labels": y_test}
    base = LogisticObjective(theta).per_example_loss(theta, test)
    actual = torch.empty(3, n, dtype=F64)
    for i in range(n):
        keep = torch.arange(n) != i
        theta_i = _fit(x[keep], y[keep], theta)
        actual[:, i] = LogisticObjective(theta_i).per_example_loss(theta_i, test) - base
    batches = [{"x": x[i:i + 16], "labels": y[i:i + 16], "index": torch.arange(i, min(i + 16, n))}
               for i in range(0, n, 16)]
    return theta, PreparedData(batches, n), test, actual


def _pearson(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def _spearman(a, b):
    return _pearson(np.argsort(np.argsort(a)), np.argsort(np.argsort(b)))


@pytest.mark.parametrize("solver", ["exact", "cg", "lissa"])
def test_influence_predicts_leave_one_out_retraining(logistic_loo, solver):
    """Removing z_i changes the test loss by about -I(z_i, L_test)/n (Koh & Liang's I_up,loss,
    sign of Sec. 3.2): Pearson and Spearman >= 0.9 against 40 exact retrainings, for 3 test
    points at once (Q = 3), through compute_s_test and train_influence."""
    theta, data, test, actual = logistic_loo
    objective = LogisticObjective(theta)
    v = loss_measurement_gradient(objective, test)
    assert v.shape == (3, 6) and v.dtype == F64
    # No damping needed (the loss is strongly convex); LiSSA's scale from the closed-form λ_max.
    options = SolverOptions(solver=solver, damping=0.0, scale=1.0, depth=400, batch_size=10_000, cg_tol=1e-10)
    result = compute_s_test(objective, data, v, options)
    assert max(result.relative_residual) < 1e-6
    predicted = (-train_influence(objective, data, result.x) / data.size).double()
    assert predicted.shape == actual.shape
    for q in range(3):
        a, p = actual[q].numpy(), predicted[q].numpy()
        assert _pearson(a, p) >= 0.9 and _spearman(a, p) >= 0.9, (q, _pearson(a, p), _spearman(a, p))
        slope = float(np.dot(a, p) / np.dot(p, p))
        # The magnitude is right too, not only the ranking. First order under-predicts by about
        # the leverage (p/n = 6/40 here): measured slopes 1.18-1.25. A lost sign or 1/n fails.
        assert 0.9 < slope < 1.4


def test_auto_solver_picks_cg_up_to_the_cost_of_lissa_and_lissa_for_its_own_options():
    """choose_solver: 12 passes over n examples against depth x batch_size x repeat = 25,600 at
    the defaults, so n = 2,133 is the last CG size (12 x 2,133 = 25,596); a given scale, repeats
    or kept repeats mean LiSSA; a named solver is kept."""
    def picked(n, **options):
        return choose_solver(SolverOptions(**options), PreparedData([], n)).solver

    assert picked(2133) == "cg" and picked(2134) == "lissa"
    assert picked(4000, depth=400) == "cg" and picked(2000, batch_size=64) == "lissa"
    assert picked(10, scale=2.0) == picked(10, repeat=2) == picked(10, keep_repeats=True) == "lissa"
    assert picked(10, solver="exact") == "exact" and picked(10_000, solver="cg") == "cg"


def test_default_s_test_is_the_converged_cg_solve(top_objective, tok):
    """compute_s_test at all defaults (automatic damping, solver auto) on 6 examples: CG, its
    residual below the default tol 1e-3, and the exact solve at the damping it chose to 1e-2."""
    data = prepare_data(top_objective, tok, TEXTS, LABELS)
    v = loss_measurement_gradient(top_objective, top_objective.prepare(tokenize(tok, TEXTS[:2], LABELS[:2], 64)))
    result = compute_s_test(top_objective, data, v)
    assert result.diagnostics["solver"] == "cg" and max(result.relative_residual) < 1e-3
    exact = compute_s_test(top_objective, data, v, SolverOptions(solver="exact", damping=result.diagnostics["damping"]))
    assert rel(result.x, exact.x) < 1e-2


# --------------------------------------------------------------------------------------------
# Reproducibility and numerical hygiene
# --------------------------------------------------------------------------------------------

def test_same_seed_same_lissa_bits(top_objective, tok):
    data = prepare_data(top_objective, tok, TEXTS, LABELS, batch_size=2)
    v = loss_measurement_gradient(top_objective, top_objective.prepare(tokenize(tok, ["a great plot"], [1], 64)))

    def run(seed):
        options = SolverOptions(solver="lissa", damping=3.0, scale=None, depth=40, batch_size=2, seed=seed,
                                power_iters=10)  # λ_min ≈ -2: damping 0.1 would be refused (indefinite)
        s = compute_s_test(top_objective, data, v, options).x
        return s, train_influence(top_objective, data, s)

    s_a, i_a = run(3)
    s_b, i_b = run(3)
    s_c, _ = run(4)
    assert torch.equal(s_a, s_b) and torch.equal(i_a, i_b)
    assert torch.equal(i_a.argsort(), i_b.argsort())
    assert not torch.equal(s_a, s_c)  # the seed does drive the mini-batches


def test_influence_mode_fp16_uses_float32_copy(tok):
    model = tiny_bert(seed=5).half().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with influence_mode(model) as m32:
        assert m32 is not model
        assert all(p.dtype == torch.float32 for p in m32.parameters())
        assert m32.training is False
        objective = make_train_loss(m32, "top")
        data = prepare_data(objective, tok, TEXTS[:3], LABELS[:3])
        scores = train_influence(objective, data, directions(objective.params.numel, q=1))
        assert torch.isfinite(scores).all()
    assert model.training is True
    for n, p in model.named_parameters():
        assert p.dtype == torch.float16 and torch.equal(p, before[n]), n


def test_influence_mode_float32_restores_mode_and_attention():
    model = tiny_bert(seed=6, attn_implementation="sdpa").train()

    class Wrapper(nn.Module):  # DDP-style .module wrapper
        def __init__(self, inner):
            super().__init__()
            self.module = inner

    with influence_mode(Wrapper(model)) as inner:
        assert inner is model
        assert inner.training is False
        assert inner.config._attn_implementation == "eager"  # double backward needs eager (C06)
    assert model.training is True
    assert model.config._attn_implementation == "sdpa"
