"""The LoRA column of the architecture matrix: each of the 14 tiny architectures of
``tests/architectures.py`` wrapped by ``peft.get_peft_model`` (r=2, no dropout,
``task_type="SEQ_CLS"``), trained for 4 Trainer steps with a :class:`PairDotsCallback`
attached, with the default ``params="auto"``.

Target modules: peft's default mapping for the model type where it has one (BERT, RoBERTa, XLM-R,
ELECTRA: ``query``/``value``; DeBERTa-v2: ``query_proj``/``value_proj``; GPT-2: ``c_attn``;
Llama, Qwen2, Mistral, BART: ``q_proj``/``v_proj``), else the attention projections named here
(:data:`TARGETS`). peft's SEQ_CLS wrapper trains a copy of a head module called ``classifier`` or
``score``; the other head modules (:data:`HEAD_COPIES`) are passed as ``modules_to_save``, so the
whole head is trained as a copy. docs/architectures.md states the column.
"""

from __future__ import annotations

import json
import math
import warnings

import datasets
import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainingArguments

from architectures import ARCHITECTURES, CORPUS, DECODERS, model, tokenizer
from hf_pairdots.arguments import ExplainArguments, SolverOptions
from hf_pairdots.autograd import select_parameters
from hf_pairdots.callback import PairDotsCallback
from hf_pairdots.influence import train_influence
from hf_pairdots.loss import make_train_loss, prepare_data, tokenize
from hf_pairdots.measurement import loss_measurement_gradient
from hf_pairdots.modeling import eval_eager_mode
from hf_pairdots.report import JSONL_NAME
from hf_pairdots.solve import compute_s_test
from hf_pairdots.training import tokenize_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGETS = {"distilbert": ["q_lin", "v_lin"], "albert": ["query", "value"], "mpnet": ["q", "v"],
           "modernbert": ["Wqkv"]}  # no entry in peft's mapping: the attention projections
HEAD_COPIES = {"bert": ["pooler"], "albert": ["pooler"], "distilbert": ["pre_classifier"],
               "deberta-v2": ["pooler"], "modernbert": ["head"], "bart": ["classification_head"]}
TRAIN_TEXTS, TRAIN_LABELS = CORPUS[:8], [0, 1] * 4
QUERY_TEXT, QUERY_LABEL = CORPUS[8], 1


def targets(kind):
    return PEFT_TARGETS.get(kind) or TARGETS[kind]


def lora_model(kind):
    tok = tokenizer(kind)
    config = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=targets(kind), task_type="SEQ_CLS",
                        modules_to_save=list(HEAD_COPIES.get(kind, [])) or None)  # peft extends it in place
    return get_peft_model(model(kind, tok), config)


class Snapshot(TrainerCallback):
    """Weights and per-module modes at the end of training, before the PairDotsCallback runs."""

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.modes = {n: m.training for n, m in model.named_modules()}


@pytest.fixture(scope="module", params=ARCHITECTURES)
def lora_run(request, tmp_path_factory):
    kind = request.param
    tok = tokenizer(kind)
    net = lora_model(kind)
    rows = [{"text": t, "label": y} for t, y in zip(TRAIN_TEXTS, TRAIN_LABELS)]
    train = datasets.Dataset.from_list(rows)
    query = datasets.Dataset.from_list([{"text": QUERY_TEXT, "label": QUERY_LABEL}])
    out = tmp_path_factory.mktemp(f"lora-{kind}")
    explain = ExplainArguments(queries="indices", query_indices=[0], labels=("predicted",), top_k=len(rows),
                               max_length=32, batch_size=8,
                               solver=SolverOptions(solver="cg", damping=5.0, power_iters=5))
    snapshot = Snapshot()
    targs = TrainingArguments(output_dir=str(out), max_steps=4, learning_rate=1e-2, per_device_train_batch_size=4,
                              use_cpu=True, save_strategy="no", report_to=[], disable_tqdm=True, seed=0)
    trainer = Trainer(model=net, args=targs, train_dataset=tokenize_dataset(train, tok, 32),
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok,
                      callbacks=[snapshot, PairDotsCallback(query, train_dataset=train, args=explain)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GPT-2's pre-LayerNorm fallback warning (tests/test_architectures.py)
        trainer.train()
    records = [json.loads(line) for line in (out / "pairdots" / JSONL_NAME).read_text().splitlines()]
    return kind, tok, net, snapshot, records


def test_auto_params_are_the_adapters(lora_run):
    """``params="auto"`` on a peft model is the ``"lora"`` preset: every ``lora_A``/``lora_B``
    weight of the target modules (2 per target per layer), not the trainable head copy."""
    kind, _, net, _, _ = lora_run
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    adapters = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    wrapped = [n for n, _ in model(kind).named_modules() if n.rsplit(".", 1)[-1] in targets(kind)]
    assert len(adapters) == 2 * len(wrapped) and wrapped  # ALBERT: one shared layer; BART: 3 attention blocks
    assert set(select_parameters(net, "auto").names) == adapters
    head_copy = trainable - adapters
    copied = {n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n in head_copy}
    assert all(".modules_to_save.default." in n for n in head_copy)
    default = {"score"} if kind in DECODERS else set() if kind == "bart" else {"classifier"}
    want = set(HEAD_COPIES.get(kind, [])) | default
    assert copied == want, copied
    assert set(select_parameters(net, "classifier").names) | set(select_parameters(net, "head").names) >= head_copy


def test_callback_leaves_weights_and_modes_and_gives_finite_scores(lora_run):
    kind, _, net, snapshot, records = lora_run
    for k, v in net.state_dict().items():
        assert torch.equal(v, snapshot.weights[k]), k
    assert {n: m.training for n, m in net.named_modules()} == snapshot.modes
    [record] = records
    assert record["text"] == QUERY_TEXT
    [entry] = record["labels"]
    assert all(s is None or math.isfinite(s) for s in entry["saliency"])
    top = entry["top_train"]
    assert sorted(t["train_index"] for t in top) == list(range(len(TRAIN_TEXTS)))
    assert all(math.isfinite(t["influence"]) for t in top) and any(t["influence"] != 0 for t in top)
    assert record["diagnostics"]["relative_residual"][0] < 1e-2


def test_eq5_score_equals_an_explicit_hessian_solve(lora_run):
    """Eq. 5 for the test loss over one trained adapter matrix (the last ``lora_B``, out x r:
    64 entries, GPT-2's ``c_attn`` 192): the library's CG s_test and JVP scores vs -g_testᵀ (H + λI)⁻¹ g_i with
    H the autograd Hessian of the mean training loss and g_i per-example autograd gradients."""
    kind, tok, net, _, _ = lora_run
    with eval_eager_mode(net):  # SDPA has no double backward
        _check_eq5(net, tok)


def _check_eq5(net, tok):
    name = [n for n in select_parameters(net, "auto").names if ".lora_B." in n][-1]
    objective = make_train_loss(net, [name])
    data = prepare_data(objective, tok, TRAIN_TEXTS, TRAIN_LABELS, batch_size=len(TRAIN_TEXTS), max_length=32)
    [batch] = data.batches
    theta = objective.theta.detach()
    hessian = torch.autograd.functional.hessian(lambda th: objective.per_example_loss(th, batch).mean(), theta,
                                               vectorize=True)
    damping = 0.1 + max(0.0, -float(torch.linalg.eigvalsh(hessian.double())[0]))
    v = loss_measurement_gradient(objective, objective.prepare(tokenize(tok, [QUERY_TEXT], [QUERY_LABEL], 32)))
    result = compute_s_test(objective, data, v, SolverOptions(solver="cg", damping=damping, cg_tol=1e-8,
                                                              cg_max_iter=500, power_iters=5))
    scores = train_influence(objective, data, result.x)[0]
    grads = torch.autograd.functional.jacobian(lambda th: objective.per_example_loss(th, batch), theta, vectorize=True)
    system = hessian.double() + damping * torch.eye(theta.numel(), dtype=torch.float64)
    explicit = -(grads.double() @ torch.linalg.solve(system, v[0].double()))
    order = batch["index"].tolist()
    assert float(explicit.abs().max()) > 1e-9  # BART: about 1e-8 (4 steps from B = 0), far above round-off
    assert scores[order].double() == pytest.approx(explicit.tolist(), rel=1e-3, abs=1e-4 * float(explicit.abs().max()))
