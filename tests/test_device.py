"""Device placement without a GPU: every tensor that meets the model is on the model's device.

On a GPU machine the Trainer moves the model to CUDA while tokenizers build CPU tensors, so any
tensor the package forgets to move makes an op mix devices and fail. This machine has no GPU, so
the model is put on torch's ``meta`` device (shapes and dtypes, no data) and the code runs inside
a ``FakeTensorMode``, in which every op checks its operands' devices the way CUDA kernels do
(plain meta kernels are lenient: ``F.linear``, ``F.embedding`` or ``gather`` accept a CPU operand
next to a meta one). A CPU tensor left beside the meta model then raises
``FakeTensorDeviceMismatchError: Expected all tensors to be on the same device``, as on CUDA.

Fake tensors hold no values, so reading one (``float(t)``, ``t.tolist()``, ``if t.all():``)
would stop the run; :func:`strict_meta` answers such reads with placeholders (0, 0.0, and True
or, where a check reads ``.any()`` of what should not happen, False).
The explanations computed here are therefore meaningless, but every op of every code path on
the way (tokenisation, saliency, features, HVPs, LiSSA, exact and low-rank solves, training
scores, Eq. 6-8, the edit search, the records, ``explain_dataset``) runs with strict device
checks. The CPU numerics are tested elsewhere; here only devices count. Not reachable this way:
ARPACK (damping/scale estimates, the low-rank factor) and the cache, which need real values (the
HVP side of ARPACK is unit-tested at the end with plain meta tensors), and conjugate gradient,
whose boolean-mask indexing has a value-dependent shape.
"""

import contextlib
import json

import datasets
import numpy as np
import pytest
import torch
from torch import nn

from hf_pairdots import ihvp
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.augment.search import exhaustive_search, search_edit
from hf_pairdots.autograd import select_parameters
from hf_pairdots.callback import explain_dataset
from hf_pairdots.explain import Explainer, Query
from hf_pairdots.features import compute_features
from hf_pairdots.influence import perturbation_influence, train_influence, word_influence
from hf_pairdots.loss import CachedTopLoss, FullModelLoss, full_hvp, make_train_loss, prepare_data, tokenize
from hf_pairdots.measurement import loss_measurement_gradient, saliency_measurement_gradient
from hf_pairdots.modeling import model_device, model_inputs, predict_proba
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import embedding_gradient, saliency
from hf_pairdots.solve import compute_s_test
from hf_pairdots.text import encode_words
from hf_pairdots.training import accuracy
from testing_utils import train_influence_by_gradients

fake_tensor = pytest.importorskip("torch._subclasses.fake_tensor")
fake_impls = pytest.importorskip("torch._subclasses.fake_impls")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

META = torch.device("meta")
TRAIN = ["a good movie", "a bad movie", "great fun", "boring and slow", "the plot was great", "awful acting"]
LABELS = [1, 0, 1, 0, 1, 0]
SOLVER = dict(damping=1.0, scale=10.0, depth=2, batch_size=2)  # fixed λ, σ: no ARPACK (needs real values)


@pytest.fixture
def fixed_lanczos(monkeypatch):
    """The Lanczos estimate of λ_min that checks a user-set damping needs real values (ARPACK),
    which fake tensors lack: it is stubbed here with λ_min = 0, λ_max = 1."""
    monkeypatch.setattr(ihvp, "extreme_eigenvalues", lambda *args, **kwargs: (0.0, 1.0))


@contextlib.contextmanager
def strict_meta(truth: bool = True):
    """A ``FakeTensorMode`` (CUDA-like device checks on every op) whose value reads give placeholders:
    0 for integers, 0.0 for floats, ``truth`` for booleans.

    Real tensors met inside (tokenizer output, a meta model's parameters) become fake tensors on
    their own device, so CPU stays CPU and meta stays meta: a model moved to ``"meta"`` plays
    the part of a GPU model.
    """
    def placeholder(fake_mode, func, tensor):
        if tensor.dtype == torch.bool:
            return truth
        return 0.0 if tensor.dtype.is_floating_point or tensor.dtype.is_complex else 0

    op = torch.ops.aten._local_scalar_dense.default
    table = getattr(fake_impls, "op_implementations_dict", None)
    if table is None or op not in table:
        pytest.skip("this torch has no fake implementation table for _local_scalar_dense")
    saved = table[op]
    table[op] = placeholder
    try:
        with fake_tensor.FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        table[op] = saved


@pytest.fixture
def meta_model():
    """A tiny BERT classifier on the meta device (the stand-in for a model on a GPU)."""
    return tiny_bert().to(META)


def _on(tensor, device=META):
    return tensor.device.type == torch.device(device).type


# ---------------------------------------------------------------------------------------------
# The helpers
# ---------------------------------------------------------------------------------------------

def test_model_device_is_the_first_parameters_device():
    assert model_device(tiny_bert()) == torch.device("cpu")
    assert model_device(tiny_bert().to(META)) == META
    only_buffer = nn.Module()
    only_buffer.register_buffer("b", torch.zeros(1, device=META))
    assert model_device(only_buffer) == META
    assert model_device(nn.ReLU()) == torch.device("cpu")  # no tensor at all


def test_model_inputs_moves_the_models_inputs_only(tok):
    enc, _, _ = encode_words(tok, ["a good film", "bad"], 16)
    batch = dict(enc, labels=torch.tensor([1, 0]), index=torch.tensor([3, 4]))
    kept = model_inputs(batch)
    assert set(kept) == {"input_ids", "attention_mask", "token_type_ids"}
    assert all(kept[k] is batch[k] for k in kept)  # no device: the very same tensors
    moved = model_inputs(batch, META)
    assert set(moved) == set(kept) and all(_on(v) for v in moved.values())
    assert all(torch.equal(v, batch[k]) for k, v in model_inputs(batch, "cpu").items())


def test_strict_meta_catches_what_plain_meta_lets_through():
    """The premise of this module: plain meta accepts a CPU operand in a linear layer, the fake
    mode refuses it as CUDA would, and a 0-dim CPU scalar is allowed, as on CUDA."""
    weight = torch.zeros(4, 3, device=META)
    assert _on(nn.functional.linear(torch.zeros(2, 3), weight), "cpu")  # lenient: no error
    with strict_meta():
        with pytest.raises(RuntimeError, match="same device"):
            nn.functional.linear(torch.zeros(2, 3), weight)
        assert _on(torch.tensor(2.0) * weight)


# ---------------------------------------------------------------------------------------------
# Saliency, prediction, accuracy
# ---------------------------------------------------------------------------------------------

def test_saliency_runs_on_the_models_device(meta_model, tok):
    enc, _, _ = encode_words(tok, ["a good film", "bad"], 16)
    with strict_meta():
        grad, emb, scores = embedding_gradient(meta_model, dict(enc), torch.tensor([0, 1]))  # CPU batch and labels
        assert _on(grad) and _on(emb) and _on(scores)
        assert grad.shape == (2, enc["input_ids"].shape[1], meta_model.config.hidden_size)
        result = saliency(meta_model, tok, ["a good film", "bad"], [0, 1], mode="grad_x_input", target="margin")
    assert [len(r.scores) for r in result] == [3, 1]
    assert all(isinstance(s, float) for r in result for s in r.scores)


def test_predictions_come_back_on_the_cpu(meta_model, tok):
    with strict_meta():
        probs = predict_proba(meta_model, tok, ["a good film", "bad", "fun"], batch_size=2)
        assert _on(probs, "cpu") and probs.shape == (3, 2)
        data = datasets.Dataset.from_dict({"text": ["a good film", " ", "bad"], "label": [1, 0, 0]})
        assert isinstance(accuracy(meta_model, tok, data, max_length=16), float)


# ---------------------------------------------------------------------------------------------
# Influence: objectives, s_test, scores, Eq. 6-8
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, kind", [("top", CachedTopLoss), ("last:1", FullModelLoss)])
def test_prepared_data_and_hvps_live_on_the_models_device(meta_model, tok, params, kind):
    with strict_meta():
        objective = make_train_loss(meta_model, params)
        assert isinstance(objective, kind) and objective.device == META and _on(objective.theta)
        data = prepare_data(objective, tok, TRAIN, LABELS, batch_size=4, max_length=16)
        for batch in data.batches:
            assert all(_on(v) for k, v in batch.items() if k != "index")
            assert _on(batch["index"], "cpu")  # bookkeeping stays on the host
        assert _on(full_hvp(objective, data)(torch.ones(2, objective.params.numel, device=META)))


def test_features_of_a_cpu_batch(meta_model, tok):
    with strict_meta():
        batch = tokenize(tok, TRAIN[:3], LABELS[:3], 16)
        assert _on(compute_features(meta_model, batch))


@pytest.mark.parametrize("solver", [dict(solver="lissa", repeat=2, keep_repeats=True), dict(solver="exact")])
def test_s_test_and_scores(meta_model, tok, solver, fixed_lanczos):
    """s_test (and the per-repeat solutions) on the model's device, every score on the CPU,
    whatever device the inputs come from."""
    with strict_meta():
        objective = make_train_loss(meta_model, "classifier" if solver["solver"] == "exact" else "head")
        data = prepare_data(objective, tok, TRAIN, LABELS, batch_size=2, max_length=16)
        v = loss_measurement_gradient(objective, objective.prepare(tokenize(tok, TRAIN[:2], LABELS[:2], 16)))
        assert _on(v) and v.shape == (2, objective.params.numel)
        result = compute_s_test(objective, data, v.cpu(), SolverOptions(**{**SOLVER, **solver}), residual_examples=4)
        assert _on(result.x)
        if result.repeats is not None:
            assert _on(result.repeats)
        for scores in (train_influence(objective, data, result.x), train_influence(objective, data, result.x.cpu()),
                       train_influence_by_gradients(objective, data, result.x)):
            assert _on(scores, "cpu") and scores.shape == (2, len(TRAIN))
        s = result.x[:1]
        assert _on(perturbation_influence(objective, tok, "a good movie", 1, ["a fine movie"], s.cpu()), "cpu")
        for eraser in ("unk", "zero"):
            assert _on(word_influence(objective, tok, "a good movie", 1, s, eraser=eraser), "cpu")


def test_saliency_measurement_gradient_from_a_cpu_batch(meta_model, tok):
    enc, _, _ = encode_words(tok, ["a good film"], 16)
    params = select_parameters(meta_model, "head")
    with strict_meta():
        g = saliency_measurement_gradient(meta_model, params, model_inputs(dict(enc)), 1, [2], target="logprob")
        assert _on(g) and g.shape == (params.numel,)


def test_edit_search(meta_model, tok, lexicon):
    with strict_meta():
        objective = make_train_loss(meta_model, "head")
        s = torch.ones(objective.params.numel)  # a CPU s_test
        result = search_edit(objective, tok, lexicon, "a good happy movie", 1, s, "fix_up", num_sampled=1,
                             max_candidates=2)
        assert result.edit is not None
        assert exhaustive_search(objective, tok, lexicon, "a good movie", 1, s, "attack_down",
                                 max_candidates=2).edit is not None


# ---------------------------------------------------------------------------------------------
# The explanation, end to end (what PairDotsCallback runs at the end of training)
# ---------------------------------------------------------------------------------------------

def test_explainer_records_are_plain_json(meta_model, tok, lexicon, fixed_lanczos):
    args = ExplainArguments(queries="all", top_k=2, max_length=16, batch_size=2, edit="fix", edit_top_k=1,
                            num_sampled=1, max_candidates=2, eraser="zero",
                            solver=SolverOptions(**SOLVER, repeat=2))
    with strict_meta():
        explainer = Explainer(meta_model, tok, TRAIN, LABELS, args)
        solved = explainer.solve(torch.ones(2, explainer.objective.params.numel))
        assert _on(solved.x) and _on(solved.scores, "cpu") and _on(solved.repeat_scores, "cpu")
        records = explainer.explain([Query(0, "a good fun movie", 0), Query(1, "a dull plot", 1)])
    assert len(records) == 2
    json.dumps([record.to_dict() for record in records])  # no tensor (of any device) inside


def test_explain_dataset_on_the_models_device(meta_model, tok, tmp_path, fixed_lanczos):
    """What the callback calls at ``on_train_end``, with the model where the Trainer left it."""
    train = datasets.Dataset.from_dict({"text": TRAIN, "label": LABELS})
    dev = datasets.Dataset.from_dict({"text": ["a good fun movie", "a dull plot"], "label": [0, 1]})
    args = ExplainArguments(queries="all", top_k=1, max_length=16, batch_size=2, labels=("predicted",),
                            solver=SolverOptions(**SOLVER))
    with strict_meta():
        summary = explain_dataset(meta_model, tok, train, dev, args, tmp_path)
    assert summary["queries"] == 2
    assert len((tmp_path / "explanations.jsonl").read_text().splitlines()) == 2


# ---------------------------------------------------------------------------------------------
# Solvers' own buffers (plain tensors, no model)
# ---------------------------------------------------------------------------------------------

def test_lissa_buffers_follow_v():
    """The repeat-spread buffer used to be made on the CPU whatever v's device."""
    with strict_meta():
        v = torch.ones(3, 5, device=META)
        result = ihvp.lissa(lambda h, t: 0.5 * h, v, damping=0.1, scale=2.0, depth=3, repeat=2, keep_repeats=True)
        assert _on(result.x) and _on(result.repeats)


def test_exact_and_lowrank_solves_on_vs_device():
    """(CG is not run: its boolean-mask indexing has a value-dependent shape, which fake tensors
    cannot have. It makes no tensor of its own, only ``*_like`` copies of ``v``.)"""
    v = torch.ones(2, 4, device=META)
    with strict_meta():
        hessian = ihvp.explicit_hessian(lambda u: 2 * u, 4, device=META)
        assert _on(hessian)
        assert _on(ihvp.exact_solve(hessian, v, damping=0.1).x)
    with strict_meta(truth=False):  # "no kept eigenvalue <= -damping"
        factor = ihvp.LowRankHessian(torch.ones(2), torch.ones(4, 2))  # a CPU factor, v on the device
        assert _on(ihvp.lowrank_solve(factor, v, damping=0.5).x)


def test_lanczos_hands_the_hvp_vectors_on_the_parameters_device():
    """ARPACK works on CPU float64 arrays; each HVP must still get its vector on ``device``."""
    seen = []

    def hvp(u):  # an HVP of a model on "meta": it records where its vector lives
        seen.append(u.device)
        return torch.zeros(u.shape)  # plain values for ARPACK (a meta tensor has none)

    operator, _ = ihvp._scipy_operator(hvp, 5, 0, META)
    assert operator.matvec(np.ones(5)).shape == (5,)
    ihvp.extreme_eigenvalues(hvp, 2, device=META)  # P <= 2: explicit Hessian from unit vectors
    assert seen and all(d == META for d in seen)


def test_parameter_set_zero_gradients_on_the_parameters_device():
    params = select_parameters(tiny_bert().to(META), "head")
    with strict_meta():
        flat = params.flatten([None] * len(params.names))
        assert _on(flat) and flat.shape == (params.numel,)
