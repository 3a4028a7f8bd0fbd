"""Influence and saliency on a peft LoRA model (cases C09, C10 on the ``"lora"`` path).

The model: a tiny BERT (1 layer, hidden 16, ``initializer_range=0.2`` so that the random base
separates the phrases) wrapped by ``peft.get_peft_model`` with ``LoraConfig(r=4,
target_modules=["query", "value"], task_type="SEQ_CLS", lora_dropout=0.1)``: 4 LoRA matrices,
P = 256. LoRA's B is zero-initialised (then ∂L/∂A = 0 exactly), so the fixture trains the
adapters (and peft's trainable copy of the classifier) for 40 seeded Adam steps first.

What peft marks trainable: every ``lora_A``/``lora_B`` weight and the classifier's
``modules_to_save`` copy (weight and bias; the original classifier is frozen). The ``"lora"``
preset takes only the adapters; ``"classifier"`` takes the trainable copy; a pattern list takes
both. Influence here is over the adapters, as the preset documents.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model

from hf_pairdots import ihvp
from hf_pairdots.arguments import SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.influence import example_influence, train_influence
from hf_pairdots.loss import FullModelLoss, full_hvp, make_train_loss, prepare_data, tokenize
from hf_pairdots.measurement import loss_measurement_gradient, saliency_measurement, saliency_measurement_gradient
from hf_pairdots.modeling import find_embedding_block, influence_mode, model_inputs
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import saliency
from hf_pairdots.solve import compute_s_test
from hf_pairdots.text import encode_words
from testing_utils import train_influence_by_gradients

pytestmark = pytest.mark.usefixtures("one_torch_thread")

F64 = torch.float64
POS = ["a good movie", "great acting", "i loved it", "a fun and good plot", "wonderful film", "really great fun"]
NEG = ["a bad movie", "awful acting", "i hated it", "a boring and bad plot", "terrible film", "really awful mess"]
TEST_TEXT, TEST_LABEL = "the film was good and fun", 1
C10_TEXTS = POS + NEG + [TEST_TEXT, TEST_TEXT]
C10_LABELS = [1] * 6 + [0] * 6 + [TEST_LABEL, 1 - TEST_LABEL]
DUP, FLIP = 12, 13
C10_DAMPING = 2.0  # the trained LoRA Hessian is indefinite (λ_min ≈ -1.27); checked below


def lora(seed=0):
    base = tiny_bert(hidden_size=16, intermediate_size=32, num_hidden_layers=1, initializer_range=0.2, seed=seed)
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["query", "value"], task_type="SEQ_CLS")
    return get_peft_model(base, config)


@pytest.fixture(scope="module")
def trained(tok):
    """The LoRA model after 40 seeded Adam steps on 12 sentiment phrases (eval loss ~0.1), in eval mode."""
    model = lora()
    torch.manual_seed(0)
    batch = tokenize(tok, POS + NEG, [1] * 6 + [0] * 6, 32, pad_to_multiple_of=None)  # dropout masks follow the shape
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-2)
    model.train()
    for _ in range(40):
        loss = model(**model_inputs(batch), labels=batch["labels"]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        assert float(model(**model_inputs(batch), labels=batch["labels"]).loss) < 0.2
    return model


def rel(a, b):
    return float((a - b).detach().norm() / b.detach().norm())


def blocks(pset, vector):
    """``{name: norm}`` of each parameter's part of a flat vector."""
    return {n: float(t.norm()) for n, t in pset.unflatten(vector).items()}


# --------------------------------------------------------------------------------------------
# Parameter selection through the peft wrapper
# --------------------------------------------------------------------------------------------

def test_lora_preset_selects_the_adapters(trained):
    """C43: "lora" is the adapters only; presets naming the head resolve to peft's trainable
    ``modules_to_save`` copy, never its frozen ``original_module``."""
    pset = select_parameters(trained, "lora")
    trainable = {n for n, p in trained.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    assert len(adapters) == 4 and set(pset.names) == adapters
    assert pset.numel == 2 * (4 * 16 + 16 * 4) == 256  # query, value: A (4 x 16), B (16 x 4)
    # peft also trains a copy of the classifier (task_type="SEQ_CLS"): not in "lora".
    head_copy = trainable - adapters
    assert head_copy == {"base_model.model.classifier.modules_to_save.default.weight",
                         "base_model.model.classifier.modules_to_save.default.bias"}
    assert set(select_parameters(trained, "classifier").names) == head_copy  # the frozen original is left out
    both = select_parameters(trained, ["*lora_*", "*modules_to_save*"])
    assert set(both.names) == trainable
    # Same layout as named_parameters (the flattening order is fixed once).
    order = [n for n, _ in trained.named_parameters() if n in adapters]
    assert list(pset.names) == order
    assert isinstance(make_train_loss(trained, "lora"), FullModelLoss)


# --------------------------------------------------------------------------------------------
# C09: gradients over the adapters in eval mode
# --------------------------------------------------------------------------------------------

def test_C09_lora_gradients_in_eval_mode(trained, tok):
    """After model.eval(), ∇θL(z) over the LoRA weights is finite, non-zero in every A and B,
    deterministic (LoRA dropout is off) and equal to the autograd .grad of the live model."""
    assert not trained.training
    objective = make_train_loss(trained, "lora")
    test = tokenize(tok, [TEST_TEXT, "a bad movie"], [TEST_LABEL, 0], 32)
    g = loss_measurement_gradient(objective, objective.prepare(test))
    assert g.shape == (2, 256) and torch.isfinite(g).all()
    for q in range(2):
        norms = blocks(objective.params, g[q])
        assert min(norms.values()) > 1e-6, norms
    assert torch.equal(g, loss_measurement_gradient(objective, objective.prepare(test)))
    trained.zero_grad()
    F.cross_entropy(trained(**model_inputs(test)).logits[:1], test["labels"][:1]).backward()
    grads = [p.grad for p in objective.params.tensors]
    assert all(t is not None for t in grads)
    assert torch.allclose(g[0], objective.params.flatten(grads), rtol=1e-5, atol=1e-7)
    trained.zero_grad()
    # Per-example training gradients (the reference route): non-zero for every example.
    data = prepare_data(objective, tok, POS + NEG, [1] * 6 + [0] * 6, batch_size=5)
    basis = torch.eye(256)[:: 8]  # 32 coordinates, spread over all four matrices
    by_grad = train_influence_by_gradients(objective, data, basis)
    assert float(by_grad.abs().sum(0).min()) > 0


def test_C09_zero_initialised_B_gives_zero_A_gradient(tok):
    """Why the fixture trains first: at peft's initialisation B = 0, so ∂L/∂A = 0 exactly while
    ∂L/∂B ≠ 0 (influence over A alone would be identically zero)."""
    model = lora(seed=1).eval()
    objective = make_train_loss(model, "lora")
    g = loss_measurement_gradient(objective, objective.prepare(tokenize(tok, [TEST_TEXT], [1], 32)))[0]
    norms = blocks(objective.params, g)
    assert all(v == 0 for n, v in norms.items() if ".lora_A." in n)
    assert all(v > 1e-6 for n, v in norms.items() if ".lora_B." in n)


# --------------------------------------------------------------------------------------------
# JVP route == per-example gradient route
# --------------------------------------------------------------------------------------------

def test_lora_jvp_route_equals_per_example_gradients(trained, tok):
    objective = make_train_loss(trained, "lora")
    data = prepare_data(objective, tok, C10_TEXTS, C10_LABELS, batch_size=4)
    s = torch.randn(2, objective.params.numel, generator=torch.Generator().manual_seed(1))
    by_jvp = train_influence(objective, data, s)
    by_grad = train_influence_by_gradients(objective, data, s)
    assert by_jvp.shape == (2, len(C10_TEXTS))
    assert float(by_grad.abs().min()) > 0
    assert rel(by_jvp, by_grad) < 1e-4


# --------------------------------------------------------------------------------------------
# C10: sign convention on the LoRA path
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lora_c10(trained, tok):
    objective = make_train_loss(trained, "lora")
    data = prepare_data(objective, tok, C10_TEXTS, C10_LABELS, batch_size=8)
    v = loss_measurement_gradient(objective, objective.prepare(tokenize(tok, [TEST_TEXT], [TEST_LABEL], 32)))
    hessian = ihvp.explicit_hessian(full_hvp(objective, data), objective.params.numel)
    assert hessian.grad_fn is None
    return objective, data, v, torch.linalg.eigvalsh(hessian.double())


@pytest.mark.parametrize("solver", ["cg", "exact"])
def test_C10_lora_duplicate_helpful_flipped_harmful(lora_c10, tok, solver):
    """I(z, L_test) < 0 for an exact duplicate of the test example, > 0 for its label-flipped
    copy, over the LoRA weights. The Hessian is indefinite; λ = 2 makes H + λI ≻ 0 (checked on
    the explicit Hessian), which is what guarantees the signs for two labels."""
    objective, data, v, eigenvalues = lora_c10
    assert float(eigenvalues[0]) < 0  # really needs the damping
    assert float(eigenvalues[0]) + C10_DAMPING > 0.2
    options = SolverOptions(solver=solver, damping=C10_DAMPING, cg_tol=1e-6)
    result = compute_s_test(objective, data, v, options)
    assert max(result.relative_residual) < 1e-4
    scores = train_influence(objective, data, result.x)[0]
    assert torch.isfinite(scores).all()
    assert scores[DUP] < -1e-4, "duplicate of the test example must be helpful (negative)"
    assert scores[FLIP] > 1e-4, "label-flipped copy must be harmful (positive)"
    assert int(scores.argmax()) == FLIP
    assert float(scores[DUP]) == pytest.approx(-float(v[0] @ result.x[0]), rel=1e-4)
    single = example_influence(objective, tok, [TEST_TEXT, TEST_TEXT], [TEST_LABEL, 1 - TEST_LABEL], result.x,
                               max_length=32)[0]
    assert torch.allclose(single, scores[[DUP, FLIP]], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------------------------
# influence_mode and saliency through the peft wrapper
# --------------------------------------------------------------------------------------------

def _modes(model):
    return {n: m.training for n, m in model.named_modules()}


def test_influence_mode_restores_every_module(trained):
    """Inside: the peft model itself (no copy), every module in eval (LoRA dropout off). After:
    each module's mode as before, also for the mixed state peft leaves right after wrapping an
    eval model (the PeftModel in training mode, the wrapped modules in eval)."""
    fresh = lora(seed=2)
    assert fresh.training and not fresh.get_base_model().training  # mixed, as peft returns it
    for model in (fresh, trained.train(), trained.eval()):
        before = _modes(model)
        with influence_mode(model) as m:
            assert m is model
            assert not any(_modes(m).values())
        assert _modes(model) == before
    assert not trained.training


def test_saliency_through_peft_wrapper(trained, tok):
    """find_embedding_block finds BERT's embedding block inside the peft wrapper, and saliency()
    on the peft model equals saliency() on the merged plain model."""
    block = find_embedding_block(trained)
    assert block is trained.get_base_model().bert.embeddings
    texts, labels = ["the film was good and fun", "really awful mess"], [1, 0]
    got = saliency(trained, tok, texts, labels)
    merged = copy.deepcopy(trained).merge_and_unload().eval()
    assert type(merged).__name__ == "BertForSequenceClassification"
    ref = saliency(merged, tok, texts, labels)
    for a, b in zip(got, ref):
        assert a.words == b.words and a.probability == pytest.approx(b.probability, rel=1e-5)
        assert a.scores == pytest.approx(b.scores, rel=1e-4, abs=1e-7)
        assert max(abs(s) for s in a.scores) > 1e-5


def test_saliency_measurement_gradient_over_lora(trained, tok):
    """∇θ w_y(e) of Eq. 5 over the LoRA weights (double backward through the peft model) vs a
    central difference of the measurement on a float64 copy (S_y itself is float32 there)."""
    enc, _, _ = encode_words(tok, [TEST_TEXT])
    batch, positions = dict(enc), [4]  # "good"
    params = select_parameters(trained, "lora")
    grad = saliency_measurement_gradient(trained, params, batch, 1, positions)
    assert grad.shape == (256,) and float(grad.norm()) > 0
    model64 = copy.deepcopy(trained).double()
    p64 = select_parameters(model64, "lora")
    measure = saliency_measurement(model64, p64, batch, 1, positions)
    theta = torch.cat([t.detach().reshape(-1) for t in p64.tensors])
    # Directions: the gradient's own (largest change) and one mixing it with a random direction.
    rand = torch.randn(theta.shape, generator=torch.Generator().manual_seed(0), dtype=F64)
    along = grad.double() / grad.norm()
    for d in (along, along + rand / rand.norm()):
        d = d / d.norm()
        eps = 1e-3
        fd = float((measure(theta + eps * d) - measure(theta - eps * d)).detach() / (2 * eps))
        assert abs(fd) > 1e-3
        assert float(grad.double() @ d) == pytest.approx(fd, rel=2e-3)  # measured: 6e-5
