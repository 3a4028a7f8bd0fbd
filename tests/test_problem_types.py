"""The training loss follows ``config.problem_type`` (single-label CE, multi-label BCE,
regression MSE): the mean of the per-example losses equals the model's own ``outputs.loss``,
float targets are never cast to class ids, saliency scores follow the head (softmax, sigmoid,
predicted value), and what is unsupported is refused clearly (case C34); label smoothing and
class weights are differentiated as the Trainer trains them (case C36)."""

import warnings

import datasets
import pytest
import torch
from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

from hf_pairdots.arguments import ExplainArguments, SolverArguments
from hf_pairdots.callback import warn_if_loss_differs, warn_if_trainer_loss_differs, with_training_smoothing
from hf_pairdots.errors import UnsupportedModelError
from hf_pairdots.explain import Explainer
from hf_pairdots.loss import FullModelLoss, example_losses, make_train_loss, mean_gradient_norm, prepare_data
from hf_pairdots.autograd import select_parameters
from hf_pairdots.models import tiny_bert
from hf_pairdots.saliency import label_score, saliency
from hf_pairdots.training import tokenize_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = ["a good film", "a bad film", "great acting here", "dull and slow"]


def _model(kind, k):
    model = tiny_bert(num_labels=k, vocab_size=30522, seed=0)
    model.config.problem_type = kind
    return model.eval()


@pytest.mark.parametrize("kind, k, labels", [
    ("single_label_classification", 3, [0, 2, 1, 2]),
    ("multi_label_classification", 3, [[1, 0, 1], [0, 0, 0], [1, 1, 1], [0, 1, 0]]),
    ("regression", 1, [0.25, -1.5, 3.0, 0.7]),
    ("regression", 2, [[0.25, 1.0], [-1.5, 0.0], [3.0, 2.0], [0.7, -0.2]]),
])
def test_mean_example_loss_is_the_models_own_loss(tok, kind, k, labels):
    model = _model(kind, k)
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    target = torch.tensor(labels, dtype=torch.long if kind.startswith("single") else torch.float32)
    with torch.no_grad():
        own = model(**enc, labels=target).loss
        logits = model(**enc).logits
    assert example_losses(logits, target, kind).mean().item() == pytest.approx(own.item(), rel=1e-6)
    for params in ("head", "last:1"):  # the cached-top route and the full-model route
        objective = make_train_loss(model, params)
        data = prepare_data(objective, tok, TEXTS, labels, batch_size=4, max_length=16)
        [batch] = data.batches
        got = torch.empty(len(TEXTS))
        got[batch["index"]] = objective.per_example_loss(objective.theta, batch).detach()
        assert got.mean().item() == pytest.approx(own.item(), rel=1e-5)
        if kind == "regression":  # float targets stay floats, never class ids
            assert batch["labels"].dtype == torch.float32


def test_regression_targets_checked(tok):
    objective = FullModelLoss(_model("regression", 1), select_parameters(_model("regression", 1), "head"))
    with pytest.raises(ValueError, match=r"labels \[inf\] of rows \[1\] are not finite"):
        prepare_data(objective, tok, TEXTS[:2], [0.5, float("inf")])
    multi = _model("multi_label_classification", 2)
    with pytest.raises(ValueError, match="not multi-hot"):
        prepare_data(make_train_loss(multi, "head"), tok, TEXTS[:2], [[0, 1], [2, 0]])


def test_label_score_follows_the_head():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    y = torch.tensor([2])
    sigmoid = 1 / (1 + torch.e ** -0.5)
    assert label_score(logits, y, "prob", "multi_label_classification").item() == pytest.approx(sigmoid)
    assert label_score(logits, y, "margin", "multi_label_classification").item() == 0.5
    assert label_score(logits, y, "prob", "regression").item() == 0.5  # the predicted value, no softmax
    assert label_score(logits, y, "prob").item() == pytest.approx(logits.softmax(-1)[0, 2].item())


def test_regression_saliency_is_the_gradient_of_the_predicted_value(tok):
    model = _model("regression", 1)
    [sal] = saliency(model, tok, ["a good film"], [0])
    with torch.no_grad():
        value = model(**tok(["a good film"], return_tensors="pt")).logits[0, 0].item()
    assert sal.probability == pytest.approx(value)  # reported S is the value, not a softmax over one logit (= 1)


def test_explainer_refuses_multi_output_regression_before_work(tok):
    """One output is explained per regression query (tests/test_problem_explainer.py explains it)."""
    with pytest.raises(UnsupportedModelError, match="problem_type='regression' with num_labels=2"):
        Explainer(_model("regression", 2), tok, TEXTS, [[0.1, 0.0]] * 4, ExplainArguments())


def test_label_smoothing_warns_only_when_it_differs_from_training():
    class Args:
        label_smoothing_factor = 0.1

    with pytest.warns(UserWarning, match="label_smoothing_factor=0.1, but .* label_smoothing=0"):
        assert warn_if_loss_differs(Args())
    resolved = with_training_smoothing(ExplainArguments(), Args())
    assert resolved.label_smoothing == 0.1 and ExplainArguments().label_smoothing is None  # a copy
    with pytest.warns(UserWarning, match="label_smoothing=0.2"):
        assert warn_if_loss_differs(Args(), ExplainArguments(label_smoothing=0.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_loss_differs(Args(), resolved)
        Args.label_smoothing_factor = 0.0
        assert not warn_if_loss_differs(Args())
        assert with_training_smoothing(ExplainArguments(), Args()).label_smoothing is None  # old runs resume


def test_smoothed_weighted_loss_by_hand():
    """ℓ = (1 - ε) w_y (-log p_y) + (ε/K) Σ_k w_k (-log p_k), computed by hand for two rows."""
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, -2.0]])
    labels = torch.tensor([2, 0])
    eps, w = 0.1, torch.tensor([1.0, 3.0, 0.5])
    nll = -logits.log_softmax(-1)
    want = (1 - eps) * w[labels] * nll[torch.arange(2), labels] + eps / 3 * (w * nll).sum(-1)
    got = example_losses(logits, labels, label_smoothing=eps, class_weights=w)
    assert torch.allclose(got, want, rtol=1e-6)
    assert got[0].item() == pytest.approx(0.9 * 0.5 * 1.741311 + 0.1 / 3 * (0.241311 + 3 * 3.241311 + 0.5 * 1.741311),
                                          rel=1e-5)
    with pytest.raises(ValueError, match="problem_type is 'regression'"):
        example_losses(logits, labels.float(), "regression", label_smoothing=eps)
    with pytest.raises(ValueError, match=r"give 3 finite weights"):
        example_losses(logits, labels, class_weights=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\)"):
        ExplainArguments(label_smoothing=1.0)


def test_trainer_label_smoothing_is_the_loss_differentiated(tok, tmp_path):
    """Trainer(label_smoothing_factor=0.1).compute_loss (its LabelSmoother) equals the mean of
    example_losses(label_smoothing=0.1) on a batch, and its gradient over θ_S equals the library's
    (per_example_loss of the cached-top and full-model routes)."""
    model = _model("single_label_classification", 3)
    with torch.no_grad():
        model.classifier.weight *= 100  # confident logits, where smoothing changes the loss
    labels = [0, 2, 1, 2]
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=0.1, use_cpu=True, report_to=[])
    trainer = Trainer(model=model, args=args)
    enc = dict(tok(TEXTS, padding=True, return_tensors="pt"), labels=torch.tensor(labels))
    theirs = trainer.compute_loss(model, dict(enc))
    with torch.no_grad():
        plain = model(**enc).loss
    for params in ("head", "last:1"):
        objective = make_train_loss(model, params, label_smoothing=0.1)
        [batch] = prepare_data(objective, tok, TEXTS, labels, batch_size=4, max_length=16).batches
        ours = objective.mean_loss(objective.theta, batch)
        assert ours.item() == pytest.approx(theirs.item(), rel=1e-5) and abs(ours.item() - plain.item()) > 1e-2
        grads = torch.autograd.grad(theirs, objective.params.tensors, retain_graph=True)
        want = torch.cat([g.reshape(-1) for g in grads])
        got = torch.func.grad(lambda theta: objective.mean_loss(theta, batch))(objective.theta)
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-7)


def test_mean_gradient_norm_vanishes_at_the_smoothed_weighted_optimum(tok):
    """The classifier fitted to the smoothed, weighted loss: ||mean gradient|| of that loss ≈ 0,
    of the plain loss not (what train_gradient_norm shows a user who left the terms out)."""
    model = _model("single_label_classification", 2)
    terms = {"label_smoothing": 0.2, "class_weights": [1.0, 4.0]}
    objective = make_train_loss(model, "classifier", **terms)
    data = prepare_data(objective, tok, TEXTS, [0, 1, 0, 0], batch_size=4, max_length=16)
    theta = objective.theta.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], max_iter=500, tolerance_grad=1e-10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = sum(objective.mean_loss(theta, b) for b in data.batches)
        loss.backward()
        return loss
    opt.step(closure)
    with torch.no_grad():
        objective.theta.copy_(theta)  # a view of the model's classifier
    plain = make_train_loss(model, "classifier")
    assert mean_gradient_norm(objective, data) < 1e-4
    assert mean_gradient_norm(plain, prepare_data(plain, tok, TEXTS, [0, 1, 0, 0], max_length=16)) > 1e-2


def test_kfac_refuses_class_weights_before_work(tok):
    with pytest.raises(ValueError, match="unweighted cross-entropy"):
        Explainer(_model("single_label_classification", 2), tok, TEXTS, [0, 1, 0, 1],
                  ExplainArguments(params="classifier", class_weights=[1.0, 2.0],
                                   solver=SolverArguments(curvature="kfac")))


def test_mean_gradient_norm_is_the_norm_of_the_mean_gradient(tok):
    model = _model("single_label_classification", 2)
    objective = make_train_loss(model, "head")  # cached features, batches of 3 and 1
    data = prepare_data(objective, tok, TEXTS, [0, 1, 0, 1], batch_size=3, max_length=16)
    full = FullModelLoss(model, objective.params)
    [batch] = prepare_data(full, tok, TEXTS, [0, 1, 0, 1], batch_size=4, max_length=16).batches
    want = torch.func.grad(lambda theta: full.mean_loss(theta, batch))(full.theta).norm().item()
    assert mean_gradient_norm(objective, data) == pytest.approx(want, rel=1e-5) and want > 0


class WeightedTrainer(Trainer):
    """A Trainer trained with class-weighted cross-entropy (weights 1 and 4)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        logits = model(**inputs).logits
        return torch.nn.functional.cross_entropy(logits, labels, weight=torch.tensor([1.0, 4.0]))


class SameLossTrainer(Trainer):
    """A Trainer overriding compute_loss with the model's own loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return model(**inputs).loss


def test_class_weighted_compute_loss_warns_unless_the_weights_are_given(tok, tmp_path):
    model = _model("single_label_classification", 2)
    train = datasets.Dataset.from_dict({"text": TEXTS, "label": [0, 1, 0, 1]})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, use_cpu=True, report_to=[])
    common = dict(model=model, args=args, train_dataset=tokenize_dataset(train, tok, 16),
                  data_collator=DataCollatorWithPadding(tok))
    model.train()
    with pytest.warns(UserWarning, match="WeightedTrainer.compute_loss gives"):
        assert warn_if_trainer_loss_differs(WeightedTrainer(**common), model)
    assert model.training  # mode restored
    with pytest.warns(UserWarning, match=r"class_weights=\[1.0, 2.0\]"):  # the wrong weights
        assert warn_if_trainer_loss_differs(WeightedTrainer(**common), model, ExplainArguments(class_weights=[1, 2]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the weighted mean Σ w_y ℓ / Σ w_y nn.CrossEntropyLoss(weight) takes: same value
        assert not warn_if_trainer_loss_differs(WeightedTrainer(**common), model, ExplainArguments(class_weights=[1, 4]))
        assert not warn_if_trainer_loss_differs(SameLossTrainer(**common), model)
        assert not warn_if_trainer_loss_differs(Trainer(**common), model)  # not checked: the plain loss
